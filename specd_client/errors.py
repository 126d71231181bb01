"""Exceptions raised by the SDK, one per gRPC status code a caller may want to handle."""

from __future__ import annotations

import grpc


class SpecdClientError(Exception):
    """A call failed; ``code`` is the gRPC status code name, ``details`` the server's message."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details


class InvalidArgumentError(SpecdClientError):
    """The request was malformed (empty prompt, bad sampling values, ...)."""


class NotFoundError(SpecdClientError):
    pass


class ResourceExhaustedError(SpecdClientError):
    """The server is full; retry later."""


class FailedPreconditionError(SpecdClientError):
    """The deployment cannot serve this request (e.g. method needs a draft model)."""


class UnavailableError(SpecdClientError):
    """The server (or a backend it needs) is not reachable; retrying may help."""


class DeadlineExceededError(SpecdClientError):
    pass


class CancelledError(SpecdClientError):
    pass


class UnauthenticatedError(SpecdClientError):
    pass


class PermissionDeniedError(SpecdClientError):
    pass


class InternalError(SpecdClientError):
    pass


_BY_CODE: dict[grpc.StatusCode, type[SpecdClientError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.INTERNAL: InternalError,
}


def from_rpc_error(err: grpc.RpcError) -> SpecdClientError:
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = (err.details() if hasattr(err, "details") else None) or str(code)
    cls = _BY_CODE.get(code, SpecdClientError)
    return cls(code.name if code is not None else "UNKNOWN", details)
