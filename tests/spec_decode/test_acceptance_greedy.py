"""Greedy acceptance (``accept_greedy``) on hand-written trees, plus a brute-force property test.

Row convention (spec_decode/tree.py): ``target_tokens[0]`` is the target's argmax after the
root (pending token), ``target_tokens[i + 1]`` its argmax after tree node ``i``.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from spec_decode.acceptance import accept_greedy
from spec_decode.tree import children_lists, path_to
from spec_decode.types import EMPTY_TREE, Acceptance, DraftTree

X = 99  # a target token no draft node carries


# --- chains -----------------------------------------------------------------------------


def test_chain_all_accepted_gives_bonus() -> None:
    tree = DraftTree.chain([11, 12, 13])
    out = accept_greedy([11, 12, 13, 14], tree)
    assert out == Acceptance(path=(0, 1, 2), tokens=(11, 12, 13), next_token=14, bonus=True)
    assert out.emitted == (11, 12, 13, 14)


def test_chain_first_token_mismatch_recovers_at_root() -> None:
    tree = DraftTree.chain([11, 12, 13])
    out = accept_greedy([20, 12, 13, 14], tree)
    assert out == Acceptance(path=(), tokens=(), next_token=20, bonus=False)
    assert out.emitted == (20,)


def test_chain_mismatch_mid_chain() -> None:
    tree = DraftTree.chain([11, 12, 13, 14])
    # node 0 and 1 match, node 2 (token 13) does not: the target wants 30 after node 1.
    out = accept_greedy([11, 12, 30, X, X], tree)
    assert out == Acceptance(path=(0, 1), tokens=(11, 12), next_token=30, bonus=False)


def test_chain_mismatch_at_last_node() -> None:
    tree = DraftTree.chain([11, 12])
    out = accept_greedy([11, 40, X], tree)
    assert out == Acceptance(path=(0,), tokens=(11,), next_token=40, bonus=False)


def test_rows_after_a_rejection_are_ignored() -> None:
    # Row 2 (after node 1) "agrees" with node 2, but node 1 was already rejected.
    tree = DraftTree.chain([11, 12, 13])
    out = accept_greedy([11, 50, 13, 14], tree)
    assert out.path == (0,)
    assert out.next_token == 50


def test_empty_tree_emits_the_targets_token() -> None:
    out = accept_greedy([7], EMPTY_TREE)
    assert out == Acceptance(path=(), tokens=(), next_token=7, bonus=True)
    assert out.emitted == (7,)


def test_single_node_accepted_and_rejected() -> None:
    tree = DraftTree.chain([3])
    assert accept_greedy([3, 4], tree) == Acceptance((0,), (3,), 4, True)
    assert accept_greedy([5, 4], tree) == Acceptance((), (), 5, False)


# --- trees ------------------------------------------------------------------------------


def test_docstring_example() -> None:
    tree = DraftTree((5, 7, 9), (-1, 0, -1))
    assert accept_greedy([9, 4, 1, 3], tree) == Acceptance((2,), (9,), 3, True)


def test_matching_branch_is_second_child() -> None:
    #   root -> 10 (node 0) -> 11 (node 1)
    #        -> 20 (node 2) -> 21 (node 3) -> 22 (node 4)
    tree = DraftTree((10, 11, 20, 21, 22), (-1, 0, -1, 2, 3))
    out = accept_greedy([20, X, X, 21, 22, 23], tree)
    assert out == Acceptance((2, 3, 4), (20, 21, 22), 23, True)


def test_matching_branch_is_third_child_then_recovered() -> None:
    #   root -> 1 (0), 2 (1), 3 (2); node 2 -> 4 (3), 5 (4)
    tree = DraftTree((1, 2, 3, 4, 5), (-1, -1, -1, 2, 2))
    out = accept_greedy([3, X, X, 6, X, X], tree)  # after node 2 the target wants 6: no child has it
    assert out == Acceptance((2,), (3,), 6, False)


def test_matching_grandchild_is_third_child() -> None:
    tree = DraftTree((1, 2, 3, 4, 5), (-1, -1, -1, 2, 2))
    out = accept_greedy([3, X, X, 5, X, 8], tree)
    assert out == Acceptance((2, 4), (3, 5), 8, True)


def test_siblings_interleaved_with_descendants() -> None:
    # Children of the root are nodes 0, 2, 5; the index order mixes levels.
    tree = DraftTree((1, 9, 2, 8, 7, 3, 6), (-1, 0, -1, 2, 3, -1, 5))
    out = accept_greedy([3, X, X, X, X, X, 6, 4], tree)
    assert out == Acceptance((5, 6), (3, 6), 4, True)
    out = accept_greedy([2, X, X, 8, 7, 0, X, X], tree)
    assert out == Acceptance((2, 3, 4), (2, 8, 7), 0, True)


def test_deep_tree() -> None:
    # A 12-deep main branch with a distractor sibling at every level.
    tokens: list[int] = []
    parents: list[int] = []
    spine: list[int] = []
    parent = -1
    for depth in range(12):
        tokens.append(100 + depth)  # distractor first
        parents.append(parent)
        tokens.append(depth)  # the branch the target follows
        parents.append(parent)
        parent = len(tokens) - 1
        spine.append(parent)
    tree = DraftTree(tuple(tokens), tuple(parents))
    target = [X] * (1 + tree.size)
    target[0] = 0
    for depth, node in enumerate(spine):
        target[node + 1] = depth + 1 if depth + 1 < 12 else 777
    out = accept_greedy(target, tree)
    assert out.path == tuple(spine)
    assert out.tokens == tuple(range(12))
    assert out.next_token == 777 and out.bonus

    # Break it at depth 7: the target wants something else after the 7th spine node.
    target[spine[6] + 1] = 555
    out = accept_greedy(target, tree)
    assert out.path == tuple(spine[:7])
    assert out.next_token == 555 and not out.bonus


def test_repeated_sibling_tokens_take_the_longest_match() -> None:
    # Two root children carry the same token 5; only the second continues with a match.
    tree = DraftTree((5, 5, 7), (-1, -1, 1))
    assert accept_greedy([5, 1, 7, 2], tree) == Acceptance((1, 2), (5, 7), 2, True)
    # When neither continues, the first of the equally long matches wins.
    assert accept_greedy([5, 1, 3, 2], tree) == Acceptance((0,), (5,), 1, True)


def test_accepts_a_lossless_continuation_of_target_greedy() -> None:
    """Emitted tokens are exactly what the target's own greedy decoding would produce."""

    def target_next(context: tuple[int, ...]) -> int:  # a deterministic toy "model"
        return (sum(context) * 7 + len(context) * 3) % 5

    prefix = (1, 2)
    tree = DraftTree((0, 1, 3, 2, 4, 0), (-1, -1, 0, 0, 3, 4))
    rows = [target_next(prefix)] + [
        target_next(prefix + tuple(tree.tokens[j] for j in path_to(i, tree.parents))) for i in range(tree.size)
    ]
    out = accept_greedy(rows, tree)
    context: tuple[int, ...] = prefix
    for tok in out.emitted:
        assert tok == target_next(context)
        context += (tok,)


# --- property test against a brute-force reference -----------------------------------------


@st.composite
def trees_and_targets(draw: st.DrawFn) -> tuple[DraftTree, list[int]]:
    vocab = draw(st.integers(1, 4))  # tiny vocab: many matches and repeated siblings
    n = draw(st.integers(0, 14))
    parents = [draw(st.integers(-1, i - 1)) for i in range(n)]
    tokens = [draw(st.integers(0, vocab - 1)) for _ in range(n)]
    target = [draw(st.integers(0, vocab - 1)) for _ in range(n + 1)]
    return DraftTree(tuple(tokens), tuple(parents)), target


def _matches(path: list[int], tree: DraftTree, target: list[int]) -> bool:
    return all(tree.tokens[node] == target[tree.parents[node] + 1] for node in path)


@settings(max_examples=400, deadline=None)
@given(trees_and_targets())
def test_greedy_equals_brute_force(case: tuple[DraftTree, list[int]]) -> None:
    tree, target = case
    paths: list[list[int]] = [[]] + [path_to(i, tree.parents) for i in range(tree.size)]
    longest = max(len(p) for p in paths if _matches(p, tree, target))

    out = accept_greedy(target, tree)
    path = list(out.path)
    assert len(path) == longest
    assert path in paths and _matches(path, tree, target)
    assert out.tokens == tuple(tree.tokens[i] for i in path)
    last = path[-1] if path else -1
    assert out.next_token == target[last + 1]
    assert out.bonus == (last not in children_lists(tree.parents))
