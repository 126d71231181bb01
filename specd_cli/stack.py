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
from orchestrator.auth import ApiKeys, AuthConfig
from orchestrator.server import serve_orchestrator
from orchestrator.service import Orchestrator, OrchestratorConfig
from orchestrator.transports import GrpcDraftClient, GrpcTargetClient
from protos.security import PeerTls, TlsConfig, TlsConfigError, peer_tls_from_flags, tls_from_flags
from protos.serving import ServerHandle, wait_healthy
from spec_decode.models import load_tokenizer
from target_service.server import serve_target
from target_service.verifier import TargetConfig, TargetVerifier

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StackSecurity:
    """TLS and API keys of a gRPC stack: ``backend_tls`` is served by target and draft (mutual
    when it has a client CA), ``peer_tls`` is how the orchestrator reaches them, ``front_tls`` and
    ``auth`` (API keys, per-key rate) guard the orchestrator. All None: plaintext, no keys."""

    backend_tls: TlsConfig | None = None
    peer_tls: PeerTls | None = None
    front_tls: TlsConfig | None = None
    auth: AuthConfig | None = None


@dataclass(frozen=True)
class StackConfig:
    target: TargetConfig
    draft: DraftConfig
    orchestrator: OrchestratorConfig = field(default_factory=OrchestratorConfig)
    host: str = "127.0.0.1"
    security: StackSecurity = field(default_factory=StackSecurity)


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
    sec = cfg.security
    t_handle = serve_target(target, host=cfg.host, tls=sec.backend_tls)
    d_handle = serve_draft(draft, host=cfg.host, tls=sec.backend_tls)
    t_client = GrpcTargetClient(f"{cfg.host}:{t_handle.port}", tls=sec.peer_tls)
    d_client = GrpcDraftClient(f"{cfg.host}:{d_handle.port}", tls=sec.peer_tls)
    tokenizer, _ = load_tokenizer(cfg.target.model)
    orch = Orchestrator(t_client, d_client, tokenizer, cfg.orchestrator)
    o_handle = serve_orchestrator(orch, host=cfg.host, tls=sec.front_tls, auth=sec.auth)
    return ThreadStack(t_handle, d_handle, o_handle, (t_client, d_client), cfg.host)


@dataclass(frozen=True)
class ProcessSecurity:
    """The security flags ``specd up`` hands its children: file paths only, never a secret.

    ``tls_cert``/``tls_key`` are served by all three services; ``tls_client_ca`` makes target
    and draft demand client certificates (the orchestrator presents ``peer_cert``/``peer_key``),
    while the front door stays TLS + API key. ``peer_ca`` verifies the services' certificates
    (the orchestrator's calls and the start-up health checks).
    """

    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    peer_ca: str | None = None
    peer_cert: str | None = None
    peer_key: str | None = None
    api_key_file: str | None = None
    rate_limit: float = 0.0
    rate_burst: int = 0

    def validate(self) -> ProcessSecurity:
        """Load every file once here, so a bad one stops ``specd up`` before anything starts."""
        tls_from_flags(self.tls_cert, self.tls_key, self.tls_client_ca)
        peer = peer_tls_from_flags(self.peer_ca, self.peer_cert, self.peer_key)
        if self.tls_cert is not None and (peer is None or peer.root_ca is None):
            raise TlsConfigError(
                "--tls-cert on specd up needs --peer-ca: the CA that signed it, to verify the services"
            )
        if self.tls_client_ca is not None and (peer is None or peer.cert_chain is None):
            raise TlsConfigError("--tls-client-ca on specd up needs --peer-cert/--peer-key for the orchestrator")
        AuthConfig(self.api_key_file, self.rate_limit, self.rate_burst).validate()
        if self.api_key_file is not None:
            ApiKeys(self.api_key_file)
        return self

    def health_tls(self) -> PeerTls | None:
        return peer_tls_from_flags(self.peer_ca, self.peer_cert, self.peer_key) if self.tls_cert else None

    def backend_args(self) -> list[str]:
        return [*self._server_args(), *_flag("--tls-client-ca", self.tls_client_ca)]

    def orchestrator_args(self) -> list[str]:
        args = [*self._server_args(), *_flag("--api-key-file", self.api_key_file)]
        args += [*_flag("--peer-ca", self.peer_ca), *_flag("--peer-cert", self.peer_cert)]
        args += _flag("--peer-key", self.peer_key)
        if self.rate_limit > 0:
            args += ["--rate-limit", repr(self.rate_limit), "--rate-burst", str(self.rate_burst)]
        return args

    def _server_args(self) -> list[str]:
        return [*_flag("--tls-cert", self.tls_cert), *_flag("--tls-key", self.tls_key)]


def _flag(name: str, value: str | None) -> list[str]:
    return [name, value] if value is not None else []


@dataclass
class ProcessStack:
    """``specd target``, ``specd draft`` (one process per replica: ``draft``, ``draft-2``, ...)
    and ``specd orchestrator`` as child processes."""

    procs: dict[str, subprocess.Popen[bytes]]
    address: str
    log_dir: Path

    def alive(self) -> dict[str, bool]:
        return {name: p.poll() is None for name, p in self.procs.items()}

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user + system, all threads) each running process has used so far; empty
        where the OS has no ``/proc`` (the benchmark then reports none)."""
        tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        out: dict[str, float] = {}
        for name, proc in self.procs.items():
            try:
                stat = Path(f"/proc/{proc.pid}/stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": state is field 3
            out[name] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14, 15)
        return out

    def stop(self, grace: float = 10.0) -> None:
        order = ("orchestrator", "draft", "target")  # front door first, so no request meets a gone backend
        for name in sorted(self.procs, key=lambda n: order.index(n.split("-")[0])):
            proc = self.procs[name]
            if proc.poll() is None:
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
    security: ProcessSecurity | None = None,
    phrase_store_password_file: str | None = None,
    extra_orchestrator_args: list[str] | None = None,
    drafters: int = 1,
    metrics_port_base: int = 0,
    log_format: str = "text",
    extra_draft_args: list[str] | None = None,
) -> ProcessStack:
    """Start the three services as separate processes on loopback and wait until all serve.

    ``drafters``: draft-service replicas, on ports ``draft_port``, ``draft_port + 1``, ...; the
    orchestrator spreads sessions over them (``--draft-address h:p1,h:p2,...``).
    ``metrics_port_base`` P > 0: Prometheus ``/metrics`` of the target on P, of the drafters on
    P+1.., of the orchestrator on P+drafters+1 (:func:`metrics_ports`). ``log_format``: text | json.
    """
    if drafters < 1:
        raise ValueError(f"drafters must be >= 1, got {drafters}")
    draft_ports = [draft_port + i for i in range(drafters)]
    security = (security or ProcessSecurity()).validate()
    health_tls = security.health_tls()
    log_dir = log_dir or Path(os.environ.get("SPECD_LOG_DIR", "/tmp/specd-logs"))
    log_dir.mkdir(parents=True, exist_ok=True)
    exe = [sys.executable, "-m", "specd_cli.main"]
    dev = ["--device", device] if device else []
    ports = metrics_ports(metrics_port_base, drafters)
    obs = ["--log-format", log_format]
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
            *security.backend_args(),
            *obs,
            *_metrics_flag(ports, "target"),
        ],
    }
    for i, replica_port in enumerate(draft_ports):
        name = "draft" if i == 0 else f"draft-{i + 1}"
        cmds[name] = [
            *exe,
            "draft",
            "--host",
            host,
            "--port",
            str(replica_port),
            *dev,
            *(["--draft-model", draft_model] if draft_model else []),
            *(["--phrase-store", phrase_store] if phrase_store else []),
            *_flag("--phrase-store-password-file", phrase_store_password_file),
            *(extra_draft_args or []),
            *security.backend_args(),
            *obs,
            *_metrics_flag(ports, name),
        ]
    procs: dict[str, subprocess.Popen[bytes]] = {}
    stack = ProcessStack(procs, f"{host}:{port}", log_dir)
    try:
        for name, cmd in cmds.items():
            procs[name] = _spawn(name, cmd, log_dir)
        _wait_serving(procs["target"], "target", f"{host}:{target_port}", timeout, health_tls)
        for i, replica_port in enumerate(draft_ports):
            name = "draft" if i == 0 else f"draft-{i + 1}"
            _wait_serving(procs[name], name, f"{host}:{replica_port}", timeout, health_tls)
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
            ",".join(f"{host}:{p}" for p in draft_ports),
            *security.orchestrator_args(),
            *(extra_orchestrator_args or []),
            *obs,
            *_metrics_flag(ports, "orchestrator"),
        ]
        procs["orchestrator"] = _spawn("orchestrator", orch_cmd, log_dir)
        _wait_serving(procs["orchestrator"], "orchestrator", f"{host}:{port}", timeout, health_tls)
    except BaseException:
        stack.stop(2.0)
        for name in procs:
            tail = (log_dir / f"{name}.log").read_text(errors="replace")[-2000:]
            log.error("%s log tail:\n%s", name, tail)
        raise
    return stack


def metrics_ports(base: int, drafters: int = 1) -> dict[str, int]:
    """The ``/metrics`` port of each process of a stack: target ``base``, drafters ``base + 1``..,
    orchestrator last; empty when ``base`` is 0 (metrics off)."""
    if base == 0:
        return {}
    names = ["target", *("draft" if i == 0 else f"draft-{i + 1}" for i in range(drafters)), "orchestrator"]
    if not 0 < base <= 65535 - len(names):
        raise ValueError(f"metrics port base must be in [1, {65535 - len(names)}] (or 0 = off), got {base}")
    return {name: base + i for i, name in enumerate(names)}


def _metrics_flag(ports: dict[str, int], name: str) -> list[str]:
    return ["--metrics-port", str(ports[name])] if name in ports else []


def _wait_serving(
    proc: subprocess.Popen[bytes], name: str, address: str, timeout: float, tls: PeerTls | None = None
) -> None:
    """Wait for ``address`` to report SERVING; fail at once if the process exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the {name} service exited with code {proc.returncode} before serving")
        try:
            wait_healthy(address, min(2.0, max(0.1, deadline - time.monotonic())), tls=tls)
            return
        except TimeoutError:
            if time.monotonic() >= deadline:
                raise


def _spawn(name: str, cmd: list[str], log_dir: Path) -> subprocess.Popen[bytes]:
    out = open(log_dir / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the child
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
