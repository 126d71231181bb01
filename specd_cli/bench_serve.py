"""``specd bench-serve``: C concurrent streaming clients over gRPC against the local stack.

For each stack configuration (``--max-batch`` values x ``--drafters`` values) the three services
start as processes on loopback (:func:`specd_cli.stack.start_process_stack`); after one warm-up
request, ``--requests R`` prompts (Spec-Bench, categories round-robin) are streamed by C client
threads, each with its own SDK channel, for every C in ``--concurrency``. Per run it reports
throughput (generated tokens / wall time of the run), time to first token and inter-token
latency (p50, p99), errors, and the cores each side kept busy (CPU seconds of the target, the
drafters, the orchestrator and the client threads over the run's wall time, from ``/proc``); it
checks that every greedy output (token ids per prompt) is the same in every run. Writes
``results.json``, ``results.md`` and ``throughput.png`` under ``--out``.

Inter-token latency: the gap between two streamed chunks divided by the tokens the later one
carries, one sample per token (a speculative step delivers several tokens at once).

A benchmark, not a test: exit code 1 only when a request failed or outputs differed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from specd_cli.bench import DEFAULT_PROMPTS


def add_bench_serve_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", type=Path, default=DEFAULT_PROMPTS, help="JSONL of {question_id, category, turns}")
    p.add_argument("--requests", type=int, default=32, help="requests per run (prompts reused round-robin)")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated numbers of concurrent clients")
    p.add_argument("--max-batch", default="1,16", help="comma-separated target --max-batch values (1 = no batching)")
    p.add_argument("--batch-window-ms", type=float, default=10.0, help="target --batch-window-ms")
    p.add_argument(
        "--prefill-chunk", default="128", help="comma-separated target --prefill-chunk values (0 = whole prompts)"
    )
    p.add_argument("--prefix-cache-mb", default="64", help="comma-separated target --prefix-cache-mb values (0 = off)")
    p.add_argument("--drafters", default="1,2", help="comma-separated numbers of draft replicas")
    p.add_argument(
        "--argmax-screen",
        default="on",
        help="comma-separated target --argmax-screen values (on, off: the full LM head)",
    )
    p.add_argument("--method", default="pld", help="vanilla | pld | sps | ouroboros")
    p.add_argument(
        "--pld-placement",
        default="auto",
        choices=("auto", "draft", "target"),
        help="where pld drafts: co-located in the target service (auto) or in the draft replicas "
        "(draft: what --drafters then spreads)",
    )
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--target", default="smollm2")
    p.add_argument("--draft-model", default=None, help="draft LM (for sps, or ouroboros with lookahead)")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None, help="target dtype (default: fp32 on CPU, bf16 on CUDA)")
    p.add_argument("--weight-format", default=None, help="target engine weights: auto | dense | packed | q8 | q8a8")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    p.add_argument("--out", type=Path, default=Path("bench-serve-results"))


@dataclass(frozen=True)
class ServeConfig:
    max_batch: int
    drafters: int
    prefill_chunk: int = 128
    prefix_cache_mb: int = 64
    argmax_screen: str = "on"

    @property
    def label(self) -> str:
        return (
            f"max_batch={self.max_batch}, drafters={self.drafters}, prefill_chunk={self.prefill_chunk}, "
            f"prefix_cache_mb={self.prefix_cache_mb}, argmax_screen={self.argmax_screen}"
        )


@dataclass
class RequestRecord:
    index: int  # request number in the run; prompt = prompts[index % len(prompts)]
    tokens: list[int] = field(default_factory=list)
    ttft_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    error: str | None = None


@dataclass(frozen=True)
class RunResult:
    max_batch: int
    drafters: int
    concurrency: int
    requests: int
    errors: int
    tokens: int
    wall_s: float
    throughput_tok_s: float
    ttft_p50_s: float
    ttft_p99_s: float
    itl_p50_s: float
    itl_p99_s: float
    error_messages: tuple[str, ...] = ()
    prefill_chunk: int = 128
    prefix_cache_mb: int = 64
    argmax_screen: str = "on"
    cpu_s: dict[str, float] = field(default_factory=dict)  # target, drafters, orchestrator, clients: CPU s in the run


def _ints(text: str, flag: str, minimum: int = 1) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"specd bench-serve: {flag} takes comma-separated integers, got {text!r}") from None
    if not values or min(values) < minimum:
        raise SystemExit(f"specd bench-serve: {flag} needs integers >= {minimum}, got {text!r}")
    return values


def load_round_robin(path: Path, n: int) -> list[str]:
    """``n`` first turns from ``path``, taking the categories in turn (file order within each)."""
    if not path.exists():
        raise SystemExit(f"specd bench-serve: prompts file {path} not found (pass --prompts FILE)")
    by_cat: dict[str, list[str]] = defaultdict(list)
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            by_cat[str(row.get("category", "default"))].append(str(row["turns"][0]))
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as err:
            raise SystemExit(
                f"specd bench-serve: {path}:{line_no} is not a {{category, turns}} object ({err})"
            ) from None
    order = [p for group in itertools.zip_longest(*by_cat.values()) for p in group if p is not None]
    if not order:
        raise SystemExit(f"specd bench-serve: {path} has no prompts")
    return order[:n]


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (linear interpolation); 0.0 for no values."""
    if not values:
        return 0.0
    import numpy as np

    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def _stream_one(client: Any, record: RequestRecord, prompt: str, args: argparse.Namespace) -> None:
    from specd_client import SpecdClientError

    start = last = time.perf_counter()
    try:
        for event in client.stream(
            prompt, method=args.method, max_new_tokens=args.max_new_tokens, timeout=args.timeout
        ):
            now = time.perf_counter()
            n = len(event.token_ids)
            if n:
                if record.ttft_s is None:
                    record.ttft_s = now - start
                else:
                    record.itl_s.extend([(now - last) / n] * n)
                last = now
                record.tokens.extend(event.token_ids)
    except SpecdClientError as err:
        record.error = f"{err.code}: {err.details}"


def run_clients(
    address: str,
    prompts: list[str],
    cfg: ServeConfig,
    concurrency: int,
    args: argparse.Namespace,
    bar: Any,
    service_cpu: Callable[[], dict[str, float]] | None = None,
) -> tuple[RunResult, list[RequestRecord]]:
    """Stream ``len(prompts)`` requests from ``concurrency`` client threads: the run's row and
    every request's record. ``service_cpu``: CPU seconds so far per service process (the row
    then says how the run's CPU time split between the services and the clients)."""
    from specd_client import SpecdClient

    records = [RequestRecord(i) for i in range(len(prompts))]
    todo = iter(records)
    lock = threading.Lock()

    def worker() -> None:
        with SpecdClient(address, timeout=args.timeout) as client:
            while True:
                with lock:
                    record = next(todo, None)
                if record is None:
                    return
                _stream_one(client, record, prompts[record.index], args)
                bar.update(1)

    cpu0 = service_cpu() if service_cpu else {}
    clients0 = time.process_time()
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    wall = time.perf_counter() - start
    cpu_s = _cpu_split(cpu0, service_cpu() if service_cpu else {})
    cpu_s["clients"] = time.process_time() - clients0
    ok = [r for r in records if r.error is None]
    tokens = sum(len(r.tokens) for r in ok)
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    itls = [x for r in ok for x in r.itl_s]
    result = RunResult(
        max_batch=cfg.max_batch,
        drafters=cfg.drafters,
        concurrency=concurrency,
        requests=len(records),
        errors=len(records) - len(ok),
        tokens=tokens,
        wall_s=wall,
        throughput_tok_s=tokens / wall if wall > 0 else 0.0,
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p99_s=percentile(ttfts, 99),
        itl_p50_s=percentile(itls, 50),
        itl_p99_s=percentile(itls, 99),
        error_messages=tuple(sorted({r.error for r in records if r.error})),
        prefill_chunk=cfg.prefill_chunk,
        prefix_cache_mb=cfg.prefix_cache_mb,
        argmax_screen=cfg.argmax_screen,
        cpu_s=cpu_s,
    )
    return result, records


def _cpu_split(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds per service over a run, the draft replicas summed as ``drafters``."""
    split: dict[str, float] = {}
    for name, seconds in after.items():
        group = "drafters" if name.startswith("draft") else name
        split[group] = split.get(group, 0.0) + seconds - before.get(name, 0.0)
    return split


def run_bench_serve(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from specd_cli.demo import free_port
    from specd_cli.stack import start_process_stack
    from specd_client import SpecdClient

    concurrency = _ints(args.concurrency, "--concurrency")
    screens = [v.strip() for v in args.argmax_screen.split(",") if v.strip()]
    if not screens or any(v not in ("on", "off") for v in screens):
        raise SystemExit(f"specd bench-serve: --argmax-screen takes on and/or off, got {args.argmax_screen!r}")
    configs = [
        ServeConfig(mb, d, pc, pm, sc)
        for mb in _ints(args.max_batch, "--max-batch")
        for d in _ints(args.drafters, "--drafters")
        for pc in _ints(args.prefill_chunk, "--prefill-chunk", minimum=0)
        for pm in _ints(args.prefix_cache_mb, "--prefix-cache-mb", minimum=0)
        for sc in screens
    ]
    if args.requests < 1:
        raise SystemExit("specd bench-serve: --requests must be >= 1")
    pool = load_round_robin(args.prompts, args.requests)
    prompts = [pool[i % len(pool)] for i in range(args.requests)]
    args.out.mkdir(parents=True, exist_ok=True)
    runs: list[RunResult] = []
    outputs: dict[int, tuple[str, list[int]]] = {}  # request index -> (first run's label, tokens)
    mismatches: list[dict[str, Any]] = []
    bar = tqdm(total=len(configs) * len(concurrency) * len(prompts), desc="bench-serve", unit="req", file=sys.stderr)
    for cfg in configs:
        extra = ["--max-batch", str(cfg.max_batch), "--batch-window-ms", repr(args.batch_window_ms)]
        extra += ["--prefill-chunk", str(cfg.prefill_chunk), "--prefix-cache-mb", str(cfg.prefix_cache_mb)]
        extra += ["--argmax-screen", cfg.argmax_screen]
        extra += ["--dtype", args.dtype] if args.dtype else []
        extra += ["--weight-format", args.weight_format] if args.weight_format else []
        stack = start_process_stack(
            target=args.target,
            draft_model=args.draft_model,
            port=free_port(),
            target_port=free_port(),
            draft_port=free_port(),
            device=args.device,
            log_dir=args.out
            / "logs"
            / (
                f"batch{cfg.max_batch}-drafters{cfg.drafters}-chunk{cfg.prefill_chunk}-prefix{cfg.prefix_cache_mb}"
                f"-screen{cfg.argmax_screen}"
            ),
            extra_target_args=extra,
            drafters=cfg.drafters,
            extra_orchestrator_args=[
                "--max-new-tokens",
                str(max(args.max_new_tokens, 1)),
                "--pld-placement",
                args.pld_placement,
            ],
        )
        try:
            warm = RequestRecord(-1)
            with SpecdClient(stack.address, timeout=args.timeout) as client:
                _stream_one(client, warm, prompts[0], args)  # loads kernels, fills caches: not measured
            for c in concurrency:
                bar.set_postfix_str(f"{cfg.label}, C={c}")
                row, records = run_clients(stack.address, prompts, cfg, c, args, bar, stack.cpu_seconds)
                runs.append(row)
                for record in records:
                    if record.error is not None:
                        continue
                    here = f"{cfg.label}, C={c}"
                    first = outputs.setdefault(record.index, (here, record.tokens))
                    if first[1] != record.tokens:
                        mismatches.append(
                            {"request": record.index, "run": here, "reference_run": first[0],
                             "first_difference": _first_diff(first[1], record.tokens)}
                        )  # fmt: skip
        finally:
            stack.stop()
    bar.close()
    errors = sum(r.errors for r in runs)
    summary = {
        "command": "specd " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0] else "specd bench-serve",
        "method": args.method,
        "pld_placement": args.pld_placement,
        "max_new_tokens": args.max_new_tokens,
        "requests": args.requests,
        "target": args.target,
        "draft_model": args.draft_model,
        "runs": [asdict(r) for r in runs],
        "errors": errors,
        "identical_outputs": not mismatches,
        "mismatches": mismatches,
    }
    write_outputs(args.out, summary)
    print(render_table(summary))
    print(f"wrote {args.out / 'results.json'}, results.md, throughput.png")
    if errors or mismatches:
        print(f"specd bench-serve: {errors} failed requests, {len(mismatches)} differing outputs", file=sys.stderr)
        return 1
    return 0


def _first_diff(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f}"


def _cores(run: dict[str, Any]) -> str:
    """CPU seconds of each side over the run's wall time (2.0 = two cores busy all along)."""
    cpu, wall = run.get("cpu_s") or {}, run["wall_s"]
    if not cpu or wall <= 0:
        return "-"
    return " / ".join(
        f"{cpu[k] / wall:.2f}" if k in cpu else "-" for k in ("target", "drafters", "orchestrator", "clients")
    )


def render_table(summary: dict[str, Any]) -> str:
    head = (
        "| max_batch | drafters | prefill_chunk | prefix_cache_mb | argmax_screen | C | requests | errors | tokens "
        "| wall s | tokens/s | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms "
        "| cores: target / drafters / orchestrator / clients |\n" + "|---" * 16 + "|"
    )
    rows = [
        f"| {r['max_batch']} | {r['drafters']} | {r.get('prefill_chunk', '-')} | {r.get('prefix_cache_mb', '-')} "
        f"| {r.get('argmax_screen', '-')} | {r['concurrency']} | {r['requests']} "
        f"| {r['errors']} | {r['tokens']} "
        f"| {r['wall_s']:.2f} | {r['throughput_tok_s']:.1f} | {_ms(r['ttft_p50_s'])} | {_ms(r['ttft_p99_s'])} "
        f"| {_ms(r['itl_p50_s'])} | {_ms(r['itl_p99_s'])} | {_cores(r)} |"
        for r in summary["runs"]
    ]
    same = "identical" if summary["identical_outputs"] else f"{len(summary['mismatches'])} DIFFER"
    return "\n".join([head, *rows, "", f"greedy outputs across runs: {same}; errors: {summary['errors']}"])


def write_outputs(out: Path, summary: dict[str, Any]) -> None:
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    where = (
        f" (drafted in: {summary['pld_placement']})"
        if summary["method"] == "pld" and "pld_placement" in summary
        else ""
    )
    md = f"`{summary['command']}`\n\nmethod {summary['method']}{where}, {summary['max_new_tokens']} new tokens max\n\n"
    (out / "results.md").write_text(md + render_table(summary) + "\n")
    _plot(out / "throughput.png", summary)


_DIMS = ("max_batch", "drafters", "prefill_chunk", "prefix_cache_mb", "argmax_screen")


def _plot(path: Path, summary: dict[str, Any]) -> None:
    """Tokens/s and TTFT p50 against C, one line per configuration; only the settings that differ
    between configurations name a line, the ones all share go in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = summary["runs"]
    varying = [d for d in _DIMS if len({r.get(d, "-") for r in runs}) > 1]
    shared = [f"{d}={runs[0].get(d, '-')}" for d in _DIMS if d not in varying] if runs else []
    lines: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
    for r in runs:
        label = ", ".join(f"{d}={r.get(d, '-')}" for d in varying) or "specd"
        lines[label].append((r["concurrency"], r["throughput_tok_s"], r["ttft_p50_s"] * 1e3))
    fig, (ax, ax_ttft) = plt.subplots(1, 2, figsize=(10, 4))
    for label, points in lines.items():
        points.sort()
        cs = [c for c, _, _ in points]
        ax.plot(cs, [t for _, t, _ in points], marker="o", label=label)
        ax_ttft.plot(cs, [f for _, _, f in points], marker="o", label=label)
    concurrency = sorted({r["concurrency"] for r in runs})
    for a, ylabel in ((ax, "generated tokens / s"), (ax_ttft, "time to first token, p50 (ms)")):
        a.set_xscale("log", base=2)
        a.set_xticks(concurrency, [str(c) for c in concurrency])
        a.set_xlabel("concurrent clients (C)")
        a.set_ylabel(ylabel)
        a.grid(True, alpha=0.3)
    ax.set_ylim(bottom=0)
    ax_ttft.set_yscale("log")
    ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(
        f"specd bench-serve: {summary['method']}, {summary['max_new_tokens']} new tokens"
        + (f" ({', '.join(shared)})" if shared else ""),
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
