"""Shared by the drafter-pool tests: model-free draft replicas on loopback, a wait helper,
and a loopback stand-in for the two Kubernetes API calls the EndpointSlice source makes."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from draft_service.server import serve_draft
from draft_service.service import DraftConfig, DraftWorker
from protos.serving import ServerHandle


def wait_until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


@dataclass
class DraftReplica:
    """A real draft service (model-free drafters) served over gRPC on ``host:port``."""

    worker: DraftWorker
    handle: ServerHandle | None
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.stop(0)
            self.handle = None

    def restart(self) -> None:
        self.stop()
        self.handle = serve_draft(self.worker, host=self.host, port=self.port)


def start_replica(host: str = "127.0.0.1", port: int = 0, worker: DraftWorker | None = None) -> DraftReplica:
    worker = worker or DraftWorker(DraftConfig(device="cpu"))
    handle = serve_draft(worker, host=host, port=port)
    return DraftReplica(worker, handle, host, handle.port)


@contextmanager
def replicas_on_hosts(hosts: list[str]) -> Iterator[list[DraftReplica]]:
    """One replica per loopback host (127.0.0.x), all on the same port (as pods of a Service)."""
    first = start_replica(hosts[0])
    started = [first]
    try:
        started += [start_replica(h, first.port) for h in hosts[1:]]
        yield started
    finally:
        for r in started:
            r.stop()


# ---------------------------------------------------------------- Kubernetes API stand-in
def endpoint_slice(
    name: str, service: str, port: int, endpoints: list[tuple[str, bool | None]], port_name: str = "grpc"
) -> dict[str, Any]:
    """An EndpointSlice as the API server returns it (discovery.k8s.io/v1); ready None = unset."""
    eps = []
    for i, (ip, ready) in enumerate(endpoints):
        conditions: dict[str, Any] = {"serving": True, "terminating": False}
        if ready is not None:
            conditions["ready"] = ready
        eps.append(
            {
                "addresses": [ip],
                "conditions": conditions,
                "nodeName": "node-1",
                "targetRef": {"kind": "Pod", "name": f"{name}-pod-{i}", "namespace": "specd", "uid": f"uid-{name}-{i}"},
            }
        )
    return {
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {
            "name": name,
            "namespace": "specd",
            "labels": {"kubernetes.io/service-name": service, "endpointslice.kubernetes.io/managed-by": "test"},
            "generateName": f"{service}-",
        },
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}, {"name": "metrics", "port": 9100}],
    }


class FakeKubeApi:
    """Serves ``GET /apis/discovery.k8s.io/v1/namespaces/NS/endpointslices`` — the list, and
    with ``watch=true`` a chunked stream of newline-delimited watch events from a
    resourceVersion (ERROR 410 when that version is older than the retained history)."""

    def __init__(self, namespace: str = "specd") -> None:
        self.namespace = namespace
        self._cond = threading.Condition()
        self._rv = 100
        self._objects: dict[str, dict[str, Any]] = {}
        self._events: list[tuple[int, str, dict[str, Any]]] = []
        self._oldest = 0  # watches from a version below this get 410 Gone
        self._generation = 0  # bumped by break_watches(): open streams end
        self.fail_next = 0  # answer this many requests with 500
        self.requests: list[dict[str, str]] = []
        self._closing = False
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                api._handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self.server.shutdown()
        self.server.server_close()

    # -------------------------------------------------------------- cluster changes
    def apply(self, obj: dict[str, Any], record: bool = True) -> None:
        """Create or update an object (ADDED / MODIFIED); ``record=False``: no watch event kept."""
        with self._cond:
            name = obj["metadata"]["name"]
            kind = "MODIFIED" if name in self._objects else "ADDED"
            self._store(kind, json.loads(json.dumps(obj)), record)

    def delete(self, name: str) -> None:
        with self._cond:
            self._store("DELETED", self._objects[name], True)

    def compact(self) -> None:
        """Forget the event history (as etcd compaction does): older versions now get 410."""
        with self._cond:
            self._oldest = self._rv + 1
            self._events.clear()

    def break_watches(self) -> None:
        """End every open watch stream (as an API server restart or a load balancer would)."""
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def _store(self, kind: str, obj: dict[str, Any], record: bool) -> None:
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        if kind == "DELETED":
            self._objects.pop(obj["metadata"]["name"])
        else:
            self._objects[obj["metadata"]["name"]] = obj
        if record:
            self._events.append((self._rv, kind, json.loads(json.dumps(obj))))
        self._cond.notify_all()

    # -------------------------------------------------------------- HTTP
    def watches(self) -> list[dict[str, str]]:
        return [r for r in self.requests if r.get("watch") == "true"]

    def lists(self) -> list[dict[str, str]]:
        return [r for r in self.requests if r.get("watch") != "true"]

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        url = urlparse(h.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.requests.append({"path": url.path, **query})
        if url.path != f"/apis/discovery.k8s.io/v1/namespaces/{self.namespace}/endpointslices":
            return self._send_json(h, 404, _status(404, "NotFound", f"no route {url.path}"))
        if self.fail_next > 0:
            self.fail_next -= 1
            return self._send_json(h, 500, _status(500, "InternalError", "etcd is having a bad day"))
        key, _, value = query.get("labelSelector", "").partition("=")

        def selected(obj: dict[str, Any]) -> bool:
            return not key or obj["metadata"].get("labels", {}).get(key) == value

        if query.get("watch") != "true":
            with self._cond:
                items = [o for o in self._objects.values() if selected(o)]
                body = {
                    "kind": "EndpointSliceList",
                    "apiVersion": "discovery.k8s.io/v1",
                    "metadata": {"resourceVersion": str(self._rv)},
                    "items": items,
                }
            return self._send_json(h, 200, body)
        since, timeout = int(query.get("resourceVersion", "0")), float(query.get("timeoutSeconds", "30"))
        self._stream_watch(h, since, timeout, selected)

    def _stream_watch(
        self, h: BaseHTTPRequestHandler, since: int, timeout: float, selected: Callable[[dict[str, Any]], bool]
    ) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        deadline = time.monotonic() + timeout
        try:
            with self._cond:
                generation = self._generation
                if since < self._oldest:
                    gone = _status(410, "Expired", f"too old resource version: {since} ({self._oldest})")
                    self._chunk(h, {"type": "ERROR", "object": gone})
                    return
                while not self._closing and generation == self._generation and time.monotonic() < deadline:
                    for rv, kind, obj in [e for e in self._events if e[0] > since]:
                        since = rv
                        if selected(obj):
                            self._chunk(h, {"type": kind, "object": obj})
                    self._cond.wait(0.05)
        except (BrokenPipeError, ConnectionResetError):
            return
        finally:
            try:
                h.wfile.write(b"0\r\n\r\n")
                h.wfile.flush()
            except OSError:
                pass

    @staticmethod
    def _chunk(h: BaseHTTPRequestHandler, event: dict[str, Any]) -> None:
        data = (json.dumps(event) + "\n").encode()
        h.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        h.wfile.flush()

    @staticmethod
    def _send_json(h: BaseHTTPRequestHandler, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
