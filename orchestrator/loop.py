"""The speculative decode loop for one request: prefill, then draft -> verify -> accept -> advance.

The loop is written once against :class:`spec_decode.api.TargetAPI` and
:class:`spec_decode.api.DraftAPI`, so it runs the same with in-process services and with
gRPC clients. Every phase is timed inside the loop; the time a call spends outside the
remote service's own compute is charged to the network.

Drafting goes through a :class:`~orchestrator.drafters.DrafterRouter`: each step the loop
asks it which replica holds the session. When that replica changes — it failed a call
(UNAVAILABLE / DEADLINE_EXCEEDED / CANCELLED), or a replica joined and took the session over
on the hash ring — the session moves: released on the old replica (if still in the ring),
rebuilt on the new one from the whole token history. With no replica left the step is
target-only. Neither changes the output: the target alone decides every token.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator

from orchestrator.drafters import DrafterRouter, Replica
from orchestrator.methods import Method
from orchestrator.request import GenerateParams
from spec_decode.api import TargetAPI
from spec_decode.budget import TreeBudget
from spec_decode.errors import (
    Cancelled,
    DeadlineExceeded,
    FailedPrecondition,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from spec_decode.prompt_lookup import DEFAULT_MAX_NGRAM, DEFAULT_MIN_NGRAM
from spec_decode.stats import LoopStats
from spec_decode.tree import cut_depth, truncate_tree
from spec_decode.types import (
    COLOCATED_DRAFTERS,
    EMPTY_TREE,
    ColocatedDraft,
    DraftTree,
    GenerationStats,
    TargetLimits,
    VerifyResult,
)
from specd_metrics.logs import enter_session, exit_session

REDRAFTER_WIDTH = 10  # the co-located head's default beam width (DEFAULT_WIDTH, spec_decode/redrafter_head.py)
REDRAFTER_TOP_K = 50

log = logging.getLogger(__name__)

TARGET_REBUILDS_PER_STEP = 3  # re-prefills of an evicted target session before the request gives up


class DecodeLoop:
    """Generates tokens for one session; iterate :meth:`run` for per-step token chunks."""

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
        phrase_namespace: str = "",
        node_share: Callable[[], int] | None = None,
        colocated: bool = False,
        budget: TreeBudget | None = None,
        concurrency: Callable[[], int] | None = None,
    ) -> None:
        self.session_id = session_id
        # A drafter co-located with the target (the ReDrafter head, prompt lookup): every
        # Prefill/Verify also drafts the next tree there.
        self._colocated = colocated and method.drafter in COLOCATED_DRAFTERS
        self._next_tree: DraftTree | None = None  # the tree the target drafted with the last result
        self._node_share = node_share  # this step's draft-node allowance under load (None: no budget)
        self._budget = budget  # the cost-model tree budget (None: every step asks for the cap)
        self._concurrency = concurrency  # requests sharing the target now (the budget weighs rows by it)
        self._requested = 0  # draft nodes this step asked for
        self._next_budget = 0  # co-located drafting: the node budget the next tree was drafted within
        self._target = target
        self._drafters = draft if method.drafter is not None and not self._colocated else None
        self._replica: Replica | None = None  # the replica holding this session's drafter state
        self._failed: set[str] = set()  # replicas that failed this request; never picked again
        self._method = method
        self._params = params
        self._prompt = prompt
        self._limits = limits
        self._eos = set() if params.ignore_eos else set(eos_token_ids)
        self._options = params.draft_options(method.default_num_tokens, phrase_namespace)
        # Ouroboros learns corrected phrases from the target's own tokens over the tree.
        self._want_target_tokens = (
            method.drafter in ("ouroboros", "hybrid") and not params.ouroboros.no_verification_phrases
        )
        # ReDrafter drafts from the target's hidden state at the last accepted position.
        self._want_hidden = method.drafter in ("redrafter", "hybrid") and not self._colocated
        self._hidden = b""  # the latest one (float16 bytes), forwarded with the next propose
        self.tokens: list[int] = []  # generated so far
        self.stats = LoopStats()
        self.draft_timeouts = 0  # Propose calls that ran past the drafter deadline
        self.target_rebuilds = 0  # target sessions rebuilt after the target evicted them
        self.finish_reason = "length"
        self._sent_to_draft = 0  # context tokens the drafter already holds
        self._start = 0.0
        self._wall = 0.0

    # ---------------------------------------------------------------- the loop
    def run(self) -> Iterator[list[int]]:
        """Yields the tokens each target step adds, until EOS or ``max_new_tokens``."""
        self._start = time.perf_counter()
        logged = enter_session(self.session_id)  # this request's log lines carry its session id
        try:
            self._prefill()
            while self.finish_reason == "length" and len(self.tokens) < self._params.max_new_tokens:
                step_start = time.perf_counter()
                tree = self._draft()
                result = self._verify(tree)
                new_tokens = self._accept(tree, result)
                self._advance(tree, result, new_tokens)
                if self._budget is not None:
                    self._budget.observe(
                        self._requested, tree.size, result.acceptance.path, time.perf_counter() - step_start
                    )
                yield new_tokens
                if self.finish_reason == "eos":
                    break
        finally:
            self._wall = time.perf_counter() - self._start
            if self._budget is not None:
                self._budget.finish()
            self._release()
            exit_session(logged)

    # ---------------------------------------------------------------- phases
    def _prefill(self) -> None:
        with self.stats.time("prefill"):
            result = self._target.prefill(
                self.session_id, self._prompt, self._params.sampling, self._want_hidden, self._colocated_draft(0)
            )
        self._hidden = result.hidden_state
        self._next_tree = result.next_tree

    def _colocated_draft(self, emitted_first: int = 1) -> ColocatedDraft | None:
        """What to ask a co-located drafter for: the request's tree shape within the next step's node
        allowance. The target drafts the next step's tree now, so its tree budget is chosen now too.

        ``emitted_first``: the fewest tokens emitted before that step (0 at a prefill, 1 at a verify):
        the tree is drafted no deeper than the tokens that step can have left, an upper bound that
        :meth:`_draft` then cuts to the tokens it does have left."""
        if not self._colocated:
            return None
        max_depth = self._max_depth() - emitted_first
        if max_depth <= 0:  # the next step, if any, is the last token: the target's own
            return None
        max_nodes = self._limits.max_tree_nodes
        if self._node_share is not None:
            max_nodes = min(max_nodes, self._node_share())
        max_nodes = self._budgeted(max_nodes)
        self._next_budget = max_nodes
        options = self._options
        length = min(options.num_tokens or self._method.default_num_tokens, max_depth)
        if self._method.drafter == "prompt_lookup":
            return ColocatedDraft(
                width=options.num_branches or 1,
                length=max(1, min(length, self._limits.max_tree_nodes)),  # no deeper than a tree can be
                max_nodes=max_nodes,
                drafter="prompt_lookup",
                max_ngram=options.max_ngram or DEFAULT_MAX_NGRAM,
                min_ngram=options.min_ngram or DEFAULT_MIN_NGRAM,
            )
        return ColocatedDraft(
            width=options.num_branches or REDRAFTER_WIDTH,
            length=length,
            max_nodes=max_nodes,
            top_k=options.draft_top_k or REDRAFTER_TOP_K,
            tree=options.head_tree,
        )

    def _draft(self) -> DraftTree:
        """Ask the session's drafter for a tree that fits the context and the remaining token budget."""
        self._requested = 0
        if not self._colocated and (self._drafters is None or self._method.drafter is None):
            return EMPTY_TREE
        max_depth = self._max_depth()  # the depth cap; the node cap is the target's and the load's
        max_nodes = self._max_nodes() if max_depth > 0 else 0
        if self._colocated:  # the target drafted it with the last result, within the budget chosen then
            self._requested = min(max_nodes, self._next_budget)
            tree = cut_depth(self._next_tree or EMPTY_TREE, max_depth)  # drafted to an upper bound
            return truncate_tree(tree, self._requested)
        max_nodes = self._budgeted(max_nodes)
        self._requested = max_nodes
        drafters = self._drafters
        if max_nodes <= 0 or drafters is None:
            return EMPTY_TREE
        context_len = len(self._prompt) + len(self.tokens)
        failed = False
        while (replica := self._route()) is not None:
            try:
                return self._propose(replica, max_nodes, max_depth, context_len)
            except (Unavailable, DeadlineExceeded, Cancelled) as err:
                log.warning("session %s: drafter %s failed (%s)", self.session_id, replica.address, err)
                if isinstance(err, DeadlineExceeded):  # a slow drafter: this step goes on without it
                    self.draft_timeouts += 1
                failed = True
                self._failed.add(replica.address)
                drafters.report_failure(replica, err)
        if failed:
            log.warning("session %s: no drafter left; continuing target-only", self.session_id)
        return EMPTY_TREE  # this step is target-only

    def _budgeted(self, limit: int) -> int:
        """The tree budget's choice for a step allowed ``limit`` nodes (``limit`` itself without one)."""
        if self._budget is None:
            return limit
        return self._budget.choose(limit, self._concurrency() if self._concurrency else 1)

    def _max_depth(self) -> int:
        """How deep this step's tree may go: a step emits at most depth + 1 tokens (the target always
        adds one of its own), so the tokens the request has left, less one. Only the depth: a wide
        tree fits the last tokens as well as a chain does."""
        return self._params.max_new_tokens - len(self.tokens) - 1

    def _max_nodes(self) -> int:
        """Draft nodes this step may use: the target's cap, the context left, the load share."""
        context_len = len(self._prompt) + len(self.tokens)
        max_nodes = min(self._limits.max_tree_nodes, self._limits.max_context - context_len - 1)
        if self._node_share is not None:
            max_nodes = min(max_nodes, self._node_share())
        return max(0, max_nodes)

    def _route(self) -> Replica | None:
        """The replica for this step; moves the session when the router now names another one."""
        assert self._drafters is not None
        replica = self._drafters.pick(self.session_id, frozenset(self._failed))
        old = self._replica
        if replica is None:
            return None
        if old is not None and old.address == replica.address:
            self._replica = replica  # the same server (perhaps on a new channel): its state is there
            return replica
        if old is not None:
            self.stats.drafter_switches += 1
            log.info("session %s: drafter %s -> %s", self.session_id, old.address, replica.address)
            if old.address in self._drafters.live():  # rebalanced away: free the state it holds
                self._release_draft(old)  # (not on a replica that is out of the ring: it may hang)
        self._replica = replica
        self._sent_to_draft = 0  # the new replica rebuilds the state from the whole context
        return replica

    def _propose(self, replica: Replica, max_nodes: int, max_depth: int, context_len: int) -> DraftTree:
        """The replica's tree. A drafter drafts no deeper than ``max_depth``; one that did anyway (an
        older draft service) still costs nothing in tokens: :meth:`_accept` stops at the budget."""
        assert self._method.drafter is not None
        new_tokens = self._unsent_tokens()  # only what the drafter has not seen: O(step), not O(context)
        start = time.perf_counter()
        try:
            result = replica.api.propose(
                self.session_id,
                self._method.drafter,
                self._sent_to_draft,
                new_tokens,
                max_nodes,
                self._options,
                self._params.sampling,
                hidden_state=self._hidden,
                max_depth=max_depth,
            )
        except (FailedPrecondition, NotFound) as err:
            if self._sent_to_draft == 0:
                raise
            log.info("session %s: drafter lost sync (%s); resending the context", self.session_id, err)
            self._sent_to_draft = 0
            result = replica.api.propose(
                self.session_id,
                self._method.drafter,
                0,
                self._prompt + self.tokens,
                max_nodes,
                self._options,
                self._params.sampling,
                hidden_state=self._hidden,
                max_depth=max_depth,
            )
        self._sent_to_draft = context_len
        self.stats.phases.draft_s += result.compute_s
        self.stats.add_network(time.perf_counter() - start, result.compute_s)
        return result.tree

    def _unsent_tokens(self) -> list[int]:
        """Context tokens from ``_sent_to_draft`` on, without copying the whole context."""
        n_prompt = len(self._prompt)
        if self._sent_to_draft >= n_prompt:
            return self.tokens[self._sent_to_draft - n_prompt :]
        return self._prompt[self._sent_to_draft :] + self.tokens

    def _verify(self, tree: DraftTree) -> VerifyResult:
        start = time.perf_counter()
        for attempt in range(TARGET_REBUILDS_PER_STEP + 1):
            try:
                result = self._target.verify(
                    self.session_id,
                    tree,
                    self._want_target_tokens and tree.size > 0,
                    self._want_hidden,
                    self._colocated_draft(),
                )
                break
            except NotFound as err:
                if attempt == TARGET_REBUILDS_PER_STEP:
                    raise ResourceExhausted(
                        f"the target evicted this request's session {attempt + 1} times in one step: it holds "
                        "more sessions than its --max-sessions / KV budget allow; retry later"
                    ) from err
                self._rebuild_target_session(err)
        self.stats.phases.verify_s += result.compute_s
        self.stats.add_network(time.perf_counter() - start, result.compute_s)
        self._hidden = result.hidden_state
        self._next_tree = result.next_tree
        return result

    def _rebuild_target_session(self, err: NotFound) -> None:
        """Prefill the whole context again after the target evicted the (idle) session under load.

        The tokens so far are the target's own, so a greedy request goes on exactly as before; a
        seeded sampled request continues from a seed derived from its length (still the target's
        distribution, but not the tokens an uninterrupted run would have drawn).
        """
        self.target_rebuilds += 1
        log.warning("session %s: the target lost it (%s); prefilling the context again", self.session_id, err)
        sampling = self._params.sampling
        if sampling.seed is not None:
            sampling = dataclasses.replace(sampling, seed=(sampling.seed + len(self.tokens)) % 2**63)
        with self.stats.time("prefill"):
            rebuilt = self._target.prefill(
                self.session_id, self._prompt + self.tokens, sampling, self._want_hidden, self._colocated_draft()
            )
        self._hidden = rebuilt.hidden_state
        self._next_tree = rebuilt.next_tree

    def _accept(self, tree: DraftTree, result: VerifyResult) -> list[int]:
        """The tokens this step emits: accepted + recovered/bonus, cut at EOS and the budget."""
        acc = result.acceptance
        self.stats.record_step(tree.size, len(acc.tokens))
        emitted = list(acc.emitted)[: self._params.max_new_tokens - len(self.tokens)]
        for i, token in enumerate(emitted):
            if token in self._eos:
                self.finish_reason = "eos"
                return emitted[: i + 1]
        return emitted

    def _advance(self, tree: DraftTree, result: VerifyResult, new_tokens: list[int]) -> None:
        self.tokens.extend(new_tokens)
        if self._replica is not None and tree.size:
            try:
                self._replica.api.observe(
                    self.session_id, tree.size, len(result.acceptance.tokens), result.target_tokens
                )
            except (Unavailable, DeadlineExceeded, NotFound) as err:
                log.warning("session %s: drafter feedback failed: %s", self.session_id, err)

    def _release(self) -> None:
        # The drafter first: a target that is down or restarting can hold its Release for the
        # whole deadline, and the draft state must not wait for it.
        if self._replica is not None:
            if self._replica.address not in self._failed:
                self._release_draft(self._replica)
            else:  # it failed a call but may still hold the state (a late Propose): free it without waiting
                threading.Thread(target=self._release_draft, args=(self._replica,), daemon=True).start()
        try:
            self._target.release(self.session_id)
        except Exception as err:  # releasing must never mask the request's own outcome
            log.warning("session %s: releasing the target session failed: %s", self.session_id, err)

    def _release_draft(self, replica: Replica) -> None:
        try:
            replica.api.release(self.session_id)
        except Exception as err:  # a replica that left or fails must not fail the request
            log.warning(
                "session %s: releasing the draft session on %s failed: %s", self.session_id, replica.address, err
            )

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
            drafter_switches=self.stats.drafter_switches,
            draft_timeouts=self.draft_timeouts,
            target_rebuilds=self.target_rebuilds,
        )
