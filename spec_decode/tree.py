"""Draft-tree validation and the tensors one tree pass needs.

Index conventions (used by the target engine and the acceptance rules alike): a pass over
a tree feeds ``1 + N`` tokens, row 0 being the session's *pending* token (the root; the
last emitted token, not yet in the KV cache) and row ``i + 1`` being tree node ``i``.
Node ``i`` attends to the cached prefix, the root, and its own ancestors (itself
included); its position id is ``prefix_len + depth(i)`` where root children have depth 1.
The math is in docs/ALGORITHMS.md.
"""

from __future__ import annotations

import torch

from spec_decode.errors import InvalidArgument
from spec_decode.types import DraftTree


def validate_tree(tree: DraftTree, *, vocab_size: int, max_nodes: int, max_top_k: int) -> None:
    """Raise :class:`InvalidArgument` saying what is wrong with ``tree``, if anything."""
    n = len(tree.tokens)
    if len(tree.parents) != n:
        raise InvalidArgument(f"draft tree has {n} tokens but {len(tree.parents)} parent indices")
    if n > max_nodes:
        raise InvalidArgument(f"draft tree has {n} nodes; the limit is {max_nodes}")
    for i, (tok, parent) in enumerate(zip(tree.tokens, tree.parents, strict=True)):
        if not 0 <= tok < vocab_size:
            raise InvalidArgument(f"draft tree node {i}: token id {tok} is outside the vocabulary [0, {vocab_size})")
        if parent >= i:
            if parent == i:
                kind = "a node that is its own parent (a cycle)"
            elif parent < n:
                kind = "a forward parent reference (parents must come first; this also rules out cycles)"
            else:
                kind = "an out-of-range parent"
            raise InvalidArgument(
                f"draft tree node {i}: parent index {parent} must be -1 or an earlier node (< {i}); "
                f"this tree has {kind}"
            )
        if parent < -1:
            raise InvalidArgument(f"draft tree node {i}: parent index {parent} is out of range (must be >= -1)")
    if tree.draft_probs:
        if len(tree.draft_probs) != n:
            raise InvalidArgument(
                f"draft tree carries draft probabilities for {len(tree.draft_probs)} nodes; it has {n} "
                "(send one per node, or none for a model-free drafter)"
            )
        for i, q in enumerate(tree.draft_probs):
            if q.ids or q.probs:  # an empty entry marks a point-mass node in a mixed tree
                _validate_sparse(i, q, tree.tokens[i], vocab_size=vocab_size, max_top_k=max_top_k)


def _validate_sparse(i: int, q: object, token: int, *, vocab_size: int, max_top_k: int) -> None:
    ids = getattr(q, "ids", ())
    probs = getattr(q, "probs", ())
    if len(ids) != len(probs):
        raise InvalidArgument(f"draft tree node {i}: {len(ids)} draft ids but {len(probs)} draft probs")
    if not 0 < len(ids) <= max_top_k:
        raise InvalidArgument(f"draft tree node {i}: draft distribution has {len(ids)} entries; allowed 1..{max_top_k}")
    if len(set(ids)) != len(ids):
        raise InvalidArgument(f"draft tree node {i}: draft ids repeat")
    total = 0.0
    token_prob = 0.0
    for tid, prob in zip(ids, probs, strict=True):
        if not 0 <= tid < vocab_size:
            raise InvalidArgument(f"draft tree node {i}: draft id {tid} is outside the vocabulary [0, {vocab_size})")
        if not prob >= 0.0 or prob > 1.0 + 1e-4:  # also catches NaN
            raise InvalidArgument(f"draft tree node {i}: draft prob {prob} is not in [0, 1]")
        total += prob
        if tid == token:
            token_prob = prob
    if abs(total - 1.0) > 1e-3:
        raise InvalidArgument(f"draft tree node {i}: draft probs sum to {total:.6f}, not 1")
    if token_prob <= 0.0:
        raise InvalidArgument(
            f"draft tree node {i}: its token {token} has probability 0 under its own draft distribution"
        )


def ancestor_matrix(parents: torch.Tensor) -> torch.Tensor:
    """Ancestor-or-self relation of a tree, without a Python loop per node.

    Args:
        parents: ``[N]`` long, parent index per node, -1 for root children, parents[i] < i.

    Returns:
        ``[N, N]`` bool, ``out[i, j]`` is True when node j is node i or one of its
        ancestors. Built by repeated squaring of the parent relation: O(N^3 log N) flops
        on a tiny N, no per-node Python work.
    """
    n = parents.shape[0]
    device = parents.device
    reach = torch.eye(n, dtype=torch.float32, device=device)  # [N, N]
    has_parent = parents >= 0
    if bool(has_parent.any()):
        rows = torch.arange(n, device=device)[has_parent]
        reach[rows, parents[has_parent]] = 1.0
    steps = max(1, (n - 1).bit_length())
    for _ in range(steps):
        reach = ((reach @ reach) > 0).to(torch.float32)
    return reach > 0


def tree_depths(ancestors: torch.Tensor) -> torch.Tensor:
    """``[N]`` long depth per node (root children have depth 1) from :func:`ancestor_matrix`."""
    return ancestors.sum(dim=1).to(torch.long)


def tree_pass_inputs(parents: torch.Tensor, prefix_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention mask and position ids for one pass over the root plus ``N`` tree nodes.

    Args:
        parents: ``[N]`` long parent indices (-1 = root).
        prefix_len: tokens already in the KV cache.

    Returns:
        mask: ``[1 + N, prefix_len + 1 + N]`` bool, True where attention is allowed.
        position_ids: ``[1 + N]`` long.
    """
    n = parents.shape[0]
    device = parents.device
    mask = torch.zeros(1 + n, prefix_len + 1 + n, dtype=torch.bool, device=device)
    mask[:, : prefix_len + 1] = True  # everyone sees the prefix and the root
    positions = torch.full((1 + n,), prefix_len, dtype=torch.long, device=device)
    if n:
        anc = ancestor_matrix(parents)  # [N, N]
        mask[1:, prefix_len + 1 :] = anc
        positions[1:] += tree_depths(anc)
    return mask, positions


def children_lists(parents: tuple[int, ...] | list[int]) -> dict[int, list[int]]:
    """Children of every node in order, keyed by parent index (-1 = root)."""
    kids: dict[int, list[int]] = {}
    for i, parent in enumerate(parents):
        kids.setdefault(parent, []).append(i)
    return kids


def path_to(node: int, parents: tuple[int, ...] | list[int]) -> list[int]:
    """Node indices from the root's child down to ``node`` (inclusive); [] for -1."""
    path: list[int] = []
    while node >= 0:
        path.append(node)
        node = parents[node]
    path.reverse()
    return path


def truncate_tree(tree: DraftTree, max_nodes: int) -> DraftTree:
    """The first ``max_nodes`` nodes of ``tree`` (a valid tree: parents come before children),
    with their draft probabilities."""
    if tree.size <= max_nodes:
        return tree
    keep = max(0, max_nodes)
    if any(p >= i for i, p in enumerate(tree.parents[:keep])):
        raise ValueError("truncate_tree needs every parent before its children")
    return DraftTree(tuple(tree.tokens[:keep]), tuple(tree.parents[:keep]), tuple(tree.draft_probs[:keep]))


def node_depths(parents: tuple[int, ...] | list[int]) -> list[int]:
    """Depth per node (root children have depth 1) of a tree whose parents come first."""
    depths: list[int] = []
    for parent in parents:
        depths.append(1 if parent < 0 else depths[parent] + 1)
    return depths


def cut_depth(tree: DraftTree, max_depth: int) -> DraftTree:
    """``tree`` without the nodes deeper than ``max_depth`` (whole levels go; the rest keep their
    order, parents and draft probabilities). A step over a tree emits at most its depth + 1 tokens,
    so this is how a tree is fitted to the tokens a request has left."""
    depths = node_depths(tree.parents)
    if max(depths, default=0) <= max_depth:
        return tree
    kept = [i for i, d in enumerate(depths) if d <= max_depth]
    new_index = {old: new for new, old in enumerate(kept)}
    parents = tuple(-1 if tree.parents[i] < 0 else new_index[tree.parents[i]] for i in kept)
    probs = tuple(tree.draft_probs[i] for i in kept) if tree.draft_probs else ()
    return DraftTree(tuple(tree.tokens[i] for i in kept), parents, probs)


def merge_paths(paths: list[list[int]]) -> DraftTree:
    """A tree holding each token sequence as a root-to-node path, sharing common prefixes."""
    tokens: list[int] = []
    parents: list[int] = []
    index: dict[tuple[int, int], int] = {}
    for seq in paths:
        parent = -1
        for tok in seq:
            key = (parent, tok)
            node = index.get(key)
            if node is None:
                node = len(tokens)
                tokens.append(tok)
                parents.append(parent)
                index[key] = node
            parent = node
    return DraftTree(tuple(tokens), tuple(parents))
