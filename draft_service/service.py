"""The draft service's worker: per-session drafter state behind :class:`spec_decode.api.DraftAPI`.

A session holds the token history the client sent (its last token is the pending one),
one drafter per drafter name used, the adaptive draft length and a sampling generator.
Clients send only the tokens emitted since their previous call, at ``offset`` = the
history's length; ``offset == 0`` restarts the session with a whole new context.

The Ouroboros drafter's phrase pool outlives sessions: the worker opens one phrase store per
namespace (the target's vocabulary fingerprint) on first use, in process or in Redis
(``phrase_store_url``), shares it across all sessions, and closes it in :meth:`DraftWorker.close`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from draft_service.beam_drafter import HeadBeamDrafter, LMBeamDrafter
from draft_service.drafter import AdaptiveLength, Drafter
from draft_service.hybrid import HybridDrafter
from draft_service.lookahead import DEFAULT_WINDOW, MAX_WINDOW
from draft_service.model_drafter import DEFAULT_DRAFT_TOP_K, MAX_DRAFT_TOP_K, ModelDrafter
from draft_service.ouroboros import OuroborosDrafter
from draft_service.redrafter import ReDrafterDrafter
from phrase_store import PhraseStore, PhraseStoreConfig, PhraseStoreStats, open_store, store_kind
from spec_decode.beam_api import BeamProposal, BeamUpdate
from spec_decode.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from spec_decode.hidden import hidden_from_bytes
from spec_decode.model_thread import model_thread
from spec_decode.models import LoadedModel, load_model, pick_device, pick_dtype
from spec_decode.prompt_lookup import PromptLookupDrafter
from spec_decode.redrafter_checkpoint import load_head, read_checkpoint
from spec_decode.redrafter_head import ReDrafterHead
from spec_decode.sampling import make_generator
from spec_decode.tree import node_depths
from spec_decode.types import EMPTY_TREE, DraftInfo, DraftOptions, ProposeResult, SamplingParams, VocabInfo
from specd_kernels.linear import logits_kernel

log = logging.getLogger(__name__)

PROMPT_LOOKUP = "prompt_lookup"
MODEL = "model"
OUROBOROS = "ouroboros"
REDRAFTER = "redrafter"
HYBRID = "hybrid"  # phrase drafts + ReDrafter beams in one tree (draft_service/hybrid.py)
KNOWN_DRAFTERS = (PROMPT_LOOKUP, MODEL, OUROBOROS, REDRAFTER, HYBRID)
_PHRASE_DRAFTERS = (OUROBOROS, HYBRID)  # drafters that read and feed the phrase pool
MAX_SESSIONS_LIMIT = 1_000_000
MAX_NUM_TOKENS_LIMIT = 256
MAX_PHRASE_NAMESPACES = 64  # phrase stores one worker keeps open (one per target vocabulary)
MAX_BEAM_CONTEXT_TOKENS = 32_768  # over all beam contexts of one ProposeBeams (each beam is one batch row)


@dataclass(frozen=True)
class DraftConfig:
    """Start-up configuration of one draft service. ``draft_model=None``: model-free only.

    ``phrase_store_url``: the Ouroboros phrase pool (None / ``memory://``: embedded in this
    process; ``redis://HOST:PORT/DB``: shared by replicas); ``phrase_max_per_key``,
    ``phrase_max_keys`` and ``phrase_ttl_s`` bound it (see phrase_store/README.md).
    ``lookahead_window``: W, guess positions per level of the lookahead window: the draft LM's
    lookahead decoding, or, without a draft LM, the window that rides in the target's verify pass
    when ``verify_lookahead`` is on (off by default: on the CPU stack it costs more target time
    than it saves, see docs/BENCHMARKS.md).
    """

    draft_model: str | None = None
    device: str = "auto"
    dtype: str | None = None
    max_sessions: int = 256
    default_num_tokens: int = 5
    max_num_tokens: int = 32
    default_draft_top_k: int = DEFAULT_DRAFT_TOP_K
    phrase_store_url: str | None = None
    phrase_max_per_key: int = 16
    phrase_max_keys: int = 65_536
    phrase_ttl_s: float = 86_400.0
    lookahead_window: int = DEFAULT_WINDOW
    verify_lookahead: bool = False  # model-free Ouroboros: let the Jacobi window ride in the target's pass
    redrafter_head: str | None = None  # a ReDrafter head checkpoint directory (enables the redrafter drafter)

    @property
    def phrase_store(self) -> PhraseStoreConfig:
        """Where the phrase pool lives and its limits (not validated)."""
        return PhraseStoreConfig(
            url=self.phrase_store_url,
            max_per_key=self.phrase_max_per_key,
            max_keys=self.phrase_max_keys,
            ttl_s=self.phrase_ttl_s,
        )

    def validate(self) -> DraftConfig:
        """Raise InvalidArgument naming the first bad field; loads nothing."""
        if not 1 <= self.max_sessions <= MAX_SESSIONS_LIMIT:
            limit = MAX_SESSIONS_LIMIT
            raise InvalidArgument(f"max_sessions must be in [1, {limit}], got {self.max_sessions}")
        if not 1 <= self.max_num_tokens <= MAX_NUM_TOKENS_LIMIT:
            limit = MAX_NUM_TOKENS_LIMIT
            raise InvalidArgument(f"max_num_tokens must be in [1, {limit}], got {self.max_num_tokens}")
        if not 1 <= self.default_num_tokens <= self.max_num_tokens:
            raise InvalidArgument(
                f"default_num_tokens must be in [1, max_num_tokens={self.max_num_tokens}], "
                f"got {self.default_num_tokens}"
            )
        if not 1 <= self.default_draft_top_k <= MAX_DRAFT_TOP_K:
            raise InvalidArgument(
                f"default_draft_top_k must be in [1, {MAX_DRAFT_TOP_K}], got {self.default_draft_top_k}"
            )
        self.phrase_store.validate()
        if not 1 <= self.lookahead_window <= MAX_WINDOW:
            raise InvalidArgument(f"lookahead_window must be in [1, {MAX_WINDOW}], got {self.lookahead_window}")
        if self.redrafter_head is not None:
            read_checkpoint(Path(self.redrafter_head))  # a clear error before anything loads
        if self.draft_model is not None and not self.draft_model.strip():
            raise InvalidArgument("draft_model must be a model spec or None, not an empty string")
        try:
            device = torch.device(self.device) if self.device != "auto" else torch.device("cpu")
        except (RuntimeError, ValueError) as exc:
            msg = f"device {self.device!r} is not a torch device (cpu, cuda, cuda:1, auto)"
            raise InvalidArgument(msg) from exc
        pick_dtype(self.dtype, device)
        return self


@dataclass
class _Session:
    history: list[int]
    generator: torch.Generator
    seed: int | None
    drafters: dict[str, Drafter] = field(default_factory=dict)
    adaptive: AdaptiveLength | None = None
    last_drafter: str | None = None
    last_adaptive: bool = False
    last_length: int = 0  # draft length asked of the drafter last time
    last_depth: int = 0  # depth of the tree it returned
    last_size: int = 0  # nodes of the tree it returned


class DraftWorker:
    """In-process :class:`spec_decode.api.DraftAPI`. Thread-safe: one lock serializes all calls."""

    def __init__(self, config: DraftConfig, model: LoadedModel | None = None) -> None:
        self.config = config.validate()
        self.model = model
        self.device = model.device if model is not None else pick_device(config.device)
        self._vocab_limit: int | None = None
        if model is not None:
            embeddings = model.model.get_input_embeddings().num_embeddings
            self._vocab_limit = min(model.vocab.vocab_size, embeddings)
        self.head: ReDrafterHead | None = None
        self.head_vocab: VocabInfo | None = None
        if config.redrafter_head:
            self.head, self.head_vocab = _load_head(Path(config.redrafter_head), config)
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        # Beam sessions (dsbd), least recently used first.
        self._beams: OrderedDict[str, LMBeamDrafter | HeadBeamDrafter] = OrderedDict()
        self._stores: dict[str, PhraseStore] = {}  # namespace (lower case) -> the shared pool
        self._lock = threading.Lock()
        self._model_thread = model_thread()

    @classmethod
    def from_config(cls, config: DraftConfig) -> DraftWorker:
        """Validate ``config`` and load its draft model, if any."""
        config.validate()

        def build() -> DraftWorker:  # on the model thread: one OpenMP team per process (see TargetVerifier)
            model = load_model(config.draft_model, config.device, config.dtype) if config.draft_model else None
            return cls(config, model)

        return model_thread().run(build)

    @property
    def drafters(self) -> tuple[str, ...]:
        """Drafter names this worker can serve (Ouroboros runs with or without a draft model)."""
        names = [PROMPT_LOOKUP, MODEL, OUROBOROS] if self.model is not None else [PROMPT_LOOKUP, OUROBOROS]
        return (*names, REDRAFTER, HYBRID) if self.head is not None else tuple(names)

    def info(self) -> DraftInfo:
        with self._lock:
            active = len(self._sessions)
        return DraftInfo(
            vocab=self.model.vocab if self.model is not None else self.head_vocab,
            drafters=self.drafters,
            device=str(self.device),
            max_sessions=self.config.max_sessions,
            active_sessions=active,
            phrase_store=store_kind(self.config.phrase_store_url),
        )

    def propose(
        self,
        session_id: str,
        drafter: str,
        offset: int,
        tokens: Sequence[int],
        max_nodes: int,
        options: DraftOptions,
        sampling: SamplingParams,
        hidden_state: bytes = b"",
        max_depth: int = 0,
    ) -> ProposeResult:
        """Append ``tokens`` at ``offset`` to the session's history and propose a tree.

        ``hidden_state``: the target's final hidden state at the last accepted position (float16
        bytes), which the ``redrafter`` drafter drafts from. ``max_depth`` (0: none) caps the draft
        length for this call only (the request's last tokens); the session's length is unchanged.
        Runs on the service's single model thread (see :mod:`spec_decode.model_thread`).
        """
        return self._model_thread.run(
            self._propose, session_id, drafter, offset, tokens, max_nodes, options, sampling, hidden_state, max_depth
        )

    def _propose(
        self,
        session_id: str,
        drafter: str,
        offset: int,
        tokens: Sequence[int],
        max_nodes: int,
        options: DraftOptions,
        sampling: SamplingParams,
        hidden_state: bytes = b"",
        max_depth: int = 0,
    ) -> ProposeResult:
        """Append ``tokens`` at ``offset`` to the session's history and propose a tree.

        ``offset == 0`` (re)starts the session with ``tokens`` as the whole context; a
        later call sends only the tokens emitted since the previous call. An offset that
        does not match the session's length raises FailedPrecondition (the caller then
        resends the whole context with offset 0); an unknown session with offset > 0
        raises NotFound.
        """
        new_tokens = self._check_request(session_id, drafter, offset, tokens, max_nodes, sampling)
        length = self._check_length(options)
        if max_depth < 0:
            raise InvalidArgument(f"max_depth must be >= 0 (0 = no cap), got {max_depth}")
        if drafter in _PHRASE_DRAFTERS and not options.phrase_namespace:
            raise InvalidArgument(
                f"the {drafter} drafter needs options.phrase_namespace (the target's vocabulary fingerprint)"
            )
        with self._lock:
            store = self._store_for(options.phrase_namespace) if drafter in _PHRASE_DRAFTERS else None
            known = self._sessions.get(session_id)
            impl = (known.drafters.get(drafter) if known else None) or self._new_drafter(drafter, store)
            impl.configure(options)  # validates the drafter's own knobs before any session changes
            if isinstance(impl, ReDrafterDrafter | HybridDrafter) and hidden_state:
                assert self.head is not None
                hidden = hidden_from_bytes(hidden_state).to(self.head.w.weight.device, self.head.w.weight.dtype)
                impl.set_hidden_state(hidden)  # [E]
            if isinstance(impl, OuroborosDrafter) and store is not None:
                impl.store = store  # a later request may name another namespace
            if isinstance(impl, HybridDrafter) and store is not None:
                impl.phrases.store = store
            session = self._session_at(session_id, offset, sampling)
            session.drafters[drafter] = impl
            session.history.extend(new_tokens)
            self._reseed(session, sampling)
            if options.adaptive:
                if session.adaptive is None:
                    session.adaptive = AdaptiveLength(length, self.config.max_num_tokens)
                length = session.adaptive.length
            start = time.perf_counter()
            tree = EMPTY_TREE
            if max_nodes > 0:
                depth = min(length, max_depth) if max_depth else length  # never deeper than the tokens left
                tree = impl.propose(session.history, depth, max_nodes, sampling, session.generator)
            compute_s = time.perf_counter() - start
            session.last_drafter, session.last_adaptive = drafter, options.adaptive
            session.last_length, session.last_depth = length, max(node_depths(tree.parents), default=0)
            session.last_size = tree.size
            return ProposeResult(tree=tree, context_len=len(session.history), compute_s=compute_s)

    def observe(self, session_id: str, num_draft: int, num_accepted: int, target_tokens: Sequence[int] = ()) -> int:
        """Report acceptance of the last draft (on the model thread); returns the next draft length."""
        return self._model_thread.run(self._observe, session_id, num_draft, num_accepted, target_tokens)

    def _observe(self, session_id: str, num_draft: int, num_accepted: int, target_tokens: Sequence[int]) -> int:
        """Report acceptance of the last draft; returns the draft length used next.

        ``target_tokens`` (optional) is the target's argmax per row of that verify pass: 1 + the
        tree's size ints, row 0 = the pending token, row ``i + 1`` = node ``i``.
        """
        if not 0 <= num_accepted <= num_draft:
            raise InvalidArgument(
                f"need 0 <= num_accepted <= num_draft; got num_accepted={num_accepted}, num_draft={num_draft}"
            )
        rows = [int(t) for t in target_tokens]
        if rows and min(rows) < 0:
            raise InvalidArgument(f"target_tokens must be token ids >= 0, got {min(rows)}")
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                raise NotFound(f"draft session {session_id!r} does not exist (expired or never started)")
            if rows and len(rows) != 1 + session.last_size:
                raise InvalidArgument(
                    f"target_tokens has {len(rows)} entries; the last draft tree of session {session_id!r} "
                    f"has {session.last_size} nodes, so it needs {1 + session.last_size} (one per row)"
                )
            self._sessions.move_to_end(session_id)
            if session.last_drafter is not None:
                # An empty tree (the drafter may not even have been asked) teaches nothing.
                feedback = rows if session.last_size else []
                session.drafters[session.last_drafter].observe(num_draft, num_accepted, feedback)
            if session.last_adaptive and session.adaptive is not None:
                # A tree's accepted path is at most its depth: accepting a whole branch is "full".
                return session.adaptive.update(min(num_draft, session.last_depth), num_accepted)
            return session.last_length or self.config.default_num_tokens

    def propose_beams(
        self,
        session_id: str,
        contexts: Sequence[Sequence[int]],
        updates: Sequence[BeamUpdate],
        beam_scores: Sequence[float],
        depth: int,
        width: int,
        max_nodes: int,
        sampling: SamplingParams,
        draft_top_k: int = 0,
        eos_token_ids: Sequence[int] = (),
        drafter: str = MODEL,
        hidden_states: Sequence[bytes] = (),
    ) -> BeamProposal:
        """Advance a beam session (``contexts`` restart it, else ``updates`` move it) and draft a forest.

        ``drafter``: ``model`` (the draft LM) or ``redrafter`` (the head, from ``hidden_states``, one
        per session beam). See :mod:`draft_service.beam_drafter`. Runs on the service's model thread.
        """
        return self._model_thread.run(
            self._propose_beams,
            session_id,
            contexts,
            updates,
            beam_scores,
            depth,
            width,
            max_nodes,
            sampling,
            draft_top_k,
            eos_token_ids,
            drafter,
            hidden_states,
        )

    def _propose_beams(
        self,
        session_id: str,
        contexts: Sequence[Sequence[int]],
        updates: Sequence[BeamUpdate],
        beam_scores: Sequence[float],
        depth: int,
        width: int,
        max_nodes: int,
        sampling: SamplingParams,
        draft_top_k: int,
        eos_token_ids: Sequence[int],
        drafter: str,
        hidden_states: Sequence[bytes],
    ) -> BeamProposal:
        if not session_id:
            raise InvalidArgument("session_id must not be empty")
        if drafter not in (MODEL, REDRAFTER):
            raise InvalidArgument(f"draft beams come from drafter 'model' or 'redrafter', not {drafter!r}")
        if drafter == MODEL and self.model is None:
            raise FailedPrecondition("draft beams need a draft model; start the draft service with --draft-model")
        if drafter == REDRAFTER and self.head is None:
            raise FailedPrecondition("redrafter beams need a head; start the draft service with --redrafter-head DIR")
        sampling.validate()
        if sampling.greedy:
            raise InvalidArgument("draft beam sampling needs temperature > 0")
        if not 0 <= depth <= self.config.max_num_tokens:
            raise InvalidArgument(f"depth must be in [0, {self.config.max_num_tokens}], got {depth}")
        if not 1 <= width <= 64 or max_nodes < 0:
            raise InvalidArgument(f"need 1 <= width <= 64 and max_nodes >= 0, got width {width}, max_nodes {max_nodes}")
        top_k = draft_top_k or self.config.default_draft_top_k
        if not 1 <= top_k <= MAX_DRAFT_TOP_K:
            raise InvalidArgument(f"draft_top_k must be in [0, {MAX_DRAFT_TOP_K}] (0 = default), got {draft_top_k}")
        if len(contexts) > 64 or len(updates) > 64 or len(beam_scores) > 64 or len(eos_token_ids) > 64:
            raise InvalidArgument("at most 64 beams (contexts, updates, beam_scores) and 64 eos_token_ids")
        if sum(len(c) for c in contexts) > MAX_BEAM_CONTEXT_TOKENS:
            raise InvalidArgument(f"beam contexts hold more than {MAX_BEAM_CONTEXT_TOKENS} tokens in all")
        if not all(math.isfinite(s) for s in beam_scores):
            raise InvalidArgument("beam_scores must be finite")
        for seq in [*contexts, *(u.tokens for u in updates)]:
            self._check_request(session_id, drafter, 0, seq, max_nodes, sampling)  # token ids in the vocabulary
        kind = LMBeamDrafter if drafter == MODEL else HeadBeamDrafter
        with self._lock:
            beams = self._beams.get(session_id)
            if contexts:
                if not isinstance(beams, kind):
                    while len(self._beams) >= self.config.max_sessions:
                        self._beams.popitem(last=False)
                    generator = make_generator(_draft_seed(sampling.seed))
                    if drafter == MODEL:
                        assert self.model is not None
                        beams = LMBeamDrafter(self.model.model, self.device, generator)
                    else:
                        assert self.head is not None
                        beams = HeadBeamDrafter(self.head, generator)
                beams.restart(contexts)
                self._beams[session_id] = beams
            elif beams is None:
                raise NotFound(f"draft beam session {session_id!r} does not exist; resend the beam contexts")
            elif not isinstance(beams, kind):
                raise FailedPrecondition(f"draft beam session {session_id!r} drafts with another drafter")
            else:
                beams.advance(updates)
            self._beams.move_to_end(session_id)
            start = time.perf_counter()
            shape = (depth, width, max_nodes, sampling, top_k, eos_token_ids)
            if isinstance(beams, HeadBeamDrafter):
                forest = beams.draft(hidden_states, beam_scores, *shape)
            else:
                forest = beams.draft(beam_scores, *shape)
            return BeamProposal(forest, time.perf_counter() - start)

    def release(self, session_id: str) -> bool:
        with self._lock:
            session = self._sessions.pop(session_id, None)
            beams = self._beams.pop(session_id, None)
        if session is None:
            return beams is not None
        _free(session)
        return True

    def phrase_store_stats(self) -> dict[str, PhraseStoreStats]:
        """Counters of each open phrase store by namespace (read by the metrics collector;
        a Redis store asks the server for its sizes, outside the worker's lock)."""
        with self._lock:
            stores = dict(self._stores)
        return {namespace: store.stats() for namespace, store in stores.items()}

    def close(self) -> None:
        """Close the phrase stores (the pool itself lives on in Redis). Idempotent."""
        with self._lock:
            stores, self._stores = list(self._stores.values()), {}
        for store in stores:
            store.close()

    # -- helpers (validation happens before any state changes) --

    def _check_request(
        self,
        session_id: str,
        drafter: str,
        offset: int,
        tokens: Sequence[int],
        max_nodes: int,
        sampling: SamplingParams,
    ) -> list[int]:
        if not session_id:
            raise InvalidArgument("session_id must not be empty")
        if drafter not in KNOWN_DRAFTERS:
            raise InvalidArgument(f"unknown drafter {drafter!r}; known drafters: {', '.join(KNOWN_DRAFTERS)}")
        if drafter == MODEL and self.model is None:
            raise FailedPrecondition("this draft service has no draft model; start it with --draft-model")
        if drafter in (REDRAFTER, HYBRID) and self.head is None:
            raise FailedPrecondition(
                f"the {drafter} drafter needs a ReDrafter head; start the draft service with --redrafter-head DIR"
            )
        if offset < 0:
            raise InvalidArgument(f"offset must be >= 0, got {offset}")
        if max_nodes < 0:
            raise InvalidArgument(f"max_nodes must be >= 0, got {max_nodes}")
        sampling.validate()
        new_tokens = [int(t) for t in tokens]
        if new_tokens:
            low, high = min(new_tokens), max(new_tokens)
            if low < 0 or (self._vocab_limit is not None and high >= self._vocab_limit):
                bad = low if low < 0 else high
                limit = f"[0, {self._vocab_limit})" if self._vocab_limit is not None else ">= 0"
                raise InvalidArgument(f"token id {bad} is outside the draft vocabulary {limit}")
        return new_tokens

    def _check_length(self, options: DraftOptions) -> int:
        length = options.num_tokens or self.config.default_num_tokens
        if not 1 <= length <= self.config.max_num_tokens:
            raise InvalidArgument(
                f"num_tokens must be in [0, {self.config.max_num_tokens}] (0 = default "
                f"{self.config.default_num_tokens}), got {options.num_tokens}"
            )
        return length

    def _session_at(self, session_id: str, offset: int, sampling: SamplingParams) -> _Session:
        """The session to append to at ``offset`` (created or restarted when ``offset == 0``)."""
        session = self._sessions.get(session_id)
        if offset == 0:
            if session is None:
                self._evict_for_one()
                session = _Session([], make_generator(_draft_seed(sampling.seed)), sampling.seed)
                self._sessions[session_id] = session
            else:  # restart: drafters keep their caches, they re-check them against the context
                session.history = []
                session.generator = make_generator(_draft_seed(sampling.seed))
                session.seed = sampling.seed
                session.adaptive = None
                session.last_drafter, session.last_length, session.last_depth, session.last_size = None, 0, 0, 0
        elif session is None:
            raise NotFound(
                f"draft session {session_id!r} does not exist (expired or never started); "
                "resend the whole context with offset 0"
            )
        elif offset != len(session.history):
            raise FailedPrecondition(
                f"draft session {session_id!r} holds {len(session.history)} tokens but the request "
                f"appends at offset {offset}; resend the whole context with offset 0"
            )
        self._sessions.move_to_end(session_id)
        return session

    def _reseed(self, session: _Session, sampling: SamplingParams) -> None:
        if sampling.seed != session.seed:
            session.generator = make_generator(_draft_seed(sampling.seed))
            session.seed = sampling.seed

    def _evict_for_one(self) -> None:
        while len(self._sessions) >= self.config.max_sessions:
            evicted_id, evicted = self._sessions.popitem(last=False)
            _free(evicted)
            log.info(
                "evicted draft session %r (least recently used; max_sessions=%d)",
                evicted_id,
                self.config.max_sessions,
            )

    def _new_drafter(self, name: str, store: PhraseStore | None = None) -> Drafter:
        if name == MODEL:
            assert self.model is not None  # checked by _check_request
            return ModelDrafter(self.model.model, self.device, self.config.default_draft_top_k)
        if name == OUROBOROS:
            assert store is not None  # opened by propose
            model = None
            if self.model is not None:
                model = ModelDrafter(self.model.model, self.device, self.config.default_draft_top_k)
            return OuroborosDrafter(
                store, model, window=self.config.lookahead_window, verify_lookahead=self.config.verify_lookahead
            )
        if name == REDRAFTER:
            assert self.head is not None  # checked by _check_request
            return ReDrafterDrafter(self.head)
        if name == HYBRID:
            assert self.head is not None and store is not None  # checked by _check_request, opened by propose
            phrases = OuroborosDrafter(
                store, None, window=self.config.lookahead_window, verify_lookahead=self.config.verify_lookahead
            )
            return HybridDrafter(phrases, ReDrafterDrafter(self.head))
        return PromptLookupDrafter()

    def _store_for(self, namespace: str) -> PhraseStore:
        """The shared phrase store of ``namespace``, opened on first use (caller holds the lock)."""
        key = namespace.lower()
        store = self._stores.get(key)
        if store is None:
            if len(self._stores) >= MAX_PHRASE_NAMESPACES:
                raise ResourceExhausted(
                    f"this draft service already serves {MAX_PHRASE_NAMESPACES} phrase namespaces "
                    "(one per target vocabulary)"
                )
            store = open_store(self.config.phrase_store, namespace)
            self._stores[key] = store
        return store


def _draft_seed(seed: int | None) -> int | None:
    """The draft's stream differs from the target's, which is seeded with ``seed`` itself."""
    return None if seed is None else seed + 1


def _free(session: _Session) -> None:
    for impl in session.drafters.values():
        if isinstance(impl, ModelDrafter | OuroborosDrafter | ReDrafterDrafter):
            impl.reset()


def _load_head(directory: Path, config: DraftConfig) -> tuple[ReDrafterHead, VocabInfo]:
    """The head of ``directory`` over its target's embedding and LM head (the rest is dropped)."""
    checkpoint = read_checkpoint(directory)
    target = load_model(checkpoint.target, config.device, config.dtype)
    if checkpoint.vocab_fingerprint and checkpoint.vocab_fingerprint != target.vocab.fingerprint:
        raise FailedPrecondition(
            f"ReDrafter head {directory} was trained on vocabulary {checkpoint.vocab_fingerprint}, "
            f"but {checkpoint.target!r} has {target.vocab.fingerprint}"
        )
    embedding = target.model.get_input_embeddings().weight.detach()  # [V, E]
    lm_head = target.model.get_output_embeddings().weight.detach()  # [V, E]
    head = load_head(directory, embedding, lm_head)
    head.use_logits_kernel(logits_kernel(head.lm_head))  # q8 on a CPU: several times torch's speed
    return head, target.vocab
