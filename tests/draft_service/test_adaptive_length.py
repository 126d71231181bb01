"""AdaptiveLength (HF's heuristic) and the prefix helper the drafters share."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from draft_service.drafter import AdaptiveLength
from spec_decode.tokens import common_prefix_len


def test_grows_by_two_after_full_acceptance_and_shrinks_by_one_otherwise() -> None:
    policy = AdaptiveLength(length=5, max_length=10)
    assert policy.update(5, 5) == 7
    assert policy.update(7, 7) == 9
    assert policy.update(9, 9) == 10  # clamped to max_length
    assert policy.update(10, 4) == 9
    assert policy.update(9, 0) == 8


def test_never_drops_below_one() -> None:
    policy = AdaptiveLength(length=2, max_length=8)
    assert [policy.update(policy.length, 0) for _ in range(3)] == [1, 1, 1]
    assert policy.update(1, 1) == 3


def test_an_empty_draft_leaves_the_length_unchanged() -> None:
    policy = AdaptiveLength(length=4, max_length=8)
    assert policy.update(0, 0) == 4


def test_a_shorter_draft_fully_accepted_counts_as_full() -> None:
    policy = AdaptiveLength(length=6, max_length=8)
    assert policy.update(2, 2) == 8  # prompt lookup may find fewer tokens than asked


def test_start_length_is_clamped() -> None:
    assert AdaptiveLength(length=50, max_length=8).length == 8
    assert AdaptiveLength(length=0, max_length=8).length == 1


@given(st.lists(st.integers(0, 2), max_size=12), st.lists(st.integers(0, 2), max_size=12))
def test_common_prefix_len(a: list[int], b: list[int]) -> None:
    expected = 0
    while expected < min(len(a), len(b)) and a[expected] == b[expected]:
        expected += 1
    assert common_prefix_len(a, b) == expected
    assert common_prefix_len(tuple(b), a) == expected
