"""asyncio client of the specd orchestrator (grpc.aio)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import grpc.aio

from protos import orchestrator_pb2, orchestrator_pb2_grpc
from protos.security import PemSource
from specd_client._channel import auth_metadata, channel_credentials, channel_options
from specd_client._request import build_request, event_from_pb, result_from_pb
from specd_client.errors import from_rpc_error
from specd_client.types import GenerationResult, Message, StreamEvent


class AsyncSpecdClient:
    """The asyncio twin of :class:`specd_client.SpecdClient` (same arguments, awaitable)."""

    def __init__(
        self,
        address: str = "127.0.0.1:50051",
        *,
        timeout: float | None = 300.0,
        api_key: str | None = None,
        tls: bool = False,
        tls_ca: PemSource | None = None,
        tls_cert: PemSource | None = None,
        tls_key: PemSource | None = None,
        tls_server_name: str | None = None,
    ) -> None:
        self.address = address
        self.timeout = timeout
        self._metadata = auth_metadata(api_key)
        creds = channel_credentials(tls, tls_ca, tls_cert, tls_key)
        options = channel_options(tls_server_name)
        if creds is None:
            self._channel = grpc.aio.insecure_channel(address, options=options)
        else:
            self._channel = grpc.aio.secure_channel(address, creds, options=options)
        self._stub = orchestrator_pb2_grpc.OrchestratorStub(self._channel)

    async def generate(
        self,
        prompt: str | Sequence[Message] | Sequence[int],
        *,
        timeout: float | None = None,
        **options: Any,
    ) -> GenerationResult:
        req = build_request(prompt, **options)
        try:
            resp = await self._stub.Generate(req, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        return result_from_pb(resp)

    async def stream(
        self,
        prompt: str | Sequence[Message] | Sequence[int],
        *,
        timeout: float | None = None,
        **options: Any,
    ) -> AsyncIterator[StreamEvent]:
        req = build_request(prompt, **options)
        call = self._stub.GenerateStream(req, timeout=timeout or self.timeout, metadata=self._metadata)
        try:
            async for chunk in call:
                yield event_from_pb(chunk)
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None
        finally:
            call.cancel()

    async def info(self, *, timeout: float | None = None) -> orchestrator_pb2.OrchestratorInfo:
        try:
            return await self._stub.Info(
                orchestrator_pb2.OrchestratorInfoRequest(), timeout=timeout or self.timeout, metadata=self._metadata
            )
        except grpc.RpcError as err:
            raise from_rpc_error(err) from None

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> AsyncSpecdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
