"""The decode loop of the beam methods: prefill, then draft forest -> beam verify -> advance.

``beam-sample`` is the target alone doing beam sampling (each step an empty forest: one token per
beam); ``dsbd`` asks the drafter for a forest of draft beams first, and the target accepts layers
of it in the same pass (Qin et al. 2024; docs/ALGORITHMS.md#dsbd). The loop keeps the beams'
tokens (the target and the drafter keep their caches and are told only how the beams moved:
:class:`~spec_decode.beam_api.BeamUpdate`), collects finished hypotheses like transformers'
beam search (EOS among the best ``width`` candidates drawn; score / length ** length_penalty),
and stops at ``max_new_tokens``, when no beam runs, or when ``width`` finished hypotheses beat
every running beam. The whole answer comes as one chunk at the end: beams reorder every step.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

from orchestrator.drafters import DrafterRouter, Replica
from orchestrator.methods import Method
from orchestrator.request import GenerateParams
from spec_decode.api import TargetAPI
from spec_decode.beam_api import BeamDraftAPI, BeamTargetAPI, BeamUpdate, BeamVerifyResult
from spec_decode.beams import normalized_score
from spec_decode.errors import (
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from spec_decode.forest import EMPTY_FOREST, BeamForest
from spec_decode.stats import LoopStats
from spec_decode.types import GenerationStats, TargetLimits
from specd_metrics.logs import enter_session, exit_session

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinalBeam:
    """One returned beam: its tokens, sampling score and raw target log-probability."""

    token_ids: tuple[int, ...]
    score: float
    logprob: float
    finished: bool  # ended with EOS


@dataclass
class _Beam:
    tokens: list[int]
    score: float
    logprob: float


class BeamDecodeLoop:
    """Generates beams for one session; :meth:`run` yields the best beam's tokens once, at the end."""

    def __init__(
        self,
        *,
        session_id: str,
        target: TargetAPI,
        draft: DrafterRouter | None,
        method: Method,
        params: GenerateParams,
        prompt: list[int],
        limits: TargetLimits,
        eos_token_ids: tuple[int, ...],
    ) -> None:
        self.session_id = session_id
        self._target = target
        self._beam_target = cast(BeamTargetAPI, target)
        self._drafters = draft if method.drafter is not None else None
        self._method = method
        self._params = params
        self._beam_params = params.beam.validate()
        self._prompt = prompt
        self._limits = limits
        self._eos = () if params.ignore_eos else tuple(eos_token_ids)
        self._gamma = params.num_draft_tokens or method.default_num_tokens
        self._running = [_Beam([], 0.0, 0.0)]
        self._finished: list[_Beam] = []
        self._replica: Replica | None = None  # the replica whose draft beams follow the session now
        self._holders: dict[str, Replica] = {}  # every replica that got this session's beams (released at the end)
        self._want_hidden = method.drafter == "redrafter"  # the head drafts from the target's hidden states
        self._hidden: tuple[bytes, ...] = ()  # per running beam, from the last prefill / verify
        self._updates: tuple[BeamUpdate, ...] | None = None  # the last step's answer, for the drafter
        self.stats = LoopStats()
        self.widths: list[int] = []  # beam width per verified layer
        self.peak_kv_bytes = 0
        self.tokens: list[int] = []  # the best beam's tokens, set at the end
        self.beams: tuple[FinalBeam, ...] = ()
        self.finish_reason = "length"
        self.draft_timeouts = 0  # ProposeBeams calls that ran past the drafter deadline
        self._failed: set[str] = set()  # replicas that failed a call of this request
        self._start = 0.0
        self._wall = 0.0

    def run(self) -> Iterator[list[int]]:
        self._start = time.perf_counter()
        logged = enter_session(self.session_id)
        try:
            with self.stats.time("prefill"):
                prefilled = self._target.prefill(
                    self.session_id, self._prompt, self._params.sampling, self._want_hidden
                )
            self._hidden = (prefilled.hidden_state,)
            while self._running and not self._done():
                forest = self._draft()
                result = self._verify(forest)
                self._advance(result)
            self._finish()
            yield list(self.tokens)
        finally:
            self._wall = time.perf_counter() - self._start
            self._release()
            exit_session(logged)

    # ---------------------------------------------------------------- phases
    def _draft(self) -> BeamForest:
        """The drafter's forest for this step (empty for beam-sample, or when no drafter answers)."""
        if self._drafters is None:
            return EMPTY_FOREST
        length = len(self._running[0].tokens)
        remaining = self._params.max_new_tokens - length
        depth = min(self._gamma, remaining - 1, self._limits.max_context - len(self._prompt) - length - 1)
        replica = self._drafters.pick(self.session_id) if depth > 0 else None
        if replica is None:
            self._replica = None  # the drafter misses this step's update: the next call resends contexts
            return EMPTY_FOREST
        api = cast(BeamDraftAPI, replica.api)
        if self._replica is None or replica.address != self._replica.address:
            self._updates = None  # a new replica (or one that missed a step) starts from whole contexts
        contexts = [] if self._updates is not None else [self._prompt + b.tokens for b in self._running]
        start = time.perf_counter()
        try:
            proposal = api.propose_beams(
                self.session_id,
                contexts,
                self._updates or (),
                [b.score for b in self._running],
                depth,
                self._beam_params.width,
                self._limits.max_tree_nodes,
                self._params.sampling,
                0,
                self._eos,
                self._method.drafter or "model",
                self._hidden if self._want_hidden else (),
            )
        except (NotFound, FailedPrecondition, Unavailable, DeadlineExceeded, Cancelled) as err:
            log.warning("session %s: drafting beams failed (%s); this step is target-only", self.session_id, err)
            if isinstance(err, DeadlineExceeded):
                self.draft_timeouts += 1
            if isinstance(err, Unavailable | DeadlineExceeded | Cancelled):
                self._failed.add(replica.address)
                self._drafters.report_failure(replica, err)
            self._replica, self._updates = None, None
            return EMPTY_FOREST
        self._replica = self._holders[replica.address] = replica
        self.stats.phases.draft_s += proposal.compute_s
        self.stats.add_network(time.perf_counter() - start, proposal.compute_s)
        return proposal.forest

    def _verify(self, forest: BeamForest) -> BeamVerifyResult:
        start = time.perf_counter()
        left = self._params.max_new_tokens - len(self._running[0].tokens)
        try:
            result = self._beam_target.beam_verify(
                self.session_id, forest, self._beam_params, self._eos, self._want_hidden, left
            )
        except NotFound as err:  # evicted under load: W caches cannot be rebuilt by one re-prefill
            raise ResourceExhausted(
                "the target evicted this beam request's session (it holds more sessions than its "
                "--max-sessions / KV budget allow); retry later"
            ) from err
        self._hidden = result.hidden_states
        self.stats.phases.verify_s += result.compute_s
        self.stats.add_network(time.perf_counter() - start, result.compute_s)
        self.stats.record_step(result.drafted, result.accepted)
        self.widths.extend(result.widths)
        self.peak_kv_bytes = max(self.peak_kv_bytes, result.kv_bytes)
        return result

    def _advance(self, result: BeamVerifyResult) -> None:
        old = self._running
        for u in result.finished:
            self._finished.append(_Beam(old[u.parent].tokens + list(u.tokens), u.score, u.logprob))
        self._running = [_Beam(old[u.parent].tokens + list(u.tokens), u.score, u.logprob) for u in result.beams]
        self._updates = result.beams

    def _done(self) -> bool:
        """Budget spent, or ``width`` finished hypotheses that no running beam can beat (transformers'
        ``early_stopping=False`` heuristic)."""
        if len(self._running[0].tokens) >= self._params.max_new_tokens:
            return True
        width, penalty = self._beam_params.width, self._beam_params.length_penalty
        if len(self._finished) < width:
            return False
        worst_kept = sorted((self._norm(b) for b in self._finished), reverse=True)[width - 1]
        best_running = max(normalized_score(b.score, len(b.tokens), penalty) for b in self._running)
        return best_running <= worst_kept

    def _norm(self, beam: _Beam) -> float:
        return normalized_score(beam.score, len(beam.tokens), self._beam_params.length_penalty)

    def _finish(self) -> None:
        eos = set(self._eos)
        keep = 1 if self._beam_params.keep_best_only else self._beam_params.width  # memory-saving: one answer
        pool = sorted(self._finished + self._running, key=self._norm, reverse=True)[:keep]
        self.beams = tuple(
            FinalBeam(tuple(b.tokens), b.score, b.logprob, bool(b.tokens) and b.tokens[-1] in eos) for b in pool
        )
        best = self.beams[0] if self.beams else FinalBeam((), 0.0, 0.0, False)
        self.tokens = list(best.token_ids)
        self.finish_reason = "eos" if best.finished else "length"

    def _release(self) -> None:
        # The drafters first, as in DecodeLoop: a target that is down can hold its Release for the
        # whole deadline. A replica that failed a call may still hold beams (a late ProposeBeams):
        # it is freed in the background, so the request does not wait on it.
        for replica in self._holders.values():
            if replica.address in self._failed:
                threading.Thread(target=self._release_draft, args=(replica,), daemon=True).start()
            else:
                self._release_draft(replica)
        try:
            self._target.release(self.session_id)
        except Exception as err:  # releasing must never mask the request's own outcome
            log.warning("session %s: releasing the target session failed: %s", self.session_id, err)

    def _release_draft(self, replica: Replica) -> None:
        try:
            replica.api.release(self.session_id)
        except Exception as err:  # a replica that left or fails must not fail the request
            where = replica.address
            log.warning("session %s: releasing the draft beams on %s failed: %s", self.session_id, where, err)

    # ---------------------------------------------------------------- results
    def generation_stats(self) -> GenerationStats:
        phases = self.stats.phases
        wall = self._wall or (time.perf_counter() - self._start)
        accounted = phases.prefill_s + phases.draft_s + phases.verify_s + phases.network_s
        phases.orchestrate_s = max(0.0, wall - accounted)
        return GenerationStats(
            prompt_tokens=len(self._prompt),
            new_tokens=len(self.tokens),
            target_steps=self.stats.target_steps,
            draft_tokens=self.stats.draft_tokens,
            accepted_tokens=self.stats.accepted_tokens,
            wall_s=wall,
            phases=phases,
            accepted_length_histogram=tuple(self.stats.accepted_hist),
            finish_reason=self.finish_reason,
            draft_timeouts=self.draft_timeouts,
        )
