"""Thin gRPC servicer: proto -> dataclass -> TargetAPI call -> proto."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from protos import convert, target_pb2, target_pb2_grpc
from protos.serving import session_id_arg, unary_errors
from spec_decode.api import TargetAPI

SERVICE_NAME = target_pb2.DESCRIPTOR.services_by_name["TargetService"].full_name


class TargetServicer(target_pb2_grpc.TargetServiceServicer):
    def __init__(self, target: TargetAPI) -> None:
        self._target = target

    @unary_errors
    def Info(self, request: target_pb2.TargetInfoRequest, context: grpc.ServicerContext) -> target_pb2.TargetInfo:
        return convert.target_info_to_pb(self._target.info())

    @unary_errors
    def Prefill(self, request: target_pb2.PrefillRequest, context: grpc.ServicerContext) -> target_pb2.PrefillResponse:
        sampling = convert.sampling_from_pb(request.sampling).validate()
        result = self._target.prefill(session_id_arg(request.session_id), list(request.prompt_tokens), sampling)
        return target_pb2.PrefillResponse(
            context_len=result.context_len,
            compute_ms=result.compute_s * 1e3,
            evicted_sessions=result.evicted_sessions,
        )

    @unary_errors
    def Verify(self, request: target_pb2.VerifyRequest, context: grpc.ServicerContext) -> target_pb2.VerifyResponse:
        result = self._target.verify(
            session_id_arg(request.session_id), convert.tree_from_pb(request.tree), request.return_target_tokens
        )
        return convert.verify_to_pb(result)

    @unary_errors
    def Release(self, request: target_pb2.ReleaseRequest, context: grpc.ServicerContext) -> target_pb2.ReleaseResponse:
        return target_pb2.ReleaseResponse(released=self._target.release(session_id_arg(request.session_id)))


def register(target: TargetAPI) -> Callable[[grpc.Server], None]:
    """A ``register`` callback for :func:`protos.serving.start_server`."""

    def _register(server: grpc.Server) -> None:
        target_pb2_grpc.add_TargetServiceServicer_to_server(TargetServicer(target), server)

    return _register
