"""Domain errors. Servicers map each to the gRPC status code named in ``code``.

Domain code raises these; it never imports grpc. gRPC clients map status codes back to
the same classes, so the orchestrator handles in-process and remote parts alike.
"""

from __future__ import annotations


class SpecdError(Exception):
    """Base class; ``code`` is the name of a ``grpc.StatusCode`` member."""

    code = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(SpecdError):
    code = "INVALID_ARGUMENT"


class NotFound(SpecdError):
    code = "NOT_FOUND"


class ResourceExhausted(SpecdError):
    code = "RESOURCE_EXHAUSTED"


class FailedPrecondition(SpecdError):
    code = "FAILED_PRECONDITION"


class Unavailable(SpecdError):
    code = "UNAVAILABLE"


class DeadlineExceeded(SpecdError):
    code = "DEADLINE_EXCEEDED"


class Cancelled(SpecdError):
    code = "CANCELLED"


ERRORS_BY_CODE: dict[str, type[SpecdError]] = {
    cls.code: cls
    for cls in (
        SpecdError,
        InvalidArgument,
        NotFound,
        ResourceExhausted,
        FailedPrecondition,
        Unavailable,
        DeadlineExceeded,
        Cancelled,
    )
}


def error_for_code(code: str, message: str) -> SpecdError:
    """The domain error for a gRPC status code name (INTERNAL when unknown)."""
    return ERRORS_BY_CODE.get(code, SpecdError)(message)
