"""Start the target service: load the model, serve TargetService with health + reflection."""

from __future__ import annotations

from protos.security import TlsConfig
from protos.serving import ServerHandle, start_server
from spec_decode.api import TargetAPI
from specd_metrics.services import TargetMetrics
from target_service.servicer import SERVICE_NAME, register


def serve_target(
    target: TargetAPI,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    tls: TlsConfig | None = None,
    metrics: TargetMetrics | None = None,
) -> ServerHandle:
    """Serve an already built target (in-process verifier) on ``host:port``; ``tls`` for TLS,
    mutual TLS when it has a client CA; ``metrics`` counts and times every call."""
    return start_server(register(target, metrics), [SERVICE_NAME], host=host, port=port, tls=tls)
