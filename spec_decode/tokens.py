"""Helpers over token lists that both services use."""

from __future__ import annotations

from collections.abc import Sequence


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token lists.

    The usual case (``a`` is a prefix of ``b`` or the reverse) costs one C-level slice
    comparison; otherwise a binary search over slice comparisons, O(n log n) in C.
    """
    n = min(len(a), len(b))
    la, lb = list(a[:n]), list(b[:n])
    if la == lb:
        return n
    lo, hi = 0, n  # invariant: la[:lo] == lb[:lo], la[:hi] != lb[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if la[lo:mid] == lb[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo
