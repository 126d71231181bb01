"""Prompt lookup decoding: a model-free drafter that copies from the context itself.

The last ``n`` tokens of the context are looked up among its earlier n-grams, longest
``n`` first (``max_ngram`` down to ``min_ngram``), most recent occurrence first; the draft
is what followed that occurrence. Where the continuation runs into the end of the context
(a repeating pattern, whose most recent match overlaps the suffix) it keeps copying from
the draft itself, as the pattern would continue.

Example (``max_ngram=2``): context ``a b c d a b`` → suffix ``a b`` occurred at 0 and was
followed by ``c d a b``; with ``max_tokens=3`` the draft is ``c d a``.

The n-gram → start-positions index is maintained incrementally per session (tokens are
appended, or truncated at the end after a rollback), so a step costs O(new tokens ·
max_ngram) plus one C-level prefix check of the context, never O(context²).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from spec_decode.errors import InvalidArgument
from spec_decode.tokens import common_prefix_len
from spec_decode.tree import merge_paths
from spec_decode.types import EMPTY_TREE, DraftOptions, DraftTree, SamplingParams

DEFAULT_MAX_NGRAM = 3
DEFAULT_MIN_NGRAM = 1
MAX_NGRAM = 16
MAX_BRANCHES = 64
# Occurrences examined per n-gram size while looking for distinct continuations.
MAX_MATCHES_SCANNED = 256

Gram = tuple[int, ...]


class NgramIndex:
    """Start positions of every n-gram (n = 1..max_n) of a token list that grows and shrinks.

    ``positions(gram)`` lists where ``gram`` starts, ascending.
    """

    def __init__(self, max_n: int = DEFAULT_MAX_NGRAM) -> None:
        self.tokens: list[int] = []
        self.max_n = max_n
        self._grams: list[dict[Gram, list[int]]] = [{} for _ in range(max_n)]  # [n - 1]

    def positions(self, gram: Gram) -> list[int]:
        if not 1 <= len(gram) <= self.max_n:
            raise ValueError(f"this index holds n-grams of 1..{self.max_n} tokens, not {len(gram)}")
        return self._grams[len(gram) - 1].get(gram, [])

    def grow_to(self, max_n: int) -> None:
        """Also index n-grams up to ``max_n`` tokens long (one pass per new ``n``)."""
        toks = self.tokens
        for n in range(self.max_n + 1, max_n + 1):
            grams: dict[Gram, list[int]] = {}
            for s in range(len(toks) - n + 1):
                grams.setdefault(tuple(toks[s : s + n]), []).append(s)
            self._grams.append(grams)
        self.max_n = max(self.max_n, max_n)

    def sync(self, context: Sequence[int]) -> None:
        """Make the index describe ``context``: drop what differs at the end, add the rest."""
        keep = common_prefix_len(self.tokens, context)
        self.truncate(keep)
        self.extend(context[keep:])

    def truncate(self, length: int) -> None:
        toks = self.tokens
        for end in range(len(toks), length, -1):  # n-grams ending at token end-1, newest first
            for n in range(1, min(self.max_n, end) + 1):
                start = end - n
                grams = self._grams[n - 1]
                key = tuple(toks[start:end])
                starts = grams[key]
                starts.pop()  # the newest occurrence of this gram is the one ending here
                if not starts:
                    del grams[key]
        del toks[length:]

    def extend(self, new_tokens: Sequence[int]) -> None:
        toks = self.tokens
        for tok in new_tokens:
            toks.append(int(tok))
            end = len(toks)
            for n in range(1, min(self.max_n, end) + 1):
                self._grams[n - 1].setdefault(tuple(toks[end - n : end]), []).append(end - n)


def continuation(tokens: Sequence[int], start: int, length: int) -> list[int]:
    """``length`` tokens copied from ``tokens[start:]``; past the end, from the copy itself.

    Needs ``0 <= start < len(tokens)``. Example: ``continuation([1, 2, 3], 1, 5)`` is
    ``[2, 3, 2, 3, 2]``.
    """
    n = len(tokens)
    out: list[int] = list(tokens[start : start + length])
    while len(out) < length:
        out.append(out[start + len(out) - n])
    return out


class PromptLookupDrafter:
    """Model-free n-gram drafter; its trees carry no draft probabilities (point masses)."""

    def __init__(self, max_ngram: int = DEFAULT_MAX_NGRAM, min_ngram: int = DEFAULT_MIN_NGRAM) -> None:
        self.max_ngram = max_ngram
        self.min_ngram = min_ngram
        self.num_branches = 1
        self.index = NgramIndex(max_ngram)

    def configure(self, options: DraftOptions) -> None:
        max_ngram = options.max_ngram or DEFAULT_MAX_NGRAM
        min_ngram = options.min_ngram or DEFAULT_MIN_NGRAM
        branches = options.num_branches or 1
        if not 1 <= min_ngram <= max_ngram <= MAX_NGRAM:
            raise InvalidArgument(
                f"prompt lookup needs 1 <= min_ngram <= max_ngram <= {MAX_NGRAM}; "
                f"got min_ngram={min_ngram}, max_ngram={max_ngram}"
            )
        if not 1 <= branches <= MAX_BRANCHES:
            bad = options.num_branches
            raise InvalidArgument(f"num_branches must be in [0, {MAX_BRANCHES}] (0 = 1), got {bad}")
        self.max_ngram, self.min_ngram, self.num_branches = max_ngram, min_ngram, branches

    def propose(
        self,
        context: Sequence[int],
        max_tokens: int,
        max_nodes: int,
        sampling: SamplingParams,
        generator: torch.Generator | None,
    ) -> DraftTree:
        """Up to ``num_branches`` distinct continuations of the context's suffix, as one tree."""
        if self.max_ngram > self.index.max_n:
            self.index.grow_to(self.max_ngram)
        self.index.sync(context)
        if max_tokens <= 0 or max_nodes <= 0:
            return EMPTY_TREE
        paths = self._continuations(max_tokens)
        return merge_paths(_fit_paths(paths, max_nodes))

    def observe(self, num_draft: int, num_accepted: int, target_tokens: Sequence[int] = ()) -> None:
        """Prompt lookup has nothing to adapt."""

    def _continuations(self, length: int) -> list[list[int]]:
        """Distinct continuations, longest n-gram first, most recent match first."""
        toks = self.index.tokens
        total = len(toks)
        found: list[list[int]] = []
        seen: set[Gram] = set()
        for n in range(min(self.max_ngram, total - 1), self.min_ngram - 1, -1):
            starts = self.index.positions(tuple(toks[total - n :]))
            scanned = 0
            for s in reversed(starts):
                if s + n >= total:  # the suffix itself: nothing follows it
                    continue
                path = continuation(toks, s + n, length)
                key = tuple(path)
                if key not in seen:
                    seen.add(key)
                    found.append(path)
                    if len(found) == self.num_branches:
                        return found
                scanned += 1
                if scanned >= MAX_MATCHES_SCANNED:
                    break
        return found


def _fit_paths(paths: list[list[int]], max_nodes: int) -> list[list[int]]:
    """The paths, in order, cut so that the merged tree has at most ``max_nodes`` nodes.

    A path that adds no node to the paths before it (a prefix of one of them) is dropped.
    """
    prefixes: set[Gram] = set()
    kept: list[list[int]] = []
    budget = max_nodes
    for path in paths:
        shared = 0
        while shared < len(path) and tuple(path[: shared + 1]) in prefixes:
            shared += 1
        new = min(len(path) - shared, budget)
        if new <= 0:
            continue
        path = path[: shared + new]
        prefixes.update(tuple(path[: k + 1]) for k in range(shared, len(path)))
        kept.append(path)
        budget -= new
        if budget == 0:
            break
    return kept
