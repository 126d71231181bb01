"""Thin gRPC servicer: proto -> dataclass -> TargetAPI call -> proto.

Each call runs inside :func:`specd_metrics.logs.session_context` (log lines carry the session id)
and, with ``metrics``, is counted by status and timed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import cast

import grpc

from protos import beam_convert, convert, target_pb2, target_pb2_grpc
from protos.serving import session_id_arg, unary_errors
from spec_decode.api import TargetAPI
from spec_decode.beam_api import BeamTargetAPI
from spec_decode.errors import FailedPrecondition
from specd_metrics.logs import session_context
from specd_metrics.services import TargetMetrics

SERVICE_NAME = target_pb2.DESCRIPTOR.services_by_name["TargetService"].full_name


class TargetServicer(target_pb2_grpc.TargetServiceServicer):
    def __init__(self, target: TargetAPI, metrics: TargetMetrics | None = None) -> None:
        self._target = target
        self._metrics = metrics

    @contextmanager
    def _call(self, name: str, session_id: str) -> Iterator[None]:
        start = time.perf_counter()
        with session_context(session_id):
            try:
                yield
            except Exception as err:
                if self._metrics is not None:
                    self._metrics.observe(name, start, err)
                raise
        if self._metrics is not None:
            self._metrics.observe(name, start, None)

    @unary_errors
    def Info(self, request: target_pb2.TargetInfoRequest, context: grpc.ServicerContext) -> target_pb2.TargetInfo:
        return convert.target_info_to_pb(self._target.info())

    @unary_errors
    def Prefill(self, request: target_pb2.PrefillRequest, context: grpc.ServicerContext) -> target_pb2.PrefillResponse:
        with self._call("prefill", request.session_id):
            sampling = convert.sampling_from_pb(request.sampling).validate()
            colocated_draft = convert.colocated_draft_from_pb(
                request.colocated_draft, request.HasField("colocated_draft")
            )
            result = self._target.prefill(
                session_id_arg(request.session_id),
                list(request.prompt_tokens),
                sampling,
                request.return_hidden_state,
                colocated_draft,
            )
        return target_pb2.PrefillResponse(
            context_len=result.context_len,
            compute_ms=result.compute_s * 1e3,
            evicted_sessions=result.evicted_sessions,
            hidden_state=result.hidden_state,
            next_tree=None if result.next_tree is None else convert.tree_to_pb(result.next_tree),
        )

    @unary_errors
    def Verify(self, request: target_pb2.VerifyRequest, context: grpc.ServicerContext) -> target_pb2.VerifyResponse:
        with self._call("verify", request.session_id):
            tree = convert.tree_from_pb(request.tree)
            colocated_draft = convert.colocated_draft_from_pb(
                request.colocated_draft, request.HasField("colocated_draft")
            )
            result = self._target.verify(
                session_id_arg(request.session_id),
                tree,
                request.return_target_tokens,
                request.return_hidden_state,
                colocated_draft,
            )
            if self._metrics is not None:
                self._metrics.verify_nodes.inc(tree.size)
        return convert.verify_to_pb(result)

    @unary_errors
    def BeamVerify(
        self, request: target_pb2.BeamVerifyRequest, context: grpc.ServicerContext
    ) -> target_pb2.BeamVerifyResponse:
        with self._call("beam_verify", request.session_id):
            if not hasattr(self._target, "beam_verify"):
                raise FailedPrecondition("this target service does not verify beams")
            forest = beam_convert.forest_from_pb(request.forest)
            result = cast(BeamTargetAPI, self._target).beam_verify(
                session_id_arg(request.session_id),
                forest,
                beam_convert.beam_params_from_pb(request.params),
                list(request.eos_token_ids),
                request.return_hidden_states,
                request.tokens_left,
            )
            if self._metrics is not None:
                self._metrics.verify_nodes.inc(forest.size)
        return beam_convert.beam_verify_to_pb(result)

    @unary_errors
    def Release(self, request: target_pb2.ReleaseRequest, context: grpc.ServicerContext) -> target_pb2.ReleaseResponse:
        with self._call("release", request.session_id):
            released = self._target.release(session_id_arg(request.session_id))
        return target_pb2.ReleaseResponse(released=released)


def register(target: TargetAPI, metrics: TargetMetrics | None = None) -> Callable[[grpc.Server], None]:
    """A ``register`` callback for :func:`protos.serving.start_server`."""

    def _register(server: grpc.Server) -> None:
        target_pb2_grpc.add_TargetServiceServicer_to_server(TargetServicer(target, metrics), server)

    return _register
