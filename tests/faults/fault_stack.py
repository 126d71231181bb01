"""Real specd processes on loopback that a test can kill, freeze (SIGSTOP), thaw and restart.

Each service is one ``python -m specd_cli.main`` child on a fixed free port, so a restarted
service comes back at the same address the orchestrator already dials (the redis-server that
stops and restarts on the same port is ``testkit.RedisServer``). Also: direct Info
calls on target and draft (their active session counts), and a tally of requests and faults
that the tests print as the figures in docs/RELIABILITY.md.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from protos import draft_pb2, draft_pb2_grpc, target_pb2, target_pb2_grpc
from protos.serving import wait_healthy
from specd_cli.demo import free_port

CHILD_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass
class Service:
    """One child process serving gRPC on ``port``; ``args`` without the interpreter."""

    name: str
    args: list[str]
    port: int
    log_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> None:
        self.starts += 1
        log = open(self.log_dir / f"{self.name}.{self.starts}.log", "wb")  # noqa: SIM115 - lives with the child
        cmd = [sys.executable, "-m", "specd_cli.main", *self.args]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=CHILD_ENV)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                tail = (self.log_dir / f"{self.name}.{self.starts}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before serving:\n{tail}")
            try:
                wait_healthy(self.address, 2.0)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, in-flight calls see the connection drop."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def freeze(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def rss_kib(self) -> int:
        """Resident memory of the child (VmRSS from /proc), in KiB."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError(f"no VmRSS for {self.name}")


@dataclass
class FaultStack:
    """target, draft and orchestrator as separately restartable processes."""

    target: Service
    draft: Service
    orchestrator: Service

    @property
    def address(self) -> str:
        return self.orchestrator.address

    def services(self) -> list[Service]:
        return [self.target, self.draft, self.orchestrator]

    def stop(self) -> None:
        for service in (self.orchestrator, self.draft, self.target):
            service.stop()

    def target_sessions(self) -> int:
        with grpc.insecure_channel(self.target.address) as ch:
            info = target_pb2_grpc.TargetServiceStub(ch).Info(target_pb2.TargetInfoRequest(), timeout=5)
        return int(info.active_sessions)

    def draft_sessions(self) -> int:
        with grpc.insecure_channel(self.draft.address) as ch:
            info = draft_pb2_grpc.DraftServiceStub(ch).Info(draft_pb2.DraftInfoRequest(), timeout=5)
        return int(info.active_sessions)

    def wait_sessions_freed(self, timeout: float = 5.0) -> float:
        """Seconds until target and draft hold no session; AssertionError after ``timeout``."""
        start = time.monotonic()
        while True:
            target, draft = self.target_sessions(), self.draft_sessions()
            if target == 0 and draft == 0:
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise AssertionError(f"sessions still held after {timeout} s: target {target}, draft {draft}")
            time.sleep(0.02)


def start_fault_stack(
    target_model: Path,
    draft_model: Path,
    log_dir: Path,
    *,
    phrase_store: str | None = None,
    target_args: tuple[str, ...] = (),
    orchestrator_args: tuple[str, ...] = (),
) -> FaultStack:
    dtype = ["--device", "cpu", "--dtype", "float64"]  # float64: no float tie can flip a greedy argmax
    t_port, d_port, o_port = free_port(), free_port(), free_port()
    target = Service(
        "target",
        ["target", "--target", str(target_model), "--port", str(t_port), *dtype, *target_args],
        t_port,
        log_dir,
    )
    draft_args = ["draft", "--draft-model", str(draft_model), "--port", str(d_port), *dtype]
    if phrase_store:
        draft_args += ["--phrase-store", phrase_store]
    draft = Service("draft", draft_args, d_port, log_dir)
    orch = Service(
        "orchestrator",
        [
            "orchestrator",
            "--target",
            str(target_model),
            "--port",
            str(o_port),
            "--target-address",
            target.address,
            "--draft-address",
            draft.address,
            *orchestrator_args,
        ],
        o_port,
        log_dir,
    )
    stack = FaultStack(target, draft, orch)
    try:
        for service in stack.services():
            service.start()
    except BaseException:
        stack.stop()
        raise
    return stack


@dataclass
class Tally:
    """What a fault test sent and how it ended; a request is lost when it neither completed
    with the correct output nor failed with one of the statuses the test expects."""

    faults: list[str] = field(default_factory=list)
    sent: int = 0
    completed: int = 0
    failed_clearly: int = 0
    lost: int = 0

    def summary(self) -> str:
        return (
            f"faults injected and survived: {len(self.faults)} ({', '.join(self.faults)}); requests sent: "
            f"{self.sent}, completed correctly: {self.completed}, failed with a clear status: "
            f"{self.failed_clearly}, lost: {self.lost}"
        )
