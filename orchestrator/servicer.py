"""Thin gRPC servicer of the orchestrator: proto -> GenerateParams -> Orchestrator -> proto.

Every request is followed by a :class:`~specd_metrics.services.RequestTracker` (time to first
token, inter-token gaps, outcome, the final stats; one access-log line), counted when the
servicer has ``metrics``.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator

import grpc

from orchestrator.request import ChatMessage, GenerateParams, OuroborosParams
from orchestrator.service import Orchestrator, ResultBeam, StreamChunk
from protos import beam_convert, convert, orchestrator_pb2, orchestrator_pb2_grpc
from protos.serving import stream_errors, unary_errors
from specd_metrics.services import OrchestratorMetrics, RequestTracker

SERVICE_NAME = orchestrator_pb2.DESCRIPTOR.services_by_name["Orchestrator"].full_name


def params_from_pb(req: orchestrator_pb2.GenerateRequest) -> GenerateParams:
    return GenerateParams(
        prompt=req.prompt,
        messages=tuple(ChatMessage(m.role, m.content) for m in req.messages),
        prompt_token_ids=tuple(req.prompt_token_ids),
        raw=req.raw,
        method=req.method or "vanilla",
        max_new_tokens=req.max_new_tokens,
        sampling=convert.sampling_from_pb(req.sampling),
        num_draft_tokens=req.num_draft_tokens,
        adaptive_draft=req.adaptive_draft,
        num_branches=req.num_branches,
        tree_budget=req.tree_budget,
        head_tree=req.head_tree,
        ignore_eos=req.ignore_eos,
        ouroboros=OuroborosParams(
            phrase_top_k=req.ouroboros.phrase_top_k,
            phrase_length=req.ouroboros.phrase_length,
            no_lookahead=req.ouroboros.no_lookahead,
            no_phrase_extension=req.ouroboros.no_phrase_extension,
            no_verification_phrases=req.ouroboros.no_verification_phrases,
            no_history_phrases=req.ouroboros.no_history_phrases,
        ),
        beam=beam_convert.beam_params_from_pb(req.beam),
    )


def _beams_to_pb(beams: tuple[ResultBeam, ...]) -> list[orchestrator_pb2.Beam]:
    return [
        orchestrator_pb2.Beam(text=b.text, token_ids=b.token_ids, score=b.score, logprob=b.logprob, finished=b.finished)
        for b in beams
    ]


def _chunk_to_pb(chunk: StreamChunk) -> orchestrator_pb2.GenerateChunk:
    return orchestrator_pb2.GenerateChunk(
        text=chunk.text,
        token_ids=chunk.token_ids,
        stats=convert.stats_to_pb(chunk.stats) if chunk.stats is not None else None,
        done=chunk.done,
        method=chunk.method,
        session_id=chunk.session_id,
        beams=_beams_to_pb(chunk.beams),
        peak_kv_bytes=chunk.peak_kv_bytes,
    )


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServicer):
    def __init__(self, orchestrator: Orchestrator, metrics: OrchestratorMetrics | None = None) -> None:
        self._orch = orchestrator
        self._metrics = metrics

    @unary_errors
    def Generate(
        self, request: orchestrator_pb2.GenerateRequest, context: grpc.ServicerContext
    ) -> orchestrator_pb2.GenerateResponse:
        tracker = RequestTracker(self._metrics, request.method)
        try:
            result = self._orch.generate(params_from_pb(request), context.is_active)
        except BaseException as err:
            tracker.done(err)
            raise
        tracker.chunk(len(result.token_ids), result.session_id, result.stats)
        tracker.done()
        return orchestrator_pb2.GenerateResponse(
            text=result.text,
            token_ids=result.token_ids,
            method=result.method,
            stats=convert.stats_to_pb(result.stats),
            session_id=result.session_id,
            beams=_beams_to_pb(result.beams),
            peak_kv_bytes=result.peak_kv_bytes,
        )

    @stream_errors
    def GenerateStream(
        self, request: orchestrator_pb2.GenerateRequest, context: grpc.ServicerContext
    ) -> Iterator[orchestrator_pb2.GenerateChunk]:
        tracker = RequestTracker(self._metrics, request.method)
        chunks: Generator[StreamChunk, None, None] | None = None
        ended: BaseException | None = None
        try:
            chunks = self._orch.stream(params_from_pb(request))
            for chunk in chunks:
                if not context.is_active():  # client cancelled or deadline passed
                    ended = GeneratorExit()
                    return
                tracker.chunk(len(chunk.token_ids), chunk.session_id, chunk.stats)
                yield _chunk_to_pb(chunk)
        except BaseException as err:
            ended = err
            raise
        finally:
            if chunks is not None:
                chunks.close()  # releases the target and draft sessions at once
            tracker.done(ended)

    @unary_errors
    def Info(
        self, request: orchestrator_pb2.OrchestratorInfoRequest, context: grpc.ServicerContext
    ) -> orchestrator_pb2.OrchestratorInfo:
        draft = self._orch.draft_info
        return orchestrator_pb2.OrchestratorInfo(
            target=convert.vocab_to_pb(self._orch.target_info.vocab),
            draft=convert.vocab_to_pb(draft.vocab if draft else None),
            methods=self._orch.methods,
            max_new_tokens=self._orch.config.max_new_tokens,
        )


def register(orchestrator: Orchestrator, metrics: OrchestratorMetrics | None = None) -> Callable[[grpc.Server], None]:
    def _register(server: grpc.Server) -> None:
        orchestrator_pb2_grpc.add_OrchestratorServicer_to_server(OrchestratorServicer(orchestrator, metrics), server)

    return _register
