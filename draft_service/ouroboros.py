"""Ouroboros drafting (Zhao et al. 2024): drafts lengthened by a shared pool of phrases.

One drafter per session; the worker injects the phrase store of the request's namespace (the
target's vocabulary fingerprint), shared by every session and, with Redis, every replica.
See docs/PAPERS.md §1. Per propose:

1. **History phrases** (part 4): the context tokens new since the last call (with ``n - 1`` tokens
   of overlap) are cut into n-grams, ``n = phrase_length + 1``; the first call adds the prompt's.
2. **Base draft**: without a draft model a prompt-lookup chain; with one, the draft LM's chain,
   by lookahead decoding when greedy (part 1, :mod:`draft_service.lookahead`: the same greedy
   chain in fewer passes, plus fresh n-grams from every pass).
3. Everything learnt since the last flush goes to the store in one ``add``.
4. **Phrase extension** (part 2): one ``get`` for the context's last token (its phrases become
   alternative branches from the root) and for the chain's token at depth ``cut`` (its phrases
   continue the chain there), ``cut = max(1, max_tokens - phrase_length)``. A draft LM drafts
   only up to ``cut`` first and drafts on to ``max_tokens`` only when the pool has nothing to
   continue with, so phrases replace draft passes. The tree keeps the base chain first, then the
   continuing phrases, then the root phrases, each in pool order (newest first), within
   ``max_nodes`` nodes and ``max_tokens`` depth.

5. **Lookahead without a draft LM** (part 1 for the model-free stack): the Jacobi window of
   :class:`draft_service.lookahead.JacobiWindow` joins the tree (``phrase_length`` levels, as many
   columns as the depth limit leaves), so it rides in the target's own verify pass, as in
   Lookahead Decoding; the target's argmax at its top rows advances it and its full columns
   become n-grams for the pool. It is added only when the whole window fits the node budget.
   The draft service turns it on with ``DraftConfig.verify_lookahead`` (``--verify-lookahead``).

:meth:`OuroborosDrafter.observe` then learns **corrected phrases** (part 3,
:func:`corrected_phrases`) from the target's argmax over the tree it verified. Model-free trees
carry no draft probabilities; a sampled chain carries its q per node and every phrase node an
empty ``SparseProbs()`` (a point mass), never merged into a sampled node (docs/ALGORITHMS.md §4.2).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from draft_service.lookahead import DEFAULT_WINDOW, JacobiWindow, LocalPool, LookaheadDecoder, Phrase
from draft_service.model_drafter import ModelDrafter
from phrase_store import PhraseStore, phrases_from_tokens
from spec_decode.errors import InvalidArgument
from spec_decode.prompt_lookup import PromptLookupDrafter
from spec_decode.tree import children_lists, path_to
from spec_decode.types import EMPTY_TREE, DraftOptions, DraftTree, SamplingParams, SparseProbs

DEFAULT_PHRASE_TOP_K = 3
MAX_PHRASE_TOP_K = 64
DEFAULT_PHRASE_LENGTH = 4  # Ouroboros' lookahead level N = 5
MAX_PHRASE_LENGTH = 16
_TAIL = 16  # context tokens remembered to recognise the history at the next call

POINT_MASS = SparseProbs()


def corrected_phrases(tree: DraftTree, target_tokens: Sequence[int], n: int) -> list[Phrase]:
    """The target's corrections of every branch of ``tree``, as full n-grams (Ouroboros part 3).

    ``target_tokens[r]`` is the target's argmax at row ``r`` (row 0 = the root, row ``i + 1`` =
    node ``i``). On each root-to-leaf branch, at the first node whose token differs from the
    target's token at its parent's row, the corrected phrase is that target token followed by
    the target's tokens at the rows of the rejected node and its descendants on the branch. Only
    phrases that reach ``n`` tokens count (cut to ``n``); duplicates are dropped.

    Example (``n = 3``): chain ``5 6 7 8`` (nodes 0-3), ``target_tokens = [5, 9, 1, 2, 3]``:
    node 0 matches (row 0 says 5), node 1 does not (row 1 says 9), so the phrase is row 1, then
    rows 2, 3, 4: ``(9, 1, 2, 3)`` cut to ``(9, 1, 2)``.
    """
    kids = children_lists(tree.parents)
    found: dict[Phrase, None] = {}
    for leaf in range(tree.size):
        if leaf in kids:
            continue
        branch = path_to(leaf, tree.parents)
        for at, node in enumerate(branch):
            parent_row = tree.parents[node] + 1
            if tree.tokens[node] != target_tokens[parent_row]:
                phrase = (target_tokens[parent_row], *(target_tokens[x + 1] for x in branch[at:]))
                if len(phrase) >= n:
                    found[tuple(int(t) for t in phrase[:n])] = None
                break
    return list(found)


class _TreeBuilder:
    """Adds token paths to one tree within a node budget and a depth limit.

    Point-mass nodes sharing a parent and a token are merged; sampled nodes (with a q) are
    never merge targets, so a phrase that starts like a sampled node becomes its sibling.
    """

    def __init__(self, max_nodes: int, max_depth: int) -> None:
        self.max_nodes, self.max_depth = max_nodes, max_depth
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.depths: list[int] = []
        self.probs: list[SparseProbs] = []
        self._index: dict[tuple[int, int], int] = {}

    def add(self, parent: int, tokens: Sequence[int], probs: Sequence[SparseProbs] = ()) -> list[int]:
        """Nodes of ``tokens`` below ``parent`` (-1 = root), as far as the budgets allow."""
        nodes: list[int] = []
        depth = self.depths[parent] if parent >= 0 else 0
        for j, tok in enumerate(tokens):
            if depth >= self.max_depth:
                break
            node = None if probs else self._index.get((parent, tok))
            if node is None:
                if len(self.tokens) >= self.max_nodes:
                    break
                node = len(self.tokens)
                self.tokens.append(int(tok))
                self.parents.append(parent)
                self.depths.append(depth + 1)
                self.probs.append(probs[j] if probs else POINT_MASS)
                if not probs:
                    self._index[(parent, tok)] = node
            nodes.append(node)
            parent, depth = node, depth + 1
        return nodes

    def tree(self) -> DraftTree:
        sampled = any(q.ids for q in self.probs)
        return DraftTree(tuple(self.tokens), tuple(self.parents), tuple(self.probs) if sampled else ())


class OuroborosDrafter:
    """Prompt lookup or a draft LM (``model``), lengthened and taught by a phrase ``store``."""

    def __init__(
        self,
        store: PhraseStore,
        model: ModelDrafter | None = None,
        window: int = DEFAULT_WINDOW,
        verify_lookahead: bool = True,
    ) -> None:
        self.store = store
        self.model = model
        self.lookup = PromptLookupDrafter() if model is None else None
        self.lookahead = LookaheadDecoder(model.model, model.device, window=window) if model is not None else None
        # Without a draft LM, part 1's lookahead window rides in the target's verify pass.
        self.window = JacobiWindow(window) if model is None and verify_lookahead else None
        self._window_rows: list[int] = []  # tree nodes of the last tree's top window level
        self.local = LocalPool(per_key=window)  # the lookahead's guesses, no round trip
        self.window_width = window  # W of the target-side window (model-free drafting)
        self.phrase_top_k = DEFAULT_PHRASE_TOP_K
        self.phrase_length = DEFAULT_PHRASE_LENGTH
        self.use_lookahead = self.use_extension = self.use_verification = self.use_history = True
        self.last_tree: DraftTree = EMPTY_TREE
        self._unsent: list[Phrase] = []  # learnt, not yet in the store
        self._seen = 0  # context length whose phrases were harvested
        self._seen_tail: list[int] = []  # its last tokens, to recognise it next time

    def configure(self, options: DraftOptions) -> None:
        top_k = options.phrase_top_k or DEFAULT_PHRASE_TOP_K
        length = options.phrase_length or DEFAULT_PHRASE_LENGTH
        if not 1 <= top_k <= MAX_PHRASE_TOP_K:
            raise InvalidArgument(f"phrase_top_k must be in [0, {MAX_PHRASE_TOP_K}] (0 = default), got {top_k}")
        if not 1 <= length <= MAX_PHRASE_LENGTH:
            raise InvalidArgument(f"phrase_length must be in [0, {MAX_PHRASE_LENGTH}] (0 = default), got {length}")
        if self.lookup is not None:
            self.lookup.configure(DraftOptions(max_ngram=options.max_ngram, min_ngram=options.min_ngram))
        if self.model is not None:
            self.model.configure(options)
        if self.lookahead is not None:
            self.lookahead.set_level(length + 1)
        self.phrase_top_k, self.phrase_length = top_k, length
        self.use_lookahead = not options.no_lookahead
        self.use_extension = not options.no_phrase_extension
        self.use_verification = not options.no_verification_phrases
        self.use_history = not options.no_history_phrases

    def reset(self) -> None:
        """Free the draft model's caches (the phrases stay in the store)."""
        if self.model is not None:
            self.model.reset()
        if self.lookahead is not None:
            self.lookahead.reset()

    def propose(
        self,
        context: Sequence[int],
        max_tokens: int,
        max_nodes: int,
        sampling: SamplingParams,
        generator: torch.Generator | None,
    ) -> DraftTree:
        """A tree of at most ``max_nodes`` nodes and depth ``max_tokens`` continuing ``context``."""
        if self.use_history:
            self._learn(self._history_phrases(context))
        length = min(max_tokens, max_nodes)
        if length <= 0 or not context:
            self._flush()
            self.last_tree = EMPTY_TREE
            return self.last_tree
        cut = max(1, length - self.phrase_length) if self.use_extension else length
        chain, qs = self._draft(context, length if self.model is None else cut, sampling, generator)
        chain, qs = chain[:length], qs[:length]
        self._flush()
        attach = min(len(chain), cut)
        root_phrases: list[Phrase] = []
        tail_phrases: list[Phrase] = []
        if self.use_extension:
            keys = [int(context[-1]), *chain[attach - 1 : attach]]
            found = self.store.get(keys, self.phrase_top_k)
            root_phrases = found.get(keys[0], [])
            tail_phrases = found.get(keys[-1], []) if attach else []
            if self.lookahead is not None:
                self.local.add((key, *cont) for key in reversed(keys) for cont in reversed(found.get(key, [])))
            if self.model is not None and not tail_phrases and len(chain) < length:
                more, more_qs = self._draft_more(context, chain, length - len(chain), sampling, generator)
                chain, qs = chain + more[: length - len(chain)], qs + more_qs[: length - len(chain)]
        builder = _TreeBuilder(max_nodes, max_tokens)
        chain_nodes = builder.add(-1, chain, qs)
        attach_node = chain_nodes[attach - 1] if attach else -1
        for cont in tail_phrases:
            builder.add(attach_node, cont)
        for cont in root_phrases:
            builder.add(-1, cont)
        self._window_rows = self._add_window(builder, context, max_tokens, max_nodes)
        self.last_tree = builder.tree()
        return self.last_tree

    def observe(self, num_draft: int, num_accepted: int, target_tokens: Sequence[int] = ()) -> None:
        """Learn the target's corrections of the last tree (``target_tokens``: 1 + its size ints)."""
        if not target_tokens:
            return
        expected = 1 + self.last_tree.size
        if len(target_tokens) != expected:
            raise InvalidArgument(
                f"target_tokens has {len(target_tokens)} entries; the last draft tree needs {expected} "
                "(row 0 = the pending token, then one per node)"
            )
        if self.use_verification:
            self._learn(corrected_phrases(self.last_tree, target_tokens, self.phrase_length + 1))
        if self.window is not None and self._window_rows:
            self._learn(self.window.advance([int(target_tokens[node + 1]) for node in self._window_rows]))
            self._window_rows = []

    # -- helpers --

    def _add_window(self, builder: _TreeBuilder, context: Sequence[int], max_tokens: int, max_nodes: int) -> list[int]:
        """Append the Jacobi window to the tree when it fits; the nodes of its top level's rows.

        The window is shaped to the request: ``phrase_length`` levels (so it yields the pool's
        n-grams) and as many columns as the depth limit leaves (at most the configured width).
        Nothing is added (and the window waits) when the node budget cannot take all of it.
        """
        window = self.window
        if window is None or not self.use_lookahead:
            return []
        width = min(self.window_width, max_tokens - self.phrase_length)
        if width < 1:
            return []
        window.configure(width, self.phrase_length + 1)
        window.seed(context)
        if window.depth > max_tokens or len(builder.tokens) + window.num_nodes > max_nodes:
            return []
        levels = window.levels
        level0 = builder.add(-1, levels[0])
        top = list(level0)
        for i, node in enumerate(level0):
            column = builder.add(node, [lvl[i] for lvl in levels[1:]])
            if column:
                top[i] = column[-1]
        if len(level0) != len(levels[0]) or any(builder.depths[n] != i + len(levels) for i, n in enumerate(top)):
            return []  # cut short by the budgets: the partial window is only drafts this time
        return top

    def _history_phrases(self, context: Sequence[int]) -> list[Phrase]:
        """N-grams of the context not harvested yet (all of them for a new context)."""
        n = self.phrase_length + 1
        seen, tail = self._seen, self._seen_tail
        same = 0 < seen <= len(context) and list(context[seen - len(tail) : seen]) == tail
        start = max(0, seen - (n - 1)) if same else 0
        self._seen, self._seen_tail = len(context), [int(t) for t in context[-_TAIL:]]
        return phrases_from_tokens([int(t) for t in context[start:]], n)

    def _learn(self, phrases: list[Phrase]) -> None:
        if phrases:
            self._unsent.extend(phrases)
            if self.lookahead is not None:
                self.local.add(phrases)

    def _flush(self) -> None:
        """Everything learnt since the last call, in one store round trip."""
        if self._unsent:
            phrases, self._unsent = self._unsent, []
            self.store.add(phrases)

    def _draft(
        self, context: Sequence[int], length: int, sampling: SamplingParams, generator: torch.Generator | None
    ) -> tuple[list[int], list[SparseProbs]]:
        """The base chain (at least ``length`` tokens when the drafter finds any) and its q's."""
        if self.lookup is not None:
            return list(self.lookup.propose(context, length, length, sampling, generator).tokens), []
        if sampling.greedy and self.use_lookahead and self.lookahead is not None:
            tokens, phrases = self.lookahead.draft(context, length, self.local)
            self._unsent.extend(phrases)
            return tokens, []
        assert self.model is not None
        tree = self.model.propose(context, length, length, sampling, generator)
        return list(tree.tokens), list(tree.draft_probs)

    def _draft_more(
        self,
        context: Sequence[int],
        chain: list[int],
        length: int,
        sampling: SamplingParams,
        generator: torch.Generator | None,
    ) -> tuple[list[int], list[SparseProbs]]:
        """``length`` more chain tokens from the draft LM after ``context + chain``."""
        if sampling.greedy and self.use_lookahead and self.lookahead is not None:
            tokens, phrases = self.lookahead.extend(length, self.local)
            self._unsent.extend(phrases)
            return tokens, []
        return self._draft([*context, *chain], length, sampling, generator)
