"""Synchronous client of the specd orchestrator."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import grpc

from protos import orchestrator_pb2, orchestrator_pb2_grpc
from specd_client._request import build_request, event_from_pb, result_from_pb
from specd_client.errors import from_rpc_error
from specd_client.types import GenerationResult, Message, StreamEvent


class SpecdClient:
    """Blocking client. ``timeout`` (seconds) is the default deadline of every call.

    ``api_key`` is sent as ``authorization: Bearer <key>`` metadata when given.
    Failures raise :class:`specd_client.SpecdClientError` subclasses named after the
    gRPC status (InvalidArgumentError, UnavailableError, ...).
    """

    def __init__(
        self,
        address: str = "127.0.0.1:50051",
        *,
        timeout: float | None = 300.0,
        api_key: str | None = None,
        channel: grpc.Channel | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self._channel = channel or grpc.insecure_channel(address)
        self._stub = orchestrator_pb2_grpc.OrchestratorStub(self._channel)
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()

    def generate(
        self,
        prompt: str | Sequence[Message] | Sequence[int],
        *,
        timeout: float | None = None,
        **options: Any,
    ) -> GenerationResult:
        """Generate a whole completion. ``options``: method, max_new_tokens, temperature,
        top_k, top_p, seed, raw, num_draft_tokens, adaptive_draft, num_branches, ignore_eos."""
        req = build_request(prompt, **options)
        try:
            resp = self._stub.Generate(req, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        return result_from_pb(resp)

    def stream(
        self,
        prompt: str | Sequence[Message] | Sequence[int],
        *,
        timeout: float | None = None,
        **options: Any,
    ) -> Iterator[StreamEvent]:
        """Yield events as the target accepts tokens; the last has ``done`` and ``stats``.

        Breaking out of the loop cancels the call (the server frees the session at once).
        """
        req = build_request(prompt, **options)
        call = self._stub.GenerateStream(req, timeout=timeout or self.timeout, metadata=self._metadata)
        try:
            for chunk in call:
                yield event_from_pb(chunk)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        finally:
            call.cancel()

    def info(self, *, timeout: float | None = None) -> orchestrator_pb2.OrchestratorInfo:
        try:
            return self._stub.Info(
                orchestrator_pb2.OrchestratorInfoRequest(), timeout=timeout or self.timeout, metadata=self._metadata
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> SpecdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
