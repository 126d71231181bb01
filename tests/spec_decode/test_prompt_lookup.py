"""Prompt lookup: continuation choice, n-gram fallback, branches, and the incremental index."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spec_decode.errors import InvalidArgument
from spec_decode.prompt_lookup import NgramIndex, PromptLookupDrafter, continuation
from spec_decode.tree import children_lists, path_to
from spec_decode.types import DraftOptions, DraftTree, SamplingParams

GREEDY = SamplingParams()


def pld(
    context: list[int],
    max_tokens: int = 5,
    *,
    max_nodes: int = 64,
    drafter: PromptLookupDrafter | None = None,
    **options: Any,
) -> DraftTree:
    drafter = drafter or PromptLookupDrafter()
    drafter.configure(DraftOptions(**options))
    return drafter.propose(context, max_tokens, max_nodes, GREEDY, None)


def leaf_paths(tree: DraftTree) -> list[list[int]]:
    kids = children_lists(tree.parents)
    leaves = [i for i in range(tree.size) if i not in kids]
    return [[tree.tokens[j] for j in path_to(leaf, tree.parents)] for leaf in leaves]


def reference(context: list[int], length: int, max_n: int, min_n: int, branches: int) -> list[list[int]]:
    """Brute force: longest n first, most recent match first, distinct continuations."""
    total = len(context)
    found: list[list[int]] = []
    for n in range(min(max_n, total - 1), min_n - 1, -1):
        suffix = context[total - n :]
        for s in range(total - n - 1, -1, -1):
            if context[s : s + n] == suffix:
                seq = list(context)
                for i in range(length):
                    seq.append(seq[s + n + i])
                if seq[total:] not in found:
                    found.append(seq[total:])
                if len(found) == branches:
                    return found
    return found


def test_finds_the_continuation_of_the_suffix() -> None:
    tree = pld([1, 2, 3, 4, 5, 9, 1, 2, 3], max_tokens=4)
    assert tree == DraftTree.chain([4, 5, 9, 1])
    assert tree.draft_probs == ()  # model-free: point masses


def test_no_match_gives_an_empty_tree() -> None:
    assert pld([1, 2, 3, 4]).size == 0
    assert pld([7]).size == 0
    assert pld([]).size == 0


def test_prefers_the_most_recent_match() -> None:
    context = [1, 2, 7, 8, 0, 1, 2, 5, 6, 0, 1, 2]
    assert pld(context, max_tokens=3, max_ngram=2).tokens == (5, 6, 0)


def test_longest_ngram_wins_over_a_more_recent_shorter_one() -> None:
    #          3-gram (4 5 6) matches at 0; 1-gram (6) also at 9, more recent
    context = [4, 5, 6, 10, 11, 0, 0, 0, 0, 6, 12, 4, 5, 6]
    assert pld(context, max_tokens=2).tokens == (10, 11)
    assert pld(context, max_tokens=2, max_ngram=1).tokens == (12, 4)


def test_falls_back_to_shorter_ngrams_down_to_min_ngram() -> None:
    context = [3, 8, 9, 1, 2, 3]  # only the 1-gram (3) recurs
    assert pld(context, max_tokens=3).tokens == (8, 9, 1)
    assert pld(context, max_tokens=3, min_ngram=2).size == 0


def test_repeating_pattern_continues_past_the_end_of_the_context() -> None:
    assert continuation([1, 2, 3], 1, 5) == [2, 3, 2, 3, 2]
    # The most recent match of (5 6) overlaps the suffix; the draft keeps the period.
    assert pld([5, 6, 5, 6, 5, 6], max_tokens=5).tokens == (5, 6, 5, 6, 5)


def test_branches_are_distinct_continuations_merged_into_one_tree() -> None:
    context = [1, 2, 3, 0, 1, 2, 4, 0, 1, 2, 3, 0, 1, 2, 5, 0, 1, 2]
    tree = pld(context, max_tokens=2, num_branches=3)
    # matches of (0 1 2), newest first: ->5, ->3 (= its own repeat, skipped once), ->4
    assert leaf_paths(tree) == [[5, 0], [3, 0], [4, 0]]
    assert tree.parents == (-1, 0, -1, 2, -1, 4)
    assert all(p < i for i, p in enumerate(tree.parents))


def test_branches_share_prefixes_and_fall_back_to_shorter_ngrams() -> None:
    context = [9, 1, 7, 7, 8, 1, 7, 6, 5, 8, 1]
    tree = pld(context, max_tokens=3, num_branches=4, max_ngram=2)
    # (8 1) at 4 -> 7 6 5; then 1-gram (1): at 5 -> 7 6 5 (duplicate), at 1 -> 7 7 8
    assert leaf_paths(tree) == [[7, 6, 5], [7, 7, 8]]
    assert tree.size == 5  # the shared first token 7 is one node


def test_max_nodes_bounds_the_tree() -> None:
    context = [1, 2, 3, 0, 1, 2, 4, 0, 1, 2, 5, 0, 1, 2]
    assert pld(context, max_tokens=4, num_branches=3, max_nodes=6).size == 6
    assert pld(context, max_tokens=4, num_branches=3, max_nodes=1).size == 1
    assert pld(context, max_tokens=4, max_nodes=0).size == 0
    assert pld(context, max_tokens=0).size == 0


def test_bad_options_are_refused_and_leave_the_drafter_unchanged() -> None:
    drafter = PromptLookupDrafter()
    with pytest.raises(InvalidArgument, match="min_ngram"):
        drafter.configure(DraftOptions(min_ngram=4, max_ngram=2))
    with pytest.raises(InvalidArgument, match="max_ngram"):
        drafter.configure(DraftOptions(max_ngram=99))
    with pytest.raises(InvalidArgument, match="num_branches"):
        drafter.configure(DraftOptions(num_branches=-1))
    assert (drafter.max_ngram, drafter.min_ngram, drafter.num_branches) == (3, 1, 1)


def test_a_larger_max_ngram_later_extends_the_index() -> None:
    drafter = PromptLookupDrafter()
    context = [2, 3, 4, 5, 6, 0, 9, 4, 5, 6, 1, 2, 3, 4, 5, 6]
    assert pld(context, max_tokens=1, drafter=drafter).tokens == (1,)
    assert pld(context, max_tokens=1, drafter=drafter, max_ngram=5).tokens == (0,)


def index_reference(tokens: list[int], max_n: int) -> dict[tuple[int, ...], list[int]]:
    out: dict[tuple[int, ...], list[int]] = {}
    for n in range(1, max_n + 1):
        for s in range(len(tokens) - n + 1):
            out.setdefault(tuple(tokens[s : s + n]), []).append(s)
    return out


def index_contents(index: NgramIndex) -> dict[tuple[int, ...], list[int]]:
    return {gram: list(starts) for grams in index._grams for gram, starts in grams.items()}


SMALL_LISTS = st.lists(st.integers(0, 3), max_size=6)


@settings(max_examples=60, deadline=None)
@given(
    start=st.lists(st.integers(0, 3), max_size=30),
    steps=st.lists(st.tuples(st.integers(0, 6), SMALL_LISTS), min_size=1, max_size=10),
    max_n=st.integers(1, 4),
    branches=st.integers(1, 3),
    length=st.integers(1, 6),
)
def test_incremental_index_matches_brute_force(
    start: list[int], steps: list[tuple[int, list[int]]], max_n: int, branches: int, length: int
) -> None:
    """Append and roll back like a session does; every answer equals the brute-force one."""
    drafter = PromptLookupDrafter()
    drafter.configure(DraftOptions(max_ngram=max_n, num_branches=branches))
    context = list(start)
    for rollback, appended in steps:
        context = context[: max(0, len(context) - rollback)] + appended
        tree = drafter.propose(context, length, 1000, GREEDY, None)
        assert leaf_paths(tree) == reference(context, length, max_n, 1, branches)
        assert drafter.index.tokens == context
        assert index_contents(drafter.index) == index_reference(context, drafter.index.max_n)


def test_long_contexts_stay_fast() -> None:
    rng = random.Random(0)
    context = [rng.randrange(50) for _ in range(20_000)]
    drafter = PromptLookupDrafter()
    drafter.propose(context, 8, 8, GREEDY, None)
    began = time.perf_counter()
    for _ in range(300):
        tree = drafter.propose(context, 8, 8, GREEDY, None)
        accepted = rng.randrange(tree.size + 1)
        context = context + list(tree.tokens[:accepted]) + [rng.randrange(50)]
    per_step = (time.perf_counter() - began) / 300
    assert per_step < 5e-3, f"{per_step * 1e3:.2f} ms per step"
