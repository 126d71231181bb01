"""Start the draft service: serve DraftService with health + reflection."""

from __future__ import annotations

from draft_service.servicer import SERVICE_NAME, register
from protos.security import TlsConfig
from protos.serving import ServerHandle, start_server
from spec_decode.api import DraftAPI


def serve_draft(
    draft: DraftAPI, *, host: str = "127.0.0.1", port: int = 0, tls: TlsConfig | None = None
) -> ServerHandle:
    """Serve ``draft`` on ``host:port``; ``tls`` for TLS, mutual TLS when it has a client CA."""
    return start_server(register(draft), [SERVICE_NAME], host=host, port=port, tls=tls)
