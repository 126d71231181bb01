"""Thin gRPC servicer: proto -> dataclass -> DraftAPI call -> proto."""

from __future__ import annotations

from collections.abc import Callable

import grpc

from protos import convert, draft_pb2, draft_pb2_grpc
from protos.serving import session_id_arg, unary_errors
from spec_decode.api import DraftAPI
from spec_decode.errors import InvalidArgument

SERVICE_NAME = draft_pb2.DESCRIPTOR.services_by_name["DraftService"].full_name


def _check_counts(num_draft: int, num_accepted: int) -> None:
    if num_draft < 0 or not 0 <= num_accepted <= num_draft:
        raise InvalidArgument(f"need 0 <= num_accepted <= num_draft, got {num_accepted} and {num_draft}")


class DraftServicer(draft_pb2_grpc.DraftServiceServicer):
    def __init__(self, draft: DraftAPI) -> None:
        self._draft = draft

    @unary_errors
    def Info(self, request: draft_pb2.DraftInfoRequest, context: grpc.ServicerContext) -> draft_pb2.DraftInfo:
        return convert.draft_info_to_pb(self._draft.info())

    @unary_errors
    def Propose(self, request: draft_pb2.ProposeRequest, context: grpc.ServicerContext) -> draft_pb2.ProposeResponse:
        session_id = session_id_arg(request.session_id)
        if request.offset < 0:
            raise InvalidArgument(f"offset must be >= 0, got {request.offset}")
        if request.max_nodes < 0:
            raise InvalidArgument(f"max_nodes must be >= 0, got {request.max_nodes}")
        if request.has_feedback and request.offset > 0:
            _check_counts(request.feedback_num_draft, request.feedback_num_accepted)
            self._draft.observe(
                session_id,
                request.feedback_num_draft,
                request.feedback_num_accepted,
                list(request.feedback_target_tokens),
            )
        result = self._draft.propose(
            session_id,
            request.drafter,
            request.offset,
            list(request.tokens),
            request.max_nodes,
            convert.draft_options_from_pb(request.options),
            convert.sampling_from_pb(request.sampling).validate(),
        )
        return draft_pb2.ProposeResponse(
            tree=convert.tree_to_pb(result.tree),
            compute_ms=result.compute_s * 1e3,
            context_len=result.context_len,
        )

    @unary_errors
    def Observe(self, request: draft_pb2.ObserveRequest, context: grpc.ServicerContext) -> draft_pb2.ObserveResponse:
        _check_counts(request.num_draft, request.num_accepted)
        nxt = self._draft.observe(
            session_id_arg(request.session_id), request.num_draft, request.num_accepted, list(request.target_tokens)
        )
        return draft_pb2.ObserveResponse(next_num_tokens=nxt)

    @unary_errors
    def Release(
        self, request: draft_pb2.DraftReleaseRequest, context: grpc.ServicerContext
    ) -> draft_pb2.DraftReleaseResponse:
        return draft_pb2.DraftReleaseResponse(released=self._draft.release(session_id_arg(request.session_id)))


def register(draft: DraftAPI) -> Callable[[grpc.Server], None]:
    def _register(server: grpc.Server) -> None:
        draft_pb2_grpc.add_DraftServiceServicer_to_server(DraftServicer(draft), server)

    return _register
