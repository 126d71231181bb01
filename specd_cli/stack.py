"""Building a specd stack: in-process objects, in-thread gRPC servers, or child processes."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from draft_service.server import serve_draft
from draft_service.service import DraftConfig, DraftWorker
from orchestrator.server import serve_orchestrator
from orchestrator.service import Orchestrator, OrchestratorConfig
from orchestrator.transports import GrpcDraftClient, GrpcTargetClient
from protos.serving import ServerHandle, wait_healthy
from spec_decode.models import load_tokenizer
from target_service.server import serve_target
from target_service.verifier import TargetConfig, TargetVerifier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StackConfig:
    target: TargetConfig
    draft: DraftConfig
    orchestrator: OrchestratorConfig = field(default_factory=OrchestratorConfig)
    host: str = "127.0.0.1"


def build_inprocess(cfg: StackConfig) -> Orchestrator:
    """Target, drafter and orchestrator as plain objects in this process (no gRPC)."""
    target = TargetVerifier.from_config(cfg.target)
    draft = DraftWorker.from_config(cfg.draft)
    tokenizer, _ = load_tokenizer(cfg.target.model)
    return Orchestrator(target, draft, tokenizer, cfg.orchestrator)


@dataclass
class ThreadStack:
    """The three services as real gRPC servers on loopback, in this process's threads."""

    target: ServerHandle
    draft: ServerHandle
    orchestrator: ServerHandle
    clients: tuple[GrpcTargetClient, GrpcDraftClient]
    host: str = "127.0.0.1"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.orchestrator.port}"

    def stop(self) -> None:
        self.orchestrator.stop(1.0)
        for client in self.clients:
            client.close()
        self.draft.stop(1.0)
        self.target.stop(1.0)


def start_thread_stack(
    cfg: StackConfig,
    target: TargetVerifier | None = None,
    draft: DraftWorker | None = None,
) -> ThreadStack:
    """Serve target and draft over gRPC; the orchestrator talks to them through gRPC clients."""
    target = target or TargetVerifier.from_config(cfg.target)
    draft = draft or DraftWorker.from_config(cfg.draft)
    t_handle = serve_target(target, host=cfg.host)
    d_handle = serve_draft(draft, host=cfg.host)
    t_client = GrpcTargetClient(f"{cfg.host}:{t_handle.port}")
    d_client = GrpcDraftClient(f"{cfg.host}:{d_handle.port}")
    tokenizer, _ = load_tokenizer(cfg.target.model)
    orch = Orchestrator(t_client, d_client, tokenizer, cfg.orchestrator)
    o_handle = serve_orchestrator(orch, host=cfg.host)
    return ThreadStack(t_handle, d_handle, o_handle, (t_client, d_client), cfg.host)


@dataclass
class ProcessStack:
    """``specd target``, ``specd draft`` and ``specd orchestrator`` as child processes."""

    procs: dict[str, subprocess.Popen[bytes]]
    address: str
    log_dir: Path

    def alive(self) -> dict[str, bool]:
        return {name: p.poll() is None for name, p in self.procs.items()}

    def stop(self, grace: float = 10.0) -> None:
        for name in ("orchestrator", "draft", "target"):
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start_process_stack(
    *,
    target: str,
    draft_model: str | None,
    host: str = "127.0.0.1",
    port: int = 50051,
    target_port: int = 50052,
    draft_port: int = 50053,
    device: str | None = None,
    log_dir: Path | None = None,
    extra_target_args: list[str] | None = None,
    phrase_store: str | None = None,
    timeout: float = 300.0,
) -> ProcessStack:
    """Start the three services as separate processes on loopback and wait until all serve."""
    log_dir = log_dir or Path(os.environ.get("SPECD_LOG_DIR", "/tmp/specd-logs"))
    log_dir.mkdir(parents=True, exist_ok=True)
    exe = [sys.executable, "-m", "specd_cli.main"]
    dev = ["--device", device] if device else []
    cmds = {
        "target": [
            *exe,
            "target",
            "--target",
            target,
            "--host",
            host,
            "--port",
            str(target_port),
            *dev,
            *(extra_target_args or []),
        ],
        "draft": [
            *exe,
            "draft",
            "--host",
            host,
            "--port",
            str(draft_port),
            *dev,
            *(["--draft-model", draft_model] if draft_model else []),
            *(["--phrase-store", phrase_store] if phrase_store else []),
        ],
    }
    procs: dict[str, subprocess.Popen[bytes]] = {}
    stack = ProcessStack(procs, f"{host}:{port}", log_dir)
    try:
        for name, cmd in cmds.items():
            procs[name] = _spawn(name, cmd, log_dir)
        _wait_serving(procs["target"], "target", f"{host}:{target_port}", timeout)
        _wait_serving(procs["draft"], "draft", f"{host}:{draft_port}", timeout)
        orch_cmd = [
            *exe,
            "orchestrator",
            "--target",
            target,
            "--host",
            host,
            "--port",
            str(port),
            "--target-address",
            f"{host}:{target_port}",
            "--draft-address",
            f"{host}:{draft_port}",
        ]
        procs["orchestrator"] = _spawn("orchestrator", orch_cmd, log_dir)
        _wait_serving(procs["orchestrator"], "orchestrator", f"{host}:{port}", timeout)
    except BaseException:
        stack.stop(2.0)
        for name in procs:
            tail = (log_dir / f"{name}.log").read_text(errors="replace")[-2000:]
            log.error("%s log tail:\n%s", name, tail)
        raise
    return stack


def _wait_serving(proc: subprocess.Popen[bytes], name: str, address: str, timeout: float) -> None:
    """Wait for ``address`` to report SERVING; fail at once if the process exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the {name} service exited with code {proc.returncode} before serving")
        try:
            wait_healthy(address, min(2.0, max(0.1, deadline - time.monotonic())))
            return
        except TimeoutError:
            if time.monotonic() >= deadline:
                raise


def _spawn(name: str, cmd: list[str], log_dir: Path) -> subprocess.Popen[bytes]:
    out = open(log_dir / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the child
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
