"""The orchestrator's domain object: turns client requests into decode loops."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from orchestrator.beam_loop import BeamDecodeLoop
from orchestrator.drafters import DrafterRouter, as_router
from orchestrator.loop import DecodeLoop
from orchestrator.methods import METHODS, Method, available_methods, resolve_method
from orchestrator.request import GenerateParams
from orchestrator.text import IncrementalDetokenizer, prompt_tokens
from spec_decode.api import DraftAPI, TargetAPI
from spec_decode.budget import TREE_BUDGETS, AcceptanceProfile, StepCost, TreeBudget
from spec_decode.errors import Cancelled, FailedPrecondition, InvalidArgument, ResourceExhausted
from spec_decode.models import check_same_vocab, vocab_fingerprint
from spec_decode.types import COLOCATED_DRAFTERS, DraftInfo, GenerationStats, TargetInfo

log = logging.getLogger(__name__)


PLACEMENTS = ("auto", "draft", "target")  # where a co-locatable drafter drafts


@dataclass(frozen=True)
class OrchestratorConfig:
    max_new_tokens: int = 2048  # cap on a request's max_new_tokens
    max_prompt_tokens: int = 0  # cap on a request's prompt tokens (0: only the target's context)
    max_concurrent_requests: int = 64  # requests served at once; beyond: RESOURCE_EXHAUSTED (0: no cap)
    # Draft nodes per step shared by the requests running at once (0: no budget). Under load a
    # batched verify pass scores every request's tree, so big trees for many requests make each
    # pass compute-bound; each request then gets budget / running nodes (at least 1).
    step_node_budget: int = 48
    # Where `redrafter` drafts: "target" (the target's co-located head drafts the next tree with
    # every verify result: no draft round trip), "draft" (a draft service), "auto" (target when
    # the target has a head, else a draft service).
    redrafter_placement: str = "auto"
    # Where `pld` drafts: "target" (prompt lookup over the session's tokens inside the target
    # service, drafted with every Prefill/Verify result: no draft round trip, no draft service
    # needed), "draft" (a draft service), "auto" (target when the target offers it, else a
    # draft service).
    pld_placement: str = "auto"
    # How many draft nodes each step asks for: "cost" picks per step the budget that maximises
    # tokens per second from the measured step cost and the request's acceptance so far
    # (spec_decode/budget.py); "max" always asks for the cap (the target's max_tree_nodes).
    tree_budget: str = "cost"

    def validate(self) -> OrchestratorConfig:
        if self.tree_budget not in TREE_BUDGETS:
            raise InvalidArgument(f"tree_budget must be one of {', '.join(TREE_BUDGETS)}, got {self.tree_budget!r}")
        for name in ("redrafter_placement", "pld_placement"):
            if getattr(self, name) not in PLACEMENTS:
                raise InvalidArgument(f"{name} must be auto, draft or target, got {getattr(self, name)!r}")
        if self.max_new_tokens <= 0:
            raise InvalidArgument(f"max_new_tokens cap must be > 0, got {self.max_new_tokens}")
        if self.max_prompt_tokens < 0:
            raise InvalidArgument(f"max_prompt_tokens cap must be >= 0, got {self.max_prompt_tokens}")
        if self.step_node_budget < 0:
            raise InvalidArgument(f"step_node_budget must be >= 0, got {self.step_node_budget}")
        if self.max_concurrent_requests < 0:
            raise InvalidArgument(f"max_concurrent_requests must be >= 0, got {self.max_concurrent_requests}")
        return self


class Admission:
    """Caps the requests served at once: one over the cap is refused at once (RESOURCE_EXHAUSTED)
    instead of queueing in gRPC's thread pool while its client's deadline runs out."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._sem = threading.BoundedSemaphore(limit) if limit > 0 else None
        self._running = 0
        self._count_lock = threading.Lock()

    @property
    def running(self) -> int:
        """Requests being served now."""
        return self._running

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self._counted():
            if self._sem is None:
                yield
                return
            with self._capped():
                yield

    @contextmanager
    def _counted(self) -> Iterator[None]:
        with self._count_lock:
            self._running += 1
        try:
            yield
        finally:
            with self._count_lock:
                self._running -= 1

    @contextmanager
    def _capped(self) -> Iterator[None]:
        assert self._sem is not None
        if not self._sem.acquire(blocking=False):
            raise ResourceExhausted(
                f"the orchestrator is serving its cap of {self.limit} requests at once "
                "(--max-concurrent-requests, at most the target's --max-sessions); retry shortly"
            )
        try:
            yield
        finally:
            self._sem.release()


@dataclass(frozen=True)
class ResultBeam:
    """A final beam of a beam method: text, tokens, sampling score, raw target log-probability."""

    text: str
    token_ids: tuple[int, ...]
    score: float
    logprob: float
    finished: bool  # ended with EOS


@dataclass(frozen=True)
class GenerationResult:
    text: str
    token_ids: tuple[int, ...]
    method: str
    stats: GenerationStats
    session_id: str
    beams: tuple[ResultBeam, ...] = ()  # beam methods: every final beam, best first
    peak_kv_bytes: int = 0  # beam methods: the target KV memory of the request's beams at its peak


@dataclass(frozen=True)
class StreamChunk:
    """New text and tokens of one step; the last chunk has ``done`` and the stats."""

    text: str
    token_ids: tuple[int, ...]
    method: str
    session_id: str
    done: bool = False
    stats: GenerationStats | None = None
    beams: tuple[ResultBeam, ...] = ()  # last chunk of a beam method: every final beam, best first
    peak_kv_bytes: int = 0  # last chunk of a beam method: peak target KV memory of its beams


class Orchestrator:
    """Serves generation requests over a target and an optional draft service.

    ``draft`` is one drafter (an in-process object or one client) or a
    :class:`~orchestrator.drafters.DrafterPool` of replicas that sessions are spread over.
    """

    def __init__(
        self,
        target: TargetAPI,
        draft: DraftAPI | DrafterRouter | None,
        tokenizer: Any,
        config: OrchestratorConfig | None = None,
    ) -> None:
        self.config = (config or OrchestratorConfig()).validate()
        self._target = target
        self._draft = as_router(draft)
        self._tokenizer = tokenizer
        self.target_info: TargetInfo = target.info()
        # More requests than the target has sessions would only make it evict the idle sessions
        # of requests in flight (each then rebuilt by a re-prefill): refuse them up front instead.
        cap, sessions = self.config.max_concurrent_requests, self.target_info.limits.max_sessions
        if sessions > 0 and (cap == 0 or cap > sessions):
            log.info("serving at most %d requests at once: the target holds %d sessions", sessions, sessions)
            cap = sessions
        self._admission = Admission(cap)
        # The tree budget's shared state, per method: its step cost and its acceptance prior.
        self._budget_lock = threading.Lock()
        self._budget_models: dict[str, tuple[StepCost, AcceptanceProfile]] = {}
        self.draft_info: DraftInfo | None = self._draft.info() if self._draft is not None else None
        tok_fp = vocab_fingerprint(tokenizer)
        if tok_fp != self.target_info.vocab.fingerprint:
            raise FailedPrecondition(
                f"the orchestrator's tokenizer (fingerprint {tok_fp[:12]}) is not the tokenizer of target "
                f"model {self.target_info.vocab.model!r} ({self.target_info.vocab.fingerprint[:12]}); "
                "start the orchestrator with the same --target as the target service"
            )
        if self.draft_info is not None and self.draft_info.vocab is not None:
            check_same_vocab(self.target_info.vocab, self.draft_info.vocab)

    @property
    def methods(self) -> list[str]:
        drafters = self.draft_info.drafters if self.draft_info else ()
        methods = available_methods(self._draft is not None, drafters)
        methods += [name for name in METHODS if name not in methods and self._drafts_on_target(name)]
        return [name for name in METHODS if name in methods]

    def _drafts_on_target(self, name: str) -> str | None:
        """The drafter the target runs itself for method ``name``; None when a draft service drafts
        (or nothing does). Beam methods always draft in a draft service."""
        method = METHODS.get(name)
        if method is None or method.beams or method.drafter not in COLOCATED_DRAFTERS:
            return None
        placement = self.config.pld_placement if method.drafter == "prompt_lookup" else self.config.redrafter_placement
        offered = method.drafter in self.target_info.colocated_drafters
        if placement == "target" and not offered:
            hint = " (specd target --redrafter-head DIR)" if method.drafter == "redrafter" else ""
            raise FailedPrecondition(
                f"{method.drafter} placement 'target' needs a target service that drafts with it{hint}"
            )
        return method.drafter if placement != "draft" and offered else None

    def generate(self, params: GenerateParams, is_active: Callable[[], bool] = lambda: True) -> GenerationResult:
        """Run a request to the end; stops early (Cancelled) once ``is_active()`` is False."""
        token_ids: list[int] = []
        text: list[str] = []
        chunks = self.stream(params)
        try:
            for chunk in chunks:
                if not is_active():
                    raise Cancelled("the client went away before the generation finished")
                token_ids.extend(chunk.token_ids)
                text.append(chunk.text)
                if chunk.done:
                    assert chunk.stats is not None
                    return GenerationResult(
                        "".join(text),
                        tuple(token_ids),
                        chunk.method,
                        chunk.stats,
                        chunk.session_id,
                        chunk.beams,
                        chunk.peak_kv_bytes,
                    )
        finally:
            chunks.close()  # releases the sessions at once when stopped early
        raise AssertionError("stream ended without a final chunk")

    def stream(self, params: GenerateParams) -> Generator[StreamChunk, None, None]:
        """Validate, then yield one chunk per target step and a final chunk with the stats.

        Validation errors are raised before the first chunk; closing the iterator early
        (client cancelled) releases the sessions at once. Over ``max_concurrent_requests``
        the first ``next()`` raises ResourceExhausted.
        """
        with self._admission.slot():
            loop = self._prepare(params)
            detok = IncrementalDetokenizer(self._tokenizer)
            name = params.method or "vanilla"
            for new_tokens in loop.run():
                yield StreamChunk(detok.push(new_tokens), tuple(new_tokens), name, loop.session_id)
            beams: tuple[ResultBeam, ...] = ()
            peak = 0
            if isinstance(loop, BeamDecodeLoop):
                peak = loop.peak_kv_bytes
                beams = tuple(
                    ResultBeam(self._tokenizer.decode(list(b.token_ids)), b.token_ids, b.score, b.logprob, b.finished)
                    for b in loop.beams
                )
            stats = loop.generation_stats()
            yield StreamChunk(detok.flush(), (), name, loop.session_id, True, stats, beams, peak)

    def _tree_budget(self, params: GenerateParams, method: Method, colocated: bool) -> TreeBudget | None:
        """A request's cost-model budget (None: target-only methods, or ``tree_budget`` "max").

        A seeded sampled request keeps the cap unless it asks for "cost" itself: the cost budget
        follows measured time, so its trees (and the random draws over them) would differ from
        run to run; its tokens would still follow the target's distribution, but not repeat.
        """
        budget = params.tree_budget or self.config.tree_budget
        if not params.tree_budget and not params.sampling.greedy and params.sampling.seed is not None:
            budget = "max"
        if budget != "cost" or (method.drafter is None and not colocated):
            return None
        cost, prior = self.budget_model(f"{method.name}@target" if colocated else method.name)
        return TreeBudget(prior.cap, cost, prior)

    def budget_snapshot(self) -> dict[str, tuple[float, float, int]]:
        """Per method (``NAME@target`` when the target drafts): the fitted step cost ``(a, b)`` in
        seconds (a step = a + b * rows) and the steps it was fitted on. Read by the metrics."""
        with self._budget_lock:
            models = dict(self._budget_models)
        return {key: (*cost.line(), cost.steps) for key, (cost, _) in models.items()}

    def budget_model(self, key: str) -> tuple[StepCost, AcceptanceProfile]:
        """The tree budget's shared state for ``key`` (a method name; ``NAME@target`` when the target
        drafts): the fitted step cost and the acceptance prior every new request of it starts from."""
        with self._budget_lock:
            if key not in self._budget_models:
                self._budget_models[key] = (StepCost(), AcceptanceProfile(self.target_info.limits.max_tree_nodes))
            return self._budget_models[key]

    def _node_share(self) -> int:
        """This step's draft-node allowance of one request: the step budget over the running requests."""
        return max(1, self.config.step_node_budget // max(1, self._admission.running))

    def _prepare(self, params: GenerateParams) -> DecodeLoop | BeamDecodeLoop:
        params.validate(max_new_tokens_cap=self.config.max_new_tokens)
        drafters = self.draft_info.drafters if self.draft_info else ()
        here = self._drafts_on_target(params.method or "vanilla")
        colocated = here is not None
        if here is not None:  # no draft service involved: the target drafts
            drafters = (*drafters, here)
        method = resolve_method(
            params.method, has_draft_service=self._draft is not None or colocated, draft_drafters=drafters
        )
        prompt = prompt_tokens(self._tokenizer, params)
        limits = self.target_info.limits
        vocab_size = self.target_info.vocab.vocab_size
        if not prompt:
            raise InvalidArgument("prompt is empty after tokenization")
        bad = next((t for t in prompt if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise InvalidArgument(f"prompt token id {bad} is outside the vocabulary [0, {vocab_size})")
        if 0 < self.config.max_prompt_tokens < len(prompt):
            raise InvalidArgument(
                f"prompt is {len(prompt)} tokens; this server's cap is {self.config.max_prompt_tokens} prompt tokens"
            )
        if len(prompt) >= limits.max_context:
            raise InvalidArgument(
                f"prompt is {len(prompt)} tokens; the target's context is {limits.max_context} tokens"
            )
        if len(prompt) + params.max_new_tokens > limits.max_context:
            raise InvalidArgument(
                f"prompt ({len(prompt)} tokens) + max_new_tokens ({params.max_new_tokens}) exceeds the "
                f"target's context of {limits.max_context} tokens"
            )
        if method.beams:
            if not hasattr(self._target, "beam_verify"):
                raise FailedPrecondition(f"method {method.name!r} needs a target that verifies beams")
            return BeamDecodeLoop(
                session_id=uuid.uuid4().hex,
                target=self._target,
                draft=self._draft,
                method=method,
                params=params,
                prompt=prompt,
                limits=limits,
                eos_token_ids=self.target_info.vocab.eos_token_ids,
            )
        return DecodeLoop(
            session_id=uuid.uuid4().hex,
            target=self._target,
            draft=self._draft,
            method=method,
            params=params,
            prompt=prompt,
            limits=limits,
            eos_token_ids=self.target_info.vocab.eos_token_ids,
            phrase_namespace=self.target_info.vocab.fingerprint,
            colocated=colocated,
            node_share=self._node_share if self.config.step_node_budget else None,
            budget=self._tree_budget(params, method, colocated),
            concurrency=lambda: self._admission.running,
        )
