"""specd client SDK: talk to a specd orchestrator over gRPC (needs only grpcio + protobuf).

from specd_client import SpecdClient
with SpecdClient("127.0.0.1:50051") as client:
    result = client.generate("Write a haiku about GPUs", method="pld", max_new_tokens=64)
    print(result.text, result.stats.tau)
    for event in client.stream("Tell me a story", max_new_tokens=64):
        print(event.text, end="", flush=True)
"""

from specd_client.aio import AsyncSpecdClient
from specd_client.client import SpecdClient
from specd_client.errors import (
    CancelledError,
    DeadlineExceededError,
    FailedPreconditionError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    SpecdClientError,
    UnauthenticatedError,
    UnavailableError,
)
from specd_client.types import Beam, GenerationResult, GenerationStats, Message, PhaseTimes, StreamEvent

__all__ = [
    "AsyncSpecdClient",
    "Beam",
    "CancelledError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "GenerationResult",
    "GenerationStats",
    "InternalError",
    "InvalidArgumentError",
    "Message",
    "NotFoundError",
    "PermissionDeniedError",
    "PhaseTimes",
    "ResourceExhaustedError",
    "SpecdClient",
    "SpecdClientError",
    "StreamEvent",
    "UnauthenticatedError",
    "UnavailableError",
]
