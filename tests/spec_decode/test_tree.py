"""Draft-tree validation, the tensors of one tree pass, and path helpers (spec_decode/tree.py)."""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spec_decode.errors import InvalidArgument
from spec_decode.tree import (
    ancestor_matrix,
    children_lists,
    cut_depth,
    merge_paths,
    node_depths,
    path_to,
    tree_depths,
    tree_pass_inputs,
    truncate_tree,
    validate_tree,
)
from spec_decode.types import EMPTY_TREE, DraftTree, SparseProbs

VOCAB = 10
LIMITS = {"vocab_size": VOCAB, "max_nodes": 6, "max_top_k": 3}


def q(*pairs: tuple[int, float]) -> SparseProbs:
    return SparseProbs(tuple(i for i, _ in pairs), tuple(p for _, p in pairs))


# --- validate_tree -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tree",
    [
        EMPTY_TREE,
        DraftTree.chain([1, 2, 3]),
        DraftTree((1, 2, 3, 4, 5, 6), (-1, -1, 0, 0, 1, 4)),
        DraftTree.chain(
            [0, 9],
            (
                q((0, 0.5), (3, 0.5)),
                q(
                    (9, 1.0),
                ),
            ),
        ),
        # q entries may be 0 for ids other than the node's token; sums within 1e-3 pass.
        DraftTree.chain([4], (q((4, 0.7), (5, 0.0), (6, 0.3004)),)),
        # Repeated sibling tokens are allowed (i.i.d. draws can repeat).
        DraftTree((2, 2), (-1, -1), (q((2, 0.6), (3, 0.4)), q((2, 0.6), (3, 0.4)))),
    ],
    ids=["empty", "chain", "branching", "with-q", "q-zero-entry", "repeated-siblings"],
)
def test_valid_trees_pass(tree: DraftTree) -> None:
    validate_tree(tree, **LIMITS)


BAD_TREES = [
    ("length-mismatch", DraftTree((1, 2), (-1,)), "draft tree has 2 tokens but 1 parent indices"),
    ("too-many-nodes", DraftTree.chain([1] * 7), "draft tree has 7 nodes; the limit is 6"),
    ("token-too-big", DraftTree.chain([1, VOCAB]), "node 1: token id 10 is outside the vocabulary [0, 10)"),
    ("token-negative", DraftTree.chain([-1]), "node 0: token id -1 is outside the vocabulary [0, 10)"),
    (
        "self-parent",
        DraftTree((1, 2), (-1, 1)),
        "node 1: parent index 1 must be -1 or an earlier node (< 1); this tree has a node that is its own parent",
    ),
    (
        "later-parent",
        DraftTree((1, 2, 3), (1, 0, -1)),
        "node 0: parent index 1 must be -1 or an earlier node (< 0); this tree has a forward parent reference",
    ),
    (
        "parent-out-of-range",
        DraftTree((1, 2), (-1, 5)),
        "node 1: parent index 5 must be -1 or an earlier node (< 1); this tree has an out-of-range parent",
    ),
    ("parent-below-minus-one", DraftTree((1, 2), (-1, -2)), "node 1: parent index -2 is out of range (must be >= -1)"),
    ("probs-count", DraftTree.chain([1, 2], (q((1, 1.0)),)), "carries draft probabilities for 1 nodes; it has 2"),
    ("ids-probs-length", DraftTree.chain([1], (SparseProbs((1, 2), (1.0,)),)), "node 0: 2 draft ids but 1 draft probs"),
    (
        "probs-without-ids",
        DraftTree.chain([1], (SparseProbs((), (1.0,)),)),
        "node 0: 0 draft ids but 1 draft probs",
    ),
    (
        "too-many-entries",
        DraftTree.chain([1], (q((1, 0.25), (2, 0.25), (3, 0.25), (4, 0.25)),)),
        "node 0: draft distribution has 4 entries; allowed 1..3",
    ),
    ("repeated-ids", DraftTree.chain([1], (q((1, 0.5), (1, 0.5)),)), "node 0: draft ids repeat"),
    (
        "id-outside-vocab",
        DraftTree.chain([1], (q((1, 0.5), (12, 0.5)),)),
        "node 0: draft id 12 is outside the vocabulary [0, 10)",
    ),
    ("negative-prob", DraftTree.chain([1], (q((1, 1.2), (2, -0.2)),)), "node 0: draft prob 1.2 is not in [0, 1]"),
    ("negative-prob-2", DraftTree.chain([1], (q((1, 0.9), (2, -0.1), (3, 0.2)),)), "draft prob -0.1 is not in"),
    ("nan-prob", DraftTree.chain([1], (q((1, float("nan"))),)), "node 0: draft prob nan is not in [0, 1]"),
    ("sum-below-1", DraftTree.chain([1], (q((1, 0.5), (2, 0.4)),)), "node 0: draft probs sum to 0.900000, not 1"),
    (
        "sum-above-1",
        DraftTree.chain([1, 2], (q((1, 1.0)), q((2, 0.6), (3, 0.6)))),
        "node 1: draft probs sum to 1.200000, not 1",
    ),
    (
        "token-not-in-q",
        DraftTree.chain([1], (q((2, 1.0)),)),
        "node 0: its token 1 has probability 0 under its own draft distribution",
    ),
    ("token-with-q-zero", DraftTree.chain([1], (q((1, 0.0), (2, 1.0)),)), "node 0: its token 1 has probability 0"),
]


@pytest.mark.parametrize(("tree", "message"), [c[1:] for c in BAD_TREES], ids=[c[0] for c in BAD_TREES])
def test_malformed_trees_are_rejected_with_a_clear_message(tree: DraftTree, message: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)) as info:
        validate_tree(tree, **LIMITS)
    assert info.value.code == "INVALID_ARGUMENT"


def test_first_problem_is_reported() -> None:
    # Node 1 has a bad token and node 2 a bad parent: the earlier node is named.
    with pytest.raises(InvalidArgument, match="node 1: token id 11"):
        validate_tree(DraftTree((1, 11, 2), (-1, 0, 7)), **LIMITS)


# --- ancestor_matrix / tree_depths -------------------------------------------------------------


def brute_ancestors(parents: list[int]) -> torch.Tensor:
    n = len(parents)
    out = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        node = i
        while node >= 0:
            out[i, node] = True
            node = parents[node]
    return out


def test_ancestor_matrix_hand_example() -> None:
    #   root -> 0 -> 1 -> 3
    #             -> 2
    #        -> 4
    parents = torch.tensor([-1, 0, 0, 1, -1])
    anc = ancestor_matrix(parents)
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [1, 0, 1, 0, 0],
            [1, 1, 0, 1, 0],
            [0, 0, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(anc, expected)
    assert tree_depths(anc).tolist() == [1, 2, 2, 3, 1]
    assert tree_depths(anc).dtype == torch.long


def test_ancestor_matrix_empty_and_single() -> None:
    assert ancestor_matrix(torch.zeros(0, dtype=torch.long)).shape == (0, 0)
    assert tree_depths(ancestor_matrix(torch.zeros(0, dtype=torch.long))).tolist() == []
    assert ancestor_matrix(torch.tensor([-1])).tolist() == [[True]]


def test_ancestor_matrix_long_chain() -> None:
    n = 33  # depth 33 needs 2^k >= 32 hops: checks the number of squarings at a power-of-two edge
    parents = torch.arange(-1, n - 1)
    anc = ancestor_matrix(parents)
    assert torch.equal(anc, torch.ones(n, n, dtype=torch.bool).tril())
    assert tree_depths(anc).tolist() == list(range(1, n + 1))


@st.composite
def parent_lists(draw: st.DrawFn, max_nodes: int = 40) -> list[int]:
    n = draw(st.integers(0, max_nodes))
    chainy = draw(st.booleans())  # bias some trees towards deep chains
    parents = []
    for i in range(n):
        if chainy and draw(st.integers(0, 4)) > 0:
            parents.append(i - 1)
        else:
            parents.append(draw(st.integers(-1, i - 1)))
    return parents


@settings(max_examples=200, deadline=None)
@given(parent_lists())
def test_ancestor_matrix_and_depths_match_brute_force(parents: list[int]) -> None:
    anc = ancestor_matrix(torch.tensor(parents, dtype=torch.long))
    assert anc.dtype == torch.bool
    assert torch.equal(anc, brute_ancestors(parents))
    assert tree_depths(anc).tolist() == [len(path_to(i, parents)) for i in range(len(parents))]


# --- tree_pass_inputs --------------------------------------------------------------------------


def test_tree_pass_inputs_hand_example() -> None:
    #   root -> 0 -> 1
    #        -> 2
    parents = torch.tensor([-1, 0, -1])
    mask, pos = tree_pass_inputs(parents, prefix_len=2)
    #          p0 p1 root n0 n1 n2
    expected = [
        [1, 1, 1, 0, 0, 0],  # root
        [1, 1, 1, 1, 0, 0],  # node 0
        [1, 1, 1, 1, 1, 0],  # node 1 (child of node 0)
        [1, 1, 1, 0, 0, 1],  # node 2 (root child)
    ]
    assert mask.shape == (4, 6) and mask.dtype == torch.bool
    assert mask.int().tolist() == expected
    assert pos.dtype == torch.long
    assert pos.tolist() == [2, 3, 4, 3]


def test_tree_pass_inputs_empty_tree_and_empty_prefix() -> None:
    mask, pos = tree_pass_inputs(torch.zeros(0, dtype=torch.long), prefix_len=5)
    assert mask.tolist() == [[True] * 6]
    assert pos.tolist() == [5]
    mask, pos = tree_pass_inputs(torch.tensor([-1, 0]), prefix_len=0)
    assert mask.int().tolist() == [[1, 0, 0], [1, 1, 0], [1, 1, 1]]
    assert pos.tolist() == [0, 1, 2]


def test_tree_pass_inputs_chain_is_causal() -> None:
    """A chain's tree mask is the ordinary causal mask, its positions consecutive."""
    n, prefix = 5, 3
    mask, pos = tree_pass_inputs(torch.arange(-1, n - 1), prefix_len=prefix)
    causal = torch.ones(1 + n, prefix + 1 + n, dtype=torch.bool).tril(diagonal=prefix)
    assert torch.equal(mask, causal)
    assert pos.tolist() == list(range(prefix, prefix + 1 + n))


@settings(max_examples=100, deadline=None)
@given(parent_lists(max_nodes=20), st.integers(0, 7))
def test_tree_pass_inputs_properties(parents: list[int], prefix_len: int) -> None:
    n = len(parents)
    mask, pos = tree_pass_inputs(torch.tensor(parents, dtype=torch.long), prefix_len)
    assert mask.shape == (1 + n, prefix_len + 1 + n)
    assert mask[:, : prefix_len + 1].all()  # everyone sees the prefix and the root
    assert not mask[0, prefix_len + 1 :].any()  # the root sees no tree node
    assert torch.equal(mask[1:, prefix_len + 1 :], brute_ancestors(parents))
    assert pos[0] == prefix_len
    assert pos[1:].tolist() == [prefix_len + len(path_to(i, parents)) for i in range(n)]


# --- children_lists / path_to / merge_paths ----------------------------------------------------


def test_children_lists_keeps_order() -> None:
    assert children_lists((-1, 0, -1, 0, 2)) == {-1: [0, 2], 0: [1, 3], 2: [4]}
    assert children_lists(()) == {}


def test_path_to() -> None:
    parents = (-1, 0, -1, 1, 3)
    assert path_to(4, parents) == [0, 1, 3, 4]
    assert path_to(2, parents) == [2]
    assert path_to(-1, parents) == []


def test_merge_paths_shares_prefixes() -> None:
    tree = merge_paths([[1, 2, 3], [1, 2, 4], [1, 5], [6], [1, 2, 3]])
    assert tree == DraftTree(tokens=(1, 2, 3, 4, 5, 6), parents=(-1, 0, 1, 1, 0, -1))
    assert tree.draft_probs == ()


def test_merge_paths_same_token_under_different_parents_is_not_merged() -> None:
    tree = merge_paths([[1, 2], [2, 2]])
    assert tree == DraftTree((1, 2, 2, 2), (-1, 0, -1, 2))


def test_merge_paths_empty() -> None:
    assert merge_paths([]) == EMPTY_TREE
    assert merge_paths([[], []]) == EMPTY_TREE


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 3), max_size=6), max_size=8))
def test_merge_paths_round_trips_and_dedups(paths: list[list[int]]) -> None:
    tree = merge_paths(paths)
    validate_tree(tree, vocab_size=4, max_nodes=64, max_top_k=1)
    node_paths = [tuple(tree.tokens[j] for j in path_to(i, tree.parents)) for i in range(tree.size)]
    # Every input path is some node's root path ...
    for seq in paths:
        if seq:
            assert tuple(seq) in node_paths
    # ... and every node is a distinct prefix of some input path: nothing duplicated or invented.
    prefixes = {tuple(seq[:k]) for seq in paths for k in range(1, len(seq) + 1)}
    assert len(node_paths) == len(set(node_paths)) == len(prefixes)
    assert set(node_paths) == prefixes
    # No two siblings share a token.
    for kids in children_lists(tree.parents).values():
        assert len({tree.tokens[c] for c in kids}) == len(kids)


def test_empty_entry_marks_a_point_mass_node():
    """A mixed tree: node 0 sampled with q, node 1 a point mass (empty SparseProbs) is valid."""
    tree = DraftTree((1, 2), (-1, 0), (SparseProbs((1, 2), (0.5, 0.5)), SparseProbs()))
    validate_tree(tree, vocab_size=VOCAB, max_nodes=6, max_top_k=3)


# --- truncate_tree / node_depths / cut_depth ---------------------------------------------------


def _q(token: int) -> SparseProbs:
    return SparseProbs((token, 9), (0.75, 0.25))


def test_truncate_tree_keeps_the_first_nodes_with_their_draft_probs() -> None:
    tree = DraftTree((4, 5, 6), (-1, 0, -1), (_q(4), _q(5), _q(6)))
    assert truncate_tree(tree, 2) == DraftTree((4, 5), (-1, 0), (_q(4), _q(5)))
    assert truncate_tree(tree, 3) is tree
    assert truncate_tree(tree, -1) == EMPTY_TREE
    assert truncate_tree(DraftTree((4, 5), (-1, 0)), 1) == DraftTree((4,), (-1,))


def test_cut_depth_hand_example() -> None:
    #   root -> 0 -> 1 -> 3
    #        -> 2 -> 4
    #             -> 5 -> 6
    tree = DraftTree((10, 11, 12, 13, 14, 15, 16), (-1, 0, -1, 1, 2, 2, 5), tuple(_q(t) for t in range(10, 17)))
    assert node_depths(tree.parents) == [1, 2, 1, 3, 2, 2, 3]
    two = cut_depth(tree, 2)
    assert two.tokens == (10, 11, 12, 14, 15)
    assert two.parents == (-1, 0, -1, 2, 2)
    assert two.draft_probs == (_q(10), _q(11), _q(12), _q(14), _q(15))
    assert cut_depth(tree, 1) == DraftTree((10, 12), (-1, -1), (_q(10), _q(12)))
    assert cut_depth(tree, 0) == EMPTY_TREE
    assert cut_depth(tree, 3) is tree
    assert cut_depth(DraftTree.chain([1, 2, 3]), 2) == DraftTree.chain([1, 2])  # no probs stay no probs


def _root_paths(tokens: tuple[int, ...], parents: tuple[int, ...] | list[int]) -> set[tuple[int, ...]]:
    return {tuple(tokens[j] for j in path_to(i, parents)) for i in range(len(parents))}


@settings(max_examples=200, deadline=None)
@given(parent_lists(), st.integers(0, 12))
def test_cut_depth_keeps_exactly_the_shallow_paths(parents: list[int], max_depth: int) -> None:
    """The cut tree is valid and holds exactly the root paths of the original no longer than
    ``max_depth``, each node with the draft probabilities it had."""
    tokens = tuple(range(100, 100 + len(parents)))  # distinct: a path names its nodes
    tree = DraftTree(tokens, tuple(parents), tuple(_q(t) for t in tokens))
    cut = cut_depth(tree, max_depth)
    validate_tree(cut, vocab_size=200, max_nodes=len(parents), max_top_k=2)
    assert max(node_depths(cut.parents), default=0) <= max_depth
    expected = {p for p in _root_paths(tokens, parents) if len(p) <= max_depth}
    assert _root_paths(cut.tokens, cut.parents) == expected
    assert cut.draft_probs == tuple(_q(t) for t in cut.tokens)
