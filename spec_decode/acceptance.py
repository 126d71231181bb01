"""Acceptance rules: pure functions from target scores and a draft tree to an Acceptance.

No I/O, no model: the verifier computes the target's scores for the root row and every
tree node row (see :mod:`spec_decode.tree` for the row convention) and calls one of these.
The math, with proofs of exactness, is in docs/ALGORITHMS.md.
"""

from __future__ import annotations

import torch

from spec_decode.sampling import sample
from spec_decode.tree import children_lists
from spec_decode.types import Acceptance, DraftTree, SparseProbs


def accept_greedy(target_tokens: list[int], tree: DraftTree) -> Acceptance:
    """Longest root path whose every token equals the target's argmax at its parent.

    Args:
        target_tokens: ``[1 + N]`` the target's argmax token per row; row 0 is the root
            (pending token), row ``i + 1`` is tree node ``i``.
        tree: the draft tree that was scored.

    Returns the accepted path and the target's token after it: the output equals the
    target's own greedy decoding token for token. Siblings may carry the same token; the
    longest matching path wins (the earlier child on a tie).

    Example:
        tree tokens [5, 7, 9], parents [-1, 0, -1] (5 -> 7, and 9 as a sibling of 5);
        target_tokens [9, 4, 1, 3]: row 0 wants 9, node 2 (token 9) matches, node 2 is a
        leaf so its row (3) wants 3 -> path (2,), tokens (9,), next_token 3, bonus True.
    """
    kids = children_lists(tree.parents)
    # Siblings may repeat a token, so more than one child can match: for every node keep
    # the longest run of matching descendants below it and the (first) child starting it.
    # Children have larger indices than their parents, so one reverse sweep suffices.
    run: dict[int, int] = {}
    best: dict[int, int] = {}
    for node in range(tree.size - 1, -2, -1):
        want = target_tokens[node + 1]
        run[node] = 0
        for child in kids.get(node, []):
            if tree.tokens[child] == want and run[child] + 1 > run[node]:
                run[node] = run[child] + 1
                best[node] = child
    path: list[int] = []
    node = -1
    while node in best:
        node = best[node]
        path.append(node)
    return Acceptance(
        tuple(path), tuple(tree.tokens[i] for i in path), target_tokens[node + 1], bonus=not kids.get(node)
    )


def accept_sampling(
    target_probs: torch.Tensor,  # [1 + N, V] warped target distributions per row
    tree: DraftTree,
    generator: torch.Generator | None,
) -> Acceptance:
    """Recursive (multi-draft) rejection sampling over a tree: output ~ the target exactly.

    At each node the children are tried in order. Child c, drawn from its draft
    distribution q_c (``tree.draft_probs[c]``, or a point mass on its token for a
    model-free drafter), is accepted with probability min(1, p(x_c) / q_c(x_c)); on
    rejection p becomes norm(max(0, p - q_c)) and the next child is tried. When all
    children are rejected the recovered token is sampled from the residual p; at a leaf
    with every token on its path accepted the bonus token is sampled from p.

    Exact when each child's token was drawn from its own q independently of its
    siblings (i.i.d. draws from one q, or fixed tokens with point-mass q, both qualify).

    Example:
        a chain of one node with token 3 and q = point mass on 3: the node is accepted
        with probability p_root(3); otherwise the token comes from p_root with 3 removed.
    """
    kids = children_lists(tree.parents)
    path: list[int] = []
    node = -1
    p = target_probs[0]  # [V]
    while True:
        children = kids.get(node, [])
        accepted = None
        for child in children:
            token = tree.tokens[child]
            q = tree.draft_probs[child] if tree.draft_probs else None
            if q is not None and not q.ids:
                q = None  # an empty entry: this node is a point mass (mixed tree)
            q_token = _q_of(q, token)
            p_token = float(p[token])
            u = float(torch.rand((), generator=generator, device=p.device))
            if u * q_token < p_token:  # u < min(1, p/q) without dividing
                accepted = child
                break
            p = _residual(p, q, token)
        if accepted is None:
            return Acceptance(
                tuple(path), tuple(tree.tokens[i] for i in path), sample(p, generator), bonus=not children
            )
        path.append(accepted)
        node = accepted
        p = target_probs[node + 1]


def _q_of(q: SparseProbs | None, token: int) -> float:
    if q is None:
        return 1.0
    for tid, prob in zip(q.ids, q.probs, strict=True):
        if tid == token:
            return prob
    return 0.0


def _residual(p: torch.Tensor, q: SparseProbs | None, token: int) -> torch.Tensor:
    """norm(max(0, p - q)) for a sparse or point-mass q (``p``: ``[V]``)."""
    out = p.clone()
    if q is None:
        out[token] = 0.0
    else:
        ids = torch.tensor(q.ids, dtype=torch.long, device=p.device)
        probs = torch.tensor(q.probs, dtype=p.dtype, device=p.device)
        out[ids] = torch.clamp(out[ids] - probs, min=0.0)
    total = out.sum()
    if float(total) <= 0.0:
        # p <= q everywhere means p == q (up to rounding): rejection had probability 0.
        # Sampling from p keeps the rule well defined for float round-off.
        return p
    return out / total
