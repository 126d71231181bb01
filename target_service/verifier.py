"""The target service's domain object: :class:`spec_decode.api.TargetAPI` over a tree engine.

One verify call: validate the tree and the context budget (before touching the session),
score ``[pending] + tree`` in one forward pass, accept (greedy argmax walk or recursive
rejection sampling, :mod:`spec_decode.acceptance`), commit the pending token and the
accepted path to the KV cache, and make the recovered/bonus token the new pending one.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spec_decode.acceptance import accept_greedy, accept_sampling
from spec_decode.beam_api import BeamVerifyResult
from spec_decode.beams import BeamParams
from spec_decode.errors import FailedPrecondition, InvalidArgument
from spec_decode.forest import BeamForest
from spec_decode.hidden import hidden_bytes
from spec_decode.model_thread import model_thread
from spec_decode.models import LoadedModel, load_model
from spec_decode.prompt_lookup import PromptLookupDrafter
from spec_decode.redrafter_checkpoint import load_head, read_checkpoint
from spec_decode.redrafter_head import ReDrafterHead, head_tree
from spec_decode.sampling import make_generator, warp_probs
from spec_decode.tree import validate_tree
from spec_decode.types import (
    EMPTY_TREE,
    ColocatedDraft,
    DraftOptions,
    DraftTree,
    PrefillResult,
    SamplingParams,
    TargetInfo,
    TargetLimits,
    VerifyResult,
)
from specd_kernels.linear import WEIGHT_FORMATS, LinearKernel, logits_kernel, resolve_format
from target_service.batching import PassBatcher, PassWork, PrefillJob, VerifyCall
from target_service.beam_step import beam_step
from target_service.engine import CUDA_GRAPH_MODES, ENGINE_KINDS, build_engine
from target_service.prefix_cache import PrefixCache
from target_service.sessions import Session, SessionStore

PREFIX_BLOCK = 8  # prompt tokens per prefix-cache block (SmolLM2's chat template's system prompt: 3 blocks)


@dataclass(frozen=True)
class TargetConfig:
    """Everything the target service needs to start; validated before the model loads.

    ``max_context`` is clipped to the model's usable positions at load time.
    """

    model: str = "smollm2"
    device: str | None = None  # "cpu", "cuda", "cuda:1"; None/"auto" picks
    dtype: str | None = None  # "float32", "bfloat16", ...; None/"auto" picks per device
    max_sessions: int = 64
    max_tree_nodes: int = 64
    max_context: int = 2048
    max_draft_top_k: int = 64
    max_kv_bytes: int = 0  # KV memory budget over all sessions (0 = none); idle sessions evicted LRU first
    max_batch: int = 16  # verify calls of different sessions scored in one forward pass (1 = no batching)
    batch_window_ms: float = 10.0  # longest wait for recently active sessions to join a batch
    prefill_chunk: int = 128  # prompt tokens fed per pass, beside verify calls (0 = a whole prompt per pass)
    prefix_cache_mb: int = 64  # KV of prompt prefixes kept for the next prompts that start alike (0 = off)
    engine: str = "auto"  # "native" (specd's Llama-family forward), "hf" (transformers), "auto"
    weight_format: str | None = None  # native engine: "dense", "packed" (MKL-prepacked fp32), None/"auto"
    cuda_graphs: str = "auto"  # native engine: "on"/"auto" replay one-session passes as CUDA graphs on CUDA
    argmax_screen: bool = True  # native engine, q8 LM head: greedy argmax from the exact int8 screen
    redrafter_head: str | None = None  # a ReDrafter head run here (co-located drafting), over this model

    def validate(self) -> TargetConfig:
        if not self.model:
            raise InvalidArgument("target model spec is empty")
        for name in ("max_sessions", "max_tree_nodes", "max_context", "max_draft_top_k", "max_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise InvalidArgument(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.max_kv_bytes, int) or self.max_kv_bytes < 0:
            raise InvalidArgument(f"max_kv_bytes must be a non-negative integer, got {self.max_kv_bytes!r}")
        if not isinstance(self.prefix_cache_mb, int) or self.prefix_cache_mb < 0:
            raise InvalidArgument(f"prefix_cache_mb must be a non-negative integer, got {self.prefix_cache_mb!r}")
        if not isinstance(self.prefill_chunk, int) or self.prefill_chunk < 0:
            raise InvalidArgument(f"prefill_chunk must be a non-negative integer, got {self.prefill_chunk!r}")
        if not isinstance(self.batch_window_ms, int | float) or not 0 <= self.batch_window_ms <= 1000:
            raise InvalidArgument(f"batch_window_ms must be within [0, 1000], got {self.batch_window_ms!r}")
        if self.engine not in ENGINE_KINDS:
            raise InvalidArgument(f"unknown engine {self.engine!r}; use one of {', '.join(ENGINE_KINDS)}")
        if self.weight_format not in (None, *WEIGHT_FORMATS):
            raise InvalidArgument(
                f"unknown weight format {self.weight_format!r}; use one of {', '.join(WEIGHT_FORMATS)}"
            )
        if self.redrafter_head is not None:
            read_checkpoint(Path(self.redrafter_head))  # a clear error before the model loads
        if self.cuda_graphs not in CUDA_GRAPH_MODES:
            raise InvalidArgument(f"cuda_graphs must be one of {', '.join(CUDA_GRAPH_MODES)}, got {self.cuda_graphs!r}")
        return self


@dataclass(frozen=True)
class TargetStats:
    """Counters of a verifier at one moment (read by the metrics collector)."""

    active_sessions: int
    kv_bytes: int
    forward_passes: int  # verify forward passes run (a batch counts once)
    verify_calls: int  # verify calls served by them
    batch_sizes: dict[int, int]  # calls per pass -> passes
    evictions: int
    prefill_chunks: int = 0  # prompt chunks fed (a prompt fed in k passes counts k)
    mixed_passes: int = 0  # verify passes that also fed a prompt chunk
    prefix_cache_tokens: int = 0  # prompt tokens whose KV came from the prefix cache, not a pass
    prefix_cache_bytes: int = 0  # KV memory the prefix cache holds
    screen_rows: int = 0  # greedy rows whose argmax came from the int8 screen
    screen_candidates: int = 0  # outputs the screen rescored exactly
    screen_fallbacks: int = 0  # screened rows that needed the full exact LM head


class TargetVerifier:
    """Holds target-model sessions and verifies draft trees (implements ``TargetAPI``)."""

    def __init__(self, loaded: LoadedModel, config: TargetConfig) -> None:
        config.validate()
        self.loaded = loaded
        self.engine = build_engine(
            loaded.model,
            config.engine,
            config.weight_format,
            config.max_context,
            cuda_graphs=config.cuda_graphs,
            argmax_screen=config.argmax_screen,
        )
        # greedy calls ask for their rows' argmax only (the engine's exact screen computes it)
        self._argmax_only = getattr(self.engine, "screen", None) is not None
        self.config = dataclasses.replace(config, max_context=min(config.max_context, self.engine.max_positions))
        self.sessions = SessionStore(
            self.config.max_sessions, self.config.max_context, max_kv_bytes=self.config.max_kv_bytes
        )
        self._kv_bytes_per_token = _kv_bytes_per_token(loaded.model, self.engine.dtype)
        self._hidden_size = int(loaded.model.config.get_text_config().hidden_size)
        self._model_thread = model_thread()
        self._feeds_prompts = hasattr(self.engine, "score_trees_and_feed")  # prompt chunks in tree passes
        self._prefix: PrefixCache | None = None  # engines that can copy KV rows out and back
        if self.config.prefix_cache_mb and hasattr(self.engine, "kv_rows"):
            self._prefix = PrefixCache(PREFIX_BLOCK, self.config.prefix_cache_mb * 2**20)
        self._batcher = PassBatcher(
            self._run_pass,
            self.config.max_batch,
            self.config.batch_window_ms / 1e3,
            prefill_chunk=self.config.prefill_chunk,
            mix=self._feeds_prompts,
        )
        self._stats_lock = threading.Lock()
        self._prefill_chunks = 0
        self._mixed_passes = 0
        self._passes = 0
        self._verify_calls = 0
        self._batch_sizes: collections.Counter[int] = collections.Counter()
        self._head = self._load_head(self.config.redrafter_head) if self.config.redrafter_head else None

    def _load_head(self, directory: str) -> ReDrafterHead:
        """The co-located ReDrafter head over this model's own embedding and LM head (no second copy)."""
        checkpoint = read_checkpoint(Path(directory))
        if checkpoint.vocab_fingerprint and checkpoint.vocab_fingerprint != self.loaded.vocab.fingerprint:
            raise FailedPrecondition(
                f"ReDrafter head {directory} was trained on vocabulary {checkpoint.vocab_fingerprint}, but this "
                f"target ({self.config.model}) has {self.loaded.vocab.fingerprint}"
            )
        if checkpoint.config.hidden != self._hidden_size:
            raise FailedPrecondition(
                f"ReDrafter head {directory} drafts from {checkpoint.config.hidden}-wide hidden states; this "
                f"target's are {self._hidden_size}"
            )
        model = self.loaded.model
        head = load_head(
            Path(directory), model.get_input_embeddings().weight.detach(), model.get_output_embeddings().weight.detach()
        )
        return head.use_logits_kernel(self._head_logits_kernel(head))

    def _head_logits_kernel(self, head: ReDrafterHead) -> LinearKernel | None:
        """The kernel the co-located head drafts its logits with: the engine's own LM-head kernel where
        it is the one :func:`logits_kernel` would build (full vocabulary, same format), so the head adds
        no second copy of the LM head (SmolLM2's ``q8`` copy is 28 MB and a second exact-code check at
        start-up); else a kernel of its own (a sub-vocabulary head, or an engine in ``q8a8``, whose
        int8 activations would change the head's beams from what a draft service drafts)."""
        weights = getattr(self.engine, "weights", None)  # the native engine's frozen kernels
        wanted = resolve_format(None, head.lm_head.device, head.lm_head.dtype)
        if (
            wanted != "dense"
            and weights is not None
            and weights.fmt == wanted
            and not head.config.vocab_ids
            and weights.lm_head.out_features == head.lm_head.shape[0]
        ):
            kernel: LinearKernel = weights.lm_head
            return kernel
        return logits_kernel(head.lm_head)

    def _colocated_tree(
        self, session: Session, hidden: torch.Tensor | None, token: int, spec: ColocatedDraft
    ) -> DraftTree:
        """The next tree, drafted here right after the pass (``token``: the new pending token)."""
        if spec.drafter == "prompt_lookup":
            return self._lookup_tree(session, spec)
        return self._head_tree(hidden, token, spec)

    def _head_tree(self, hidden: torch.Tensor | None, token: int, spec: ColocatedDraft) -> DraftTree:
        """The co-located head's tree after ``token`` from ``hidden`` ([E]); empty without a state."""
        if hidden is None or spec.max_nodes <= 0 or self._head is None:
            return EMPTY_TREE
        return head_tree(spec.tree, self._head, hidden, token, spec.width, spec.length, spec.max_nodes, spec.top_k)

    @staticmethod
    def _lookup_tree(session: Session, spec: ColocatedDraft) -> DraftTree:
        """Prompt lookup over the session's own tokens (its n-gram index grows with them)."""
        if session.lookup is None:
            session.lookup = PromptLookupDrafter()
        session.lookup.configure(
            DraftOptions(max_ngram=spec.max_ngram, min_ngram=spec.min_ngram, num_branches=spec.width)
        )
        return session.lookup.propose(session.tokens, spec.length, spec.max_nodes, session.sampling, None)

    def _check_colocated_draft(self, spec: ColocatedDraft | None) -> None:
        if spec is None:
            return
        spec.validate()
        if spec.drafter == "redrafter" and self._head is None:
            raise FailedPrecondition(
                "this target service has no co-located draft head; start it with --redrafter-head DIR "
                "(or draft in a draft service)"
            )

    @classmethod
    def from_config(cls, config: TargetConfig) -> TargetVerifier:
        """Validate ``config`` and load its model.

        Loading and weight packing run on the model thread too: a second thread that ever ran
        torch kernels keeps its own OpenMP team, and two teams on two cores made every pass
        about twice as slow (measured: 22 ms -> 47 ms for a SmolLM2 decode step).
        """
        config.validate()
        return model_thread().run(lambda: cls(load_model(config.model, config.device, config.dtype), config))

    # ---- TargetAPI ----------------------------------------------------------------

    def info(self) -> TargetInfo:
        cfg = self.config
        return TargetInfo(
            vocab=self.loaded.vocab,
            device=str(self.engine.device),
            dtype=str(self.engine.dtype).removeprefix("torch."),
            limits=TargetLimits(cfg.max_sessions, cfg.max_tree_nodes, cfg.max_context, cfg.max_draft_top_k),
            active_sessions=len(self.sessions),
            hidden_size=self._hidden_size,
            draft_head=self._head is not None,
            colocated_drafters=("prompt_lookup", *(("redrafter",) if self._head is not None else ())),
        )

    def prefill(
        self,
        session_id: str,
        prompt_tokens: Sequence[int],
        sampling: SamplingParams,
        return_hidden_state: bool = False,
        colocated_draft: ColocatedDraft | None = None,
    ) -> PrefillResult:
        """Create ``session_id`` and feed the prompt; its last token stays pending.

        With ``return_hidden_state`` the result carries the final hidden state before the pending
        token (float16 bytes; empty for a one-token prompt); with ``colocated_draft`` the co-located
        head's first tree (``next_tree``).
        """
        self._check_colocated_draft(colocated_draft)
        if not session_id:
            raise InvalidArgument("session id is empty")
        tokens = self._check_prompt(prompt_tokens)
        sampling.validate()
        job = PrefillJob(session_id, tokens, (sampling, return_hidden_state, colocated_draft))
        if self._batcher.submit_prefill(job):  # fed in chunks beside verify calls (target_service.batching)
            self._model_thread.post(self._drain)
        return job.future.result()

    def verify(
        self,
        session_id: str,
        tree: DraftTree,
        return_target_tokens: bool = False,
        return_hidden_state: bool = False,
        colocated_draft: ColocatedDraft | None = None,
    ) -> VerifyResult:
        """Score ``tree`` in one pass, accept, commit the pending token + accepted path.

        With ``return_target_tokens`` the result carries the target's argmax per row (1 + N ints);
        with ``return_hidden_state`` the final hidden state at the last accepted row (float16 bytes).
        Concurrent calls of different sessions are batched into one forward pass (up to
        ``max_batch``, see :mod:`target_service.batching`); the result of each is exactly what a
        pass of its own would give. Runs on the service's single model thread.
        """
        self._check_colocated_draft(colocated_draft)
        call = VerifyCall(session_id, tree, return_target_tokens, return_hidden_state, colocated_draft)
        if self._batcher.submit(call):  # no drain pending: queue one (see target_service.batching)
            self._model_thread.post(self._drain)  # runs at once when called on the model thread
        # Wait for this call's result, not for a drain: whichever drain takes the call completes it.
        return call.future.result()

    def beam_verify(
        self,
        session_id: str,
        forest: BeamForest,
        params: BeamParams,
        eos_token_ids: Sequence[int],
        return_hidden_states: bool = False,
        tokens_left: int = 0,
    ) -> BeamVerifyResult:
        """One beam step (beam-sample, DSBD) of a prefilled session: see :mod:`target_service.beam_step`.

        The forest of all beams is scored in one pass of its own (beam sessions do not join the
        verify batches of other sessions). Runs on the service's single model thread.
        """
        return self._model_thread.run(
            self._beam_verify, session_id, forest, params, tuple(eos_token_ids), return_hidden_states, tokens_left
        )

    def _beam_verify(
        self,
        session_id: str,
        forest: BeamForest,
        params: BeamParams,
        eos_token_ids: tuple[int, ...],
        return_hidden_states: bool,
        tokens_left: int,
    ) -> BeamVerifyResult:
        with self.sessions.checkout(session_id) as session:
            result = beam_step(
                self.engine,
                session,
                forest,
                params,
                eos_token_ids,
                max_nodes_per_beam=self.config.max_tree_nodes,
                max_context=self.config.max_context,
                return_hidden_states=return_hidden_states,
                max_top_k=self.config.max_draft_top_k,
                tokens_left=tokens_left,
            )
        with self._stats_lock:
            self._passes += 1
            self._verify_calls += 1
            self._batch_sizes[1] += 1
        if self.config.max_kv_bytes:
            self.sessions.enforce_kv_budget()
        return result

    def stats(self) -> TargetStats:
        """A snapshot of the verifier's counters (for metrics)."""
        screen = getattr(self.engine, "screen_counts", None)
        with self._stats_lock:
            return TargetStats(
                active_sessions=len(self.sessions),
                kv_bytes=self.sessions.total_kv_bytes(),
                forward_passes=self._passes,
                verify_calls=self._verify_calls,
                batch_sizes=dict(self._batch_sizes),
                evictions=self.sessions.evictions,
                prefill_chunks=self._prefill_chunks,
                mixed_passes=self._mixed_passes,
                prefix_cache_tokens=self._prefix.hit_tokens if self._prefix else 0,
                prefix_cache_bytes=self._prefix.bytes if self._prefix else 0,
                screen_rows=screen.rows if screen else 0,
                screen_candidates=screen.candidates if screen else 0,
                screen_fallbacks=screen.fallbacks if screen else 0,
            )

    def _start_prefill(self, job: PrefillJob) -> None:
        """Create the job's session (evicting idle ones for room); it stays busy and locked until
        the prompt is in. Raises what :meth:`SessionStore.add` raises."""
        sampling, _, _ = job.options
        session = Session(
            session_id=job.session_id,
            cache=self.engine.new_cache(),
            sampling=sampling,
            generator=make_generator(sampling.seed, self.engine.device),
        )
        session.lock.acquire()  # held before it is visible: a racing verify waits for the prefill
        try:
            job.evicted = self.sessions.add(session, self._kv_bytes_per_token * len(job.tokens))
        except BaseException:
            session.lock.release()
            raise
        job.session = session
        if self._prefix is not None:  # leave one row to compute: its state is the prefill's hidden row
            blocks = self._prefix.lookup(job.tokens, len(job.tokens) - 2)
            if blocks:
                self.engine.append_kv_rows(session.cache, [b.data for b in blocks])  # type: ignore[attr-defined]
                job.fed = len(blocks) * self._prefix.block

    def _abandon_prefill(self, job: PrefillJob, exc: BaseException) -> None:
        """A failed prompt: its session goes, its caller gets ``exc``."""
        session = job.session
        if session is not None:
            self.sessions.remove(session)
            self.sessions.finish(session)
            session.lock.release()
            job.session = None
        if not job.future.done():
            job.future.set_exception(exc)

    def _finish_prefill(self, job: PrefillJob) -> None:
        """The prompt is in: the session goes live and the caller gets its :class:`PrefillResult`."""
        session = job.session
        _, return_hidden_state, colocated_draft = job.options
        try:
            if self._prefix is not None and len(job.tokens) > 1:
                cache, engine = session.cache, self.engine
                self._prefix.insert(job.tokens[:-1], lambda lo, hi: engine.kv_rows(cache, lo, hi))  # type: ignore[attr-defined]
            session.pending_token = job.tokens[-1]
            session.prefix_len = len(job.tokens) - 1
            session.tokens = list(job.tokens)
            session.kv_bytes = self.engine.kv_bytes(session.cache)
            if self.config.max_kv_bytes:
                job.evicted += self.sessions.enforce_kv_budget()
        except BaseException as exc:
            self._abandon_prefill(job, exc)
            return
        finally:
            if job.session is not None:
                self.sessions.finish(session)
                session.lock.release()
        hidden = b""
        need_rows = return_hidden_state or (colocated_draft is not None and colocated_draft.drafter == "redrafter")
        rows = self.engine.hidden_rows(session.cache) if need_rows and len(job.tokens) > 1 else None
        if return_hidden_state and rows is not None:
            hidden = hidden_bytes(rows[-1])
        next_tree = None
        try:
            if colocated_draft is not None:
                hidden_row = None if rows is None else rows[-1]
                next_tree = self._colocated_tree(session, hidden_row, session.pending_token, colocated_draft)
        except BaseException as exc:
            job.future.set_exception(exc)
            return
        job.future.set_result(PrefillResult(session.context_len, job.compute_s, job.evicted, hidden, next_tree))

    def _drain(self) -> None:
        """One pass on the model thread; work left queued gets the next drain, queued behind
        whatever else waits for the model thread (beam steps), so nothing starves."""
        if self._batcher.drain():
            self._model_thread.enqueue(self._drain)

    def _run_pass(self, work: PassWork) -> None:
        """One forward pass over the trees of ``work.calls`` (distinct sessions) and its prompt
        chunks; completes every call and every prompt fed to its end.

        A call that fails validation fails alone; a failed forward pass fails everything in it and
        leaves each verify session exactly as it was (a prompt's session is dropped).
        """
        with contextlib.ExitStack() as held:
            ready: list[tuple[VerifyCall, Session]] = []
            for call in work.calls:
                try:
                    validate_tree(
                        call.tree,
                        vocab_size=self.engine.vocab_size,
                        max_nodes=self.config.max_tree_nodes,
                        max_top_k=self.config.max_draft_top_k,
                    )
                    session = held.enter_context(self.sessions.checkout(call.session_id))
                    self.sessions.check_tree(session.prefix_len, call.tree.size)
                except BaseException as exc:
                    call.future.set_exception(exc)
                    continue
                ready.append((call, session))
            chunks: list[tuple[PrefillJob, int]] = []  # new sessions after the checkouts: never evict those
            for job, n in work.chunks:
                if job.session is None:
                    try:
                        self._start_prefill(job)
                    except BaseException as exc:
                        self._abandon_prefill(job, exc)
                        continue
                chunks.append((job, min(n, job.remaining)))  # the prefix cache may have fed some already
            feeding = [(job, n) for job, n in chunks if n > 0]
            if not ready and not feeding:
                for job, _ in chunks:  # one-token prompts: nothing to feed
                    self._finish_prefill(job)
                return
            start = time.perf_counter()
            try:
                items = [
                    (s.cache, s.pending_token, torch.tensor(c.tree.parents, dtype=torch.long), c.tree.tokens)
                    for c, s in ready
                ]
                greedy = [s.sampling.greedy for _, s in ready] if self._argmax_only else []
                if feeding and self._feeds_prompts:
                    prompts = [(job.session.cache, job.tokens[job.fed : job.fed + n]) for job, n in feeding]
                    all_logits = self.engine.score_trees_and_feed(items, prompts, greedy)  # type: ignore[attr-defined]
                elif feeding:  # an engine that feeds prompts alone: the batcher sent one whole prompt
                    ((job, _),) = feeding
                    self.engine.prefill(job.session.cache, job.tokens)
                    all_logits = []
                else:
                    all_logits = self.engine.score_trees(items, greedy)  # [1 + N_i, V] per call (greedy: [1 + N_i])
                if self.engine.device.type == "cuda":  # kernels run async: count them as compute, not network
                    torch.cuda.synchronize(self.engine.device)
            except BaseException as exc:
                for call, session in ready:
                    self.engine.truncate(session.cache, session.prefix_len)  # leave each session as it was
                    call.future.set_exception(exc)
                for job, _ in chunks:
                    self._abandon_prefill(job, exc)
                return
            compute_s = time.perf_counter() - start
            with self._stats_lock:
                self._prefill_chunks += len(feeding)
                if ready:
                    self._passes += 1
                    self._verify_calls += len(ready)
                    self._batch_sizes[len(ready)] += 1
                    self._mixed_passes += bool(feeding)
            results: list[tuple[VerifyCall, VerifyResult]] = []
            for (call, session), logits in zip(ready, all_logits, strict=True):
                try:
                    results.append((call, self._accept_and_commit(session, call, logits, compute_s)))
                except BaseException as exc:
                    self.engine.truncate(session.cache, session.prefix_len)
                    call.future.set_exception(exc)
        for job, n in chunks:
            job.fed += n
            job.compute_s += compute_s
            if job.remaining == 0:
                self._finish_prefill(job)
        # The batch's sessions are idle again: now idle sessions may go if KV memory is over budget.
        if self.config.max_kv_bytes:
            self.sessions.enforce_kv_budget()
        for call, result in results:
            call.future.set_result(result)

    def _accept_and_commit(
        self, session: Session, call: VerifyCall, logits: torch.Tensor, compute_s: float
    ) -> VerifyResult:
        """Acceptance rule on this call's logits ``[1 + N, V]`` (a greedy call: their argmax ``[1 + N]``,
        from the engine's screen), then commit pending + accepted path."""
        tree = call.tree
        argmax = (logits if logits.dim() == 1 else logits.argmax(dim=-1)).tolist()  # [1+N]
        if session.sampling.greedy:
            acceptance = accept_greedy(argmax, tree)
        else:
            probs = warp_probs(logits, session.sampling)  # [1+N, V] float32
            acceptance = accept_sampling(probs, tree, session.generator)
        keep_rows = [0, *(node + 1 for node in acceptance.path)]
        self.engine.commit(session.cache, session.prefix_len, keep_rows)
        session.prefix_len += len(keep_rows)
        session.pending_token = acceptance.next_token
        session.tokens += [*acceptance.tokens, acceptance.next_token]
        session.kv_bytes = self.engine.kv_bytes(session.cache)
        target_tokens = tuple(argmax) if call.return_target_tokens else ()
        hidden = b""
        row = None
        if call.return_hidden_state or (
            call.colocated_draft is not None and call.colocated_draft.drafter == "redrafter"
        ):
            rows = self.engine.hidden_rows(session.cache)  # [1 + N, E] of this pass
            if rows is not None:
                row = rows[acceptance.path[-1] + 1 if acceptance.path else 0]  # [E], its output: next_token
        if call.return_hidden_state and row is not None:
            hidden = hidden_bytes(row)
        next_tree = None
        if call.colocated_draft is not None:  # its time counts as this call's compute (it runs on the model thread)
            start = time.perf_counter()
            next_tree = self._colocated_tree(session, row, acceptance.next_token, call.colocated_draft)
            compute_s += time.perf_counter() - start
        return VerifyResult(acceptance, session.context_len, compute_s, target_tokens, hidden, next_tree)

    def release(self, session_id: str) -> bool:
        """Free the session; False when it did not exist."""
        self._batcher.forget(session_id)
        return self.sessions.release(session_id)

    # ---- phases -------------------------------------------------------------------

    def _check_prompt(self, prompt_tokens: Sequence[int]) -> list[int]:
        tokens = [int(t) for t in prompt_tokens]
        if not tokens:
            raise InvalidArgument("prompt is empty")
        vocab = self.engine.vocab_size
        for i, tok in enumerate(tokens):
            if not 0 <= tok < vocab:
                raise InvalidArgument(f"prompt token {i}: id {tok} is outside the vocabulary [0, {vocab})")
        self.sessions.check_prompt(len(tokens))
        return tokens


def _kv_bytes_per_token(model: Any, dtype: torch.dtype) -> int:
    """Bytes of keys and values one token occupies in every layer."""
    text = model.config.get_text_config()
    heads = int(text.num_attention_heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
    return 2 * int(text.num_hidden_layers) * kv_heads * head_dim * torch.empty(0, dtype=dtype).element_size()
