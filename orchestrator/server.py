"""Start the orchestrator front door over gRPC clients of the draft and target services."""

from __future__ import annotations

from orchestrator.auth import AuthConfig, AuthInterceptor
from orchestrator.service import Orchestrator
from orchestrator.servicer import SERVICE_NAME, register
from protos.security import TlsConfig
from protos.serving import ServerHandle, start_server
from specd_metrics.services import OrchestratorMetrics

_SPARE_WORKERS = 8  # threads beyond the request cap: Info, health checks, refusals


def serve_orchestrator(
    orchestrator: Orchestrator,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    tls: TlsConfig | None = None,
    auth: AuthConfig | AuthInterceptor | None = None,
    metrics: OrchestratorMetrics | None = None,
) -> ServerHandle:
    """Serve ``orchestrator``; ``tls`` for TLS (mutual with a client CA), ``auth`` for API keys
    and a per-key rate (see orchestrator/auth.py), ``metrics`` to count and time requests.
    Raises AuthConfigError for an unusable key file."""
    interceptor = AuthInterceptor.from_config(auth) if isinstance(auth, AuthConfig) else auth
    interceptors = [interceptor] if interceptor is not None else []
    # Every admitted request gets a worker thread; calls beyond the cap (plus room for Info and
    # health checks) are refused by gRPC itself rather than queued behind busy workers.
    cap = orchestrator.config.max_concurrent_requests
    workers = max(32, cap + _SPARE_WORKERS)
    return start_server(
        register(orchestrator, metrics),
        [SERVICE_NAME],
        host=host,
        port=port,
        max_workers=workers,
        tls=tls,
        interceptors=interceptors,
        maximum_concurrent_rpcs=cap + _SPARE_WORKERS if cap > 0 else None,
    )
