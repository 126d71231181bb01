"""Synchronous client of the specd orchestrator."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import grpc

from protos import orchestrator_pb2, orchestrator_pb2_grpc
from protos.security import PemSource
from specd_client._channel import auth_metadata, channel_credentials, channel_options
from specd_client._request import build_request, event_from_pb, result_from_pb
from specd_client.errors import from_rpc_error
from specd_client.types import GenerationResult, Message, StreamEvent


class SpecdClient:
    """Blocking client. ``timeout`` (seconds) is the default deadline of every call.

    ``api_key`` is sent as ``authorization: Bearer <key>`` metadata with every call.
    TLS: ``tls_ca`` (path or PEM bytes) is the CA that signed the server's certificate
    (``tls=True`` alone trusts the system's roots); ``tls_cert`` + ``tls_key`` is a client
    certificate for a server that asks for one (mutual TLS); ``tls_server_name`` overrides the
    name checked against the server's certificate. Failures raise
    :class:`specd_client.SpecdClientError` subclasses named after the gRPC status
    (InvalidArgumentError, UnavailableError, UnauthenticatedError, ...).
    """

    def __init__(
        self,
        address: str = "127.0.0.1:50051",
        *,
        timeout: float | None = 300.0,
        api_key: str | None = None,
        channel: grpc.Channel | None = None,
        tls: bool = False,
        tls_ca: PemSource | None = None,
        tls_cert: PemSource | None = None,
        tls_key: PemSource | None = None,
        tls_server_name: str | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self._metadata = auth_metadata(api_key)
        if channel is None:
            creds = channel_credentials(tls, tls_ca, tls_cert, tls_key)
            options = channel_options(tls_server_name)
            if creds is None:
                channel = grpc.insecure_channel(address, options=options)
            else:
                channel = grpc.secure_channel(address, creds, options=options)
        self._channel = channel
        self._stub = orchestrator_pb2_grpc.OrchestratorStub(self._channel)

    def generate(
        self,
        prompt: str | Sequence[Message] | Sequence[int],
        *,
        timeout: float | None = None,
        **options: Any,
    ) -> GenerationResult:
        """Generate a whole completion. ``options``: method, max_new_tokens, temperature,
        top_k, top_p, seed, raw, num_draft_tokens, adaptive_draft, num_branches, ignore_eos, tree_budget,
        head_tree and the Ouroboros and beam knobs (all of :func:`specd_client._request.build_request`)."""
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
