"""Start the draft service: serve DraftService with health + reflection."""

from __future__ import annotations

from draft_service.servicer import SERVICE_NAME, register
from protos.security import TlsConfig
from protos.serving import ServerHandle, start_server
from spec_decode.api import DraftAPI
from specd_metrics.services import DraftMetrics


def serve_draft(
    draft: DraftAPI,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    tls: TlsConfig | None = None,
    metrics: DraftMetrics | None = None,
) -> ServerHandle:
    """Serve ``draft`` on ``host:port``; ``tls`` for TLS, mutual TLS when it has a client CA;
    ``metrics`` counts and times every call."""
    return start_server(register(draft, metrics), [SERVICE_NAME], host=host, port=port, tls=tls)
