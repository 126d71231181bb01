"""Start the orchestrator front door over gRPC clients of the draft and target services."""

from __future__ import annotations

from orchestrator.auth import AuthConfig, AuthInterceptor
from orchestrator.service import Orchestrator
from orchestrator.servicer import SERVICE_NAME, register
from protos.security import TlsConfig
from protos.serving import ServerHandle, start_server


def serve_orchestrator(
    orchestrator: Orchestrator,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    tls: TlsConfig | None = None,
    auth: AuthConfig | AuthInterceptor | None = None,
) -> ServerHandle:
    """Serve ``orchestrator``; ``tls`` for TLS (mutual with a client CA), ``auth`` for API keys
    and a per-key rate (see orchestrator/auth.py). Raises AuthConfigError for an unusable key file."""
    interceptor = AuthInterceptor.from_config(auth) if isinstance(auth, AuthConfig) else auth
    interceptors = [interceptor] if interceptor is not None else []
    return start_server(
        register(orchestrator), [SERVICE_NAME], host=host, port=port, max_workers=32, tls=tls, interceptors=interceptors
    )
