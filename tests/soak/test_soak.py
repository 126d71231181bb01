"""Soak: concurrent streaming clients against a process stack for minutes (``make soak``).

Excluded from ``make test`` (marker ``soak``). ``SPECD_SOAK_SECONDS`` (default 180) sets the
duration, ``SPECD_SOAK_CLIENTS`` (default 4) the concurrent clients. Every request must
stream the target's own greedy tokens (every method is lossless; the target runs float64 so
no float tie can flip a token); afterwards no session is left on target or drafter, each
process's resident memory grew by less than a bound after warm-up, and the last window's
median latency is at most 1.5x the first's. Prints a summary (requests, errors, peak RSS
per process, p50/p99 latency per window).
"""

from __future__ import annotations

import os
import random
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from protos import draft_pb2, draft_pb2_grpc, target_pb2, target_pb2_grpc
from specd_cli.demo import free_port
from specd_cli.stack import ProcessStack, start_process_stack
from specd_client import SpecdClient, SpecdClientError

pytestmark = pytest.mark.soak

SECONDS = float(os.environ.get("SPECD_SOAK_SECONDS", "180"))
CLIENTS = int(os.environ.get("SPECD_SOAK_CLIENTS", "4"))
WARMUP_FRACTION = 0.15  # the first part of the run, not judged (caches, allocator, phrase pool fill)
WINDOWS = 5  # judged windows after warm-up
RSS_GROWTH_LIMIT = 0.20  # peak RSS after warm-up at most 20 % (+ RSS_SLACK_KIB) above the warm level
RSS_SLACK_KIB = 32 * 1024
LATENCY_DRIFT_LIMIT = 1.5
NEW = 32
METHODS = ("vanilla", "pld", "sps", "ouroboros")
PROMPTS = (
    "Tell me about rivers and the sea.",
    "Write a list of fruits: apple, banana, apple, banana,",
    "Explain why the sky is blue in two sentences.",
    "Count: one two three one two three one two",
    "What is a speculative decoder?",
)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Record:
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (start offset s, latency s)
    rss: dict[str, list[tuple[float, int]]] = field(default_factory=dict)  # name -> (offset s, KiB)
    by_method: dict[str, list[float]] = field(default_factory=dict)  # method -> latencies s
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Soak:
    stack: ProcessStack
    target_address: str
    draft_address: str


@pytest.fixture(scope="module")
def soak(tiny_target: Path, tiny_draft: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Soak]:
    port, t_port, d_port = free_port(), free_port(), free_port()
    # one thread per service process: three processes of torch threads spinning against each
    # other (and the clients) on a small machine measure contention, not specd
    threads = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update(dict.fromkeys(threads, "1"))
    s = start_process_stack(
        target=str(tiny_target),
        draft_model=str(tiny_draft),
        port=port,
        target_port=t_port,
        draft_port=d_port,
        device="cpu",
        log_dir=tmp_path_factory.mktemp("soak-logs"),
        extra_target_args=["--dtype", "float64", "--max-sessions", "16"],
        extra_orchestrator_args=["--max-concurrent-requests", "16"],
        timeout=180,
    )
    for key, value in threads.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    yield Soak(s, f"127.0.0.1:{t_port}", f"127.0.0.1:{d_port}")
    s.stop()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def test_soak(soak: Soak) -> None:
    stack = soak.stack
    with SpecdClient(stack.address, timeout=60) as client:
        reference = {
            p: client.generate(p, method="vanilla", max_new_tokens=NEW, ignore_eos=True).token_ids for p in PROMPTS
        }
    rec = Record()
    start = time.monotonic()
    stop_at = start + SECONDS

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        with SpecdClient(stack.address, timeout=60) as c:
            while time.monotonic() < stop_at:
                prompt, method = rng.choice(PROMPTS), rng.choice(METHODS)
                t0 = time.monotonic()
                try:
                    tokens = [
                        t
                        for e in c.stream(prompt, method=method, max_new_tokens=NEW, ignore_eos=True)
                        for t in e.token_ids
                    ]
                    error = None if tuple(tokens) == reference[prompt] else f"{method}: wrong tokens for {prompt!r}"
                except SpecdClientError as err:
                    error = f"{method}: {err}"
                t1 = time.monotonic()
                with rec.lock:
                    rec.by_method.setdefault(method, []).append(t1 - t0)
                    rec.requests += 1
                    if error:
                        rec.errors.append(error)
                    else:
                        rec.latencies.append((t0 - start, t1 - t0))

    def sampler() -> None:
        while time.monotonic() < stop_at:
            now = time.monotonic() - start
            for name, proc in stack.procs.items():
                rec.rss.setdefault(name, []).append((now, _rss_kib(proc.pid)))
            time.sleep(1.0)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(CLIENTS)]
    threads.append(threading.Thread(target=sampler))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(SECONDS + 120)
    assert all(stack.alive().values()), stack.alive()

    # ---- summary
    warm = SECONDS * WARMUP_FRACTION
    width = (SECONDS - warm) / WINDOWS
    windows: list[list[float]] = [[] for _ in range(WINDOWS)]
    for offset, latency in rec.latencies:
        if offset >= warm:
            windows[min(WINDOWS - 1, int((offset - warm) / width))].append(latency)
    lines = [
        f"soak: {SECONDS:.0f} s, {CLIENTS} streaming clients, methods {', '.join(METHODS)}, {NEW} tokens each",
        f"soak: requests {rec.requests}, errors {len(rec.errors)} {rec.errors[:5]}",
    ]
    for name, samples in rec.rss.items():
        warm_kib = max(k for t, k in samples if t <= warm)
        peak_kib = max(k for _, k in samples)
        lines.append(f"soak: {name} RSS at warm-up end {warm_kib / 1024:.0f} MiB, peak {peak_kib / 1024:.0f} MiB")
    for i, lat in enumerate(windows):
        if lat:
            lines.append(
                f"soak: window {i + 1} ({warm + i * width:.0f}-{warm + (i + 1) * width:.0f} s): {len(lat)} requests, "
                f"p50 {statistics.median(lat) * 1e3:.0f} ms, p99 {_percentile(lat, 0.99) * 1e3:.0f} ms"
            )
    for method, lat in sorted(rec.by_method.items()):
        lines.append(f"soak: {method}: {len(lat)} requests, p50 {statistics.median(lat) * 1e3:.0f} ms")
    print("\n" + "\n".join(lines), flush=True)

    # ---- judgement
    assert rec.errors == []
    assert all(windows), "a window without requests"
    assert statistics.median(windows[-1]) <= LATENCY_DRIFT_LIMIT * statistics.median(windows[0])
    for name, samples in rec.rss.items():
        warm_kib = max(k for t, k in samples if t <= warm)
        after = max(k for t, k in samples if t > warm)
        assert after <= warm_kib * (1 + RSS_GROWTH_LIMIT) + RSS_SLACK_KIB, (name, warm_kib, after)
    with grpc.insecure_channel(soak.target_address) as ch:
        info = target_pb2_grpc.TargetServiceStub(ch).Info(target_pb2.TargetInfoRequest(), timeout=10)
    assert info.active_sessions == 0
    with grpc.insecure_channel(soak.draft_address) as ch:
        dinfo = draft_pb2_grpc.DraftServiceStub(ch).Info(draft_pb2.DraftInfoRequest(), timeout=10)
    assert dinfo.active_sessions == 0
