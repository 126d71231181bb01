"""The ``/metrics`` HTTP endpoint of one service (Prometheus text format)."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

log = logging.getLogger(__name__)


@dataclass
class MetricsServer:
    """A running metrics endpoint: ``http://host:port/metrics``."""

    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def stop(self) -> None:
        """Stop serving and close the socket. Idempotent."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(5.0)
        self._server.server_close()


def start_metrics_server(registry: CollectorRegistry, host: str, port: int) -> MetricsServer | None:
    """Serve ``registry`` on ``host:port`` in a daemon thread; ``port == 0`` means off (None).

    Bind the same host as the service's gRPC server (loopback by default). Raises OSError when
    the port is taken, so a misconfigured service stops at start-up instead of running blind.
    """
    if port == 0:
        return None
    if not 0 < port < 65536:
        raise ValueError(f"metrics port must be in [1, 65535] (or 0 = off), got {port}")
    server, thread = start_http_server(port, addr=host, registry=registry)
    handle = MetricsServer(host, server.server_port, server, thread)
    log.info("metrics on %s", handle.url)
    return handle
