"""Thin gRPC servicer: proto -> dataclass -> DraftAPI call -> proto.

Each call runs inside :func:`specd_metrics.logs.session_context`; with ``metrics`` it is counted
by status (Propose also timed, with the nodes it proposed).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import cast

import grpc

from protos import beam_convert, convert, draft_pb2, draft_pb2_grpc
from protos.serving import session_id_arg, unary_errors
from spec_decode.api import DraftAPI
from spec_decode.beam_api import BeamDraftAPI
from spec_decode.errors import FailedPrecondition, InvalidArgument
from specd_metrics.logs import session_context
from specd_metrics.services import DraftMetrics

SERVICE_NAME = draft_pb2.DESCRIPTOR.services_by_name["DraftService"].full_name


def _check_counts(num_draft: int, num_accepted: int) -> None:
    if num_draft < 0 or not 0 <= num_accepted <= num_draft:
        raise InvalidArgument(f"need 0 <= num_accepted <= num_draft, got {num_accepted} and {num_draft}")


class DraftServicer(draft_pb2_grpc.DraftServiceServicer):
    def __init__(self, draft: DraftAPI, metrics: DraftMetrics | None = None) -> None:
        self._draft = draft
        self._metrics = metrics

    @unary_errors
    def Info(self, request: draft_pb2.DraftInfoRequest, context: grpc.ServicerContext) -> draft_pb2.DraftInfo:
        return convert.draft_info_to_pb(self._draft.info())

    @unary_errors
    def Propose(self, request: draft_pb2.ProposeRequest, context: grpc.ServicerContext) -> draft_pb2.ProposeResponse:
        start = time.perf_counter()
        with session_context(request.session_id):
            try:
                response = self._propose(request)
            except Exception as err:
                if self._metrics is not None:
                    self._metrics.observe_propose(request.drafter, start, 0, err)
                raise
        if self._metrics is not None:
            self._metrics.observe_propose(request.drafter, start, len(response.tree.tokens), None)
        return response

    def _propose(self, request: draft_pb2.ProposeRequest) -> draft_pb2.ProposeResponse:
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
            request.hidden_state,
            request.max_depth,
        )
        return draft_pb2.ProposeResponse(
            tree=convert.tree_to_pb(result.tree),
            compute_ms=result.compute_s * 1e3,
            context_len=result.context_len,
        )

    @unary_errors
    def Observe(self, request: draft_pb2.ObserveRequest, context: grpc.ServicerContext) -> draft_pb2.ObserveResponse:
        with session_context(request.session_id), self._counted("observe"):
            _check_counts(request.num_draft, request.num_accepted)
            nxt = self._draft.observe(
                session_id_arg(request.session_id), request.num_draft, request.num_accepted, list(request.target_tokens)
            )
        return draft_pb2.ObserveResponse(next_num_tokens=nxt)

    @unary_errors
    def ProposeBeams(
        self, request: draft_pb2.ProposeBeamsRequest, context: grpc.ServicerContext
    ) -> draft_pb2.ProposeBeamsResponse:
        with session_context(request.session_id), self._counted("propose_beams"):
            if not hasattr(self._draft, "propose_beams"):
                raise FailedPrecondition("this draft service does not draft beams")
            proposal = cast(BeamDraftAPI, self._draft).propose_beams(
                session_id_arg(request.session_id),
                [list(c.tokens) for c in request.contexts],
                [beam_convert.update_from_pb(u) for u in request.updates],
                list(request.beam_scores),
                request.depth,
                request.width,
                request.max_nodes,
                convert.sampling_from_pb(request.sampling),
                request.draft_top_k,
                list(request.eos_token_ids),
                request.drafter or "model",
                list(request.hidden_states),
            )
        return draft_pb2.ProposeBeamsResponse(
            forest=beam_convert.forest_to_pb(proposal.forest), compute_s=proposal.compute_s
        )

    @unary_errors
    def Release(
        self, request: draft_pb2.DraftReleaseRequest, context: grpc.ServicerContext
    ) -> draft_pb2.DraftReleaseResponse:
        with session_context(request.session_id), self._counted("release"):
            released = self._draft.release(session_id_arg(request.session_id))
        return draft_pb2.DraftReleaseResponse(released=released)

    @contextmanager
    def _counted(self, call: str) -> Iterator[None]:
        try:
            yield
        except Exception as err:
            if self._metrics is not None:
                self._metrics.observe(call, err)
            raise
        if self._metrics is not None:
            self._metrics.observe(call, None)


def register(draft: DraftAPI, metrics: DraftMetrics | None = None) -> Callable[[grpc.Server], None]:
    def _register(server: grpc.Server) -> None:
        draft_pb2_grpc.add_DraftServiceServicer_to_server(DraftServicer(draft, metrics), server)

    return _register
