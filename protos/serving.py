"""gRPC plumbing shared by every specd server and client: error mapping, health,
reflection, TLS / mutual TLS, graceful shutdown. Domain code never imports this module.
"""

from __future__ import annotations

import functools
import logging
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from protos.security import PeerTls, TlsConfig, open_channel
from spec_decode.errors import InvalidArgument, SpecdError, error_for_code

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
]


def _abort(context: grpc.ServicerContext, err: Exception) -> None:
    if isinstance(err, SpecdError):
        context.abort(getattr(grpc.StatusCode, err.code, grpc.StatusCode.INTERNAL), err.message)
    log.exception("unexpected error in servicer")
    context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(err).__name__}: {err}")


def session_id_arg(value: str) -> str:
    """A session id from a request, checked: non-empty and at most 256 characters."""
    if not value:
        raise InvalidArgument("session_id is empty")
    if len(value) > 256:
        raise InvalidArgument(f"session_id is {len(value)} characters; the limit is 256")
    return value


@dataclass(frozen=True)
class _Malformed:
    """What a request's bytes became when they did not parse as its message type."""

    reason: str


class MalformedRequests(grpc.ServerInterceptor):
    """Bytes that do not parse as the method's request message get INVALID_ARGUMENT.

    (gRPC itself answers INTERNAL "Exception deserializing request!".) The deserializer of every
    unary-request method is wrapped to return a marker instead of raising, and the method to
    refuse the marker with a message naming the method.
    """

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None or handler.request_streaming or handler.request_deserializer is None:
            return handler
        method = handler_call_details.method
        parse = handler.request_deserializer

        def safe_parse(raw: bytes) -> Any:
            try:
                return parse(raw)
            except Exception as err:  # DecodeError, or anything else a parser raises
                return _Malformed(f"{type(err).__name__}: {err}")

        def refuse(request: _Malformed, context: grpc.ServicerContext) -> None:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"{method}: the request is not a valid message ({request.reason})"
            )

        if handler.unary_unary is not None:
            inner = handler.unary_unary

            def unary(request: Any, context: grpc.ServicerContext) -> Any:
                if isinstance(request, _Malformed):
                    refuse(request, context)
                return inner(request, context)

            return handler._replace(request_deserializer=safe_parse, unary_unary=unary)  # type: ignore[attr-defined]
        if handler.unary_stream is not None:
            inner_stream = handler.unary_stream

            def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                if isinstance(request, _Malformed):
                    refuse(request, context)
                yield from inner_stream(request, context)

            return handler._replace(request_deserializer=safe_parse, unary_stream=stream)  # type: ignore[attr-defined]
        return handler


def unary_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Servicer method decorator: domain errors become their gRPC status with the message."""

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> T:
        try:
            return fn(self, request, context)
        except Exception as err:
            _abort(context, err)
            raise  # unreachable: abort raises

    return wrapper


def stream_errors(fn: Callable[..., Iterator[T]]) -> Callable[..., Iterator[T]]:
    """Like :func:`unary_errors` for server-streaming methods."""

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Iterator[T]:
        try:
            yield from fn(self, request, context)
        except Exception as err:
            _abort(context, err)

    return wrapper


def call(method: Callable[..., T], request: Any, timeout: float | None) -> T:
    """Call a stub method; map gRPC failures to :mod:`spec_decode.errors`."""
    try:
        return method(request, timeout=timeout)
    except grpc.RpcError as err:
        raise rpc_error_to_domain(err) from None


def rpc_error_to_domain(err: grpc.RpcError) -> SpecdError:
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    return error_for_code(code.name if code else "UNKNOWN", details or str(code))


@dataclass
class ServerHandle:
    """A started server: its bound port and health servicer."""

    server: grpc.Server
    port: int
    health: health.HealthServicer
    service_names: tuple[str, ...]

    def stop(self, grace: float | None = 5.0) -> None:
        """Graceful shutdown: report NOT_SERVING, finish in-flight RPCs for ``grace`` s, stop."""
        for name in (*self.service_names, ""):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        self.server.stop(grace).wait()

    def wait_for_signal(self, grace: float = 5.0) -> None:
        """Block until SIGTERM/SIGINT, then stop gracefully (entry points only)."""
        done = threading.Event()

        def _handler(signum: int, _frame: Any) -> None:
            log.info("signal %d: shutting down (grace %.1f s)", signum, grace)
            done.set()

        signal.signal(signal.SIGTERM, _handler)
        signal.signal(signal.SIGINT, _handler)
        done.wait()
        self.stop(grace)


def start_server(
    register: Callable[[grpc.Server], None],
    service_names: Sequence[str],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    max_workers: int = 16,
    tls: TlsConfig | None = None,
    interceptors: Sequence[grpc.ServerInterceptor] = (),
    maximum_concurrent_rpcs: int | None = None,
) -> ServerHandle:
    """Start a gRPC server with health checking and reflection; ``port=0`` picks a free one.

    ``tls``: serve TLS only (a plaintext client cannot connect); with ``tls.client_ca`` every
    caller must present a certificate signed by that CA (mutual TLS), health checks included.
    ``interceptors`` run before every method (the orchestrator's API-key check).
    ``maximum_concurrent_rpcs``: gRPC refuses calls beyond it with RESOURCE_EXHAUSTED at once
    instead of queueing them for a worker thread. Requests whose bytes do not parse get
    INVALID_ARGUMENT (:class:`MalformedRequests`, after the given interceptors).
    """
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers),
        options=CHANNEL_OPTIONS,
        interceptors=[*interceptors, MalformedRequests()],
        maximum_concurrent_rpcs=maximum_concurrent_rpcs,
    )
    register(server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = tuple(service_names)
    reflection.enable_server_reflection((*names, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    if tls is None:
        bound = server.add_insecure_port(f"{host}:{port}")
    else:
        bound = server.add_secure_port(f"{host}:{port}", tls.server_credentials())
    if bound == 0:
        raise OSError(f"could not bind {host}:{port}")
    server.start()
    for name in (*names, ""):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    security = "plaintext" if tls is None else "mutual TLS" if tls.mutual else "TLS"
    log.info("serving %s on %s:%d (%s)", ", ".join(names), host, bound, security)
    return ServerHandle(server, bound, health_servicer, names)


def wait_healthy(address: str, timeout: float = 60.0, service: str = "", tls: PeerTls | None = None) -> None:
    """Block until the server at ``address`` reports SERVING, or raise TimeoutError.

    ``tls``: how to reach a TLS server (its CA, and a client certificate for mutual TLS)."""
    import time

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    with open_channel(address, tls) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2.0)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as err:
                last = err
            time.sleep(0.2)
    raise TimeoutError(f"{address} did not become healthy within {timeout:.0f} s (last error: {last})")
