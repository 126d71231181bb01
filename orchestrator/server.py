"""Start the orchestrator front door over gRPC clients of the draft and target services."""

from __future__ import annotations

from orchestrator.service import Orchestrator
from orchestrator.servicer import SERVICE_NAME, register
from protos.serving import ServerHandle, start_server


def serve_orchestrator(orchestrator: Orchestrator, *, host: str = "127.0.0.1", port: int = 0) -> ServerHandle:
    return start_server(register(orchestrator), [SERVICE_NAME], host=host, port=port, max_workers=32)
