"""ReDrafter head: the recurrence, beam search against a plain reference, dynamic-tree packing, best-node trees."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from spec_decode.redrafter_head import (
    Beams,
    HeadConfig,
    ReDrafterHead,
    beam_search,
    beam_shape,
    best_nodes_tree,
    head_tree,
    pack_beams,
)
from spec_decode.tree import path_to

V, E = 12, 8


def make_head(seed: int = 0, vocab_ids: tuple[int, ...] = ()) -> ReDrafterHead:
    g = torch.Generator().manual_seed(seed)
    embedding, lm_head = torch.randn(V, E, generator=g), torch.randn(V, E, generator=g)
    head = ReDrafterHead(HeadConfig(E, V, blocks=2, vocab_ids=vocab_ids), embedding, lm_head)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return head.eval()


def test_only_the_head_trains_and_the_recurrence_is_the_papers() -> None:
    head = make_head()
    names = {n for n, _ in head.named_parameters()}
    assert names == {"w.weight", "w.bias", "u.weight", "blocks.0.weight", "blocks.0.bias", "blocks.1.weight",
                     "blocks.1.bias", "proj.weight", "proj.bias"}  # fmt: skip
    h, s, tok = torch.randn(3, E), torch.randn(3, E), torch.tensor([1, 5, 7])
    logits, s1 = head.step(h, s, tok)
    want_s = torch.nn.functional.silu(head.w(head.embedding[tok]) + head.u(s))
    torch.testing.assert_close(s1, want_s)
    x = torch.cat([h, want_s], -1)
    for block in head.blocks:
        x = x + torch.nn.functional.silu(block(x))
    torch.testing.assert_close(logits, head.proj(x) @ head.lm_head.T)
    assert logits.shape == (3, V)
    fresh = ReDrafterHead(HeadConfig(E, V), head.embedding, head.lm_head)
    x = torch.randn(2, 2 * E)
    assert all(torch.equal(b(x), torch.zeros(2, 2 * E)) for b in fresh.blocks)  # blocks start as identity


def test_teacher_forced_forward_matches_steps() -> None:
    head = make_head(1)
    h, tokens = torch.randn(2, E), torch.tensor([[3, 4, 5, 6], [7, 8, 9, 10]])
    out = head(h, tokens)  # [2, 3, V]
    state = head.initial_state(2)
    for j in range(3):
        logits, state = head.step(h, state, tokens[:, j])
        torch.testing.assert_close(out[:, j], logits)


def reference_beam_search(head: ReDrafterHead, h: torch.Tensor, last: int, width: int, length: int, top_k: int):
    """Plain Python beam search: every beam expanded by its top-k, best ``width`` kept."""
    beams = [((), 0.0, head.initial_state(1), last)]
    for _ in range(length):
        cands = []
        for seq, score, state, prev in beams:
            logits, new_state = head.step(h[None], state, torch.tensor([prev]))
            top = logits[0].topk(min(top_k, logits.shape[-1]))
            logp = torch.log_softmax(top.values, -1)
            for lp, idx in zip(logp.tolist(), top.indices.tolist(), strict=True):
                tok = int(head.to_token_ids(torch.tensor(idx)))
                cands.append(((*seq, tok), score + lp, new_state, tok))
        cands.sort(key=lambda c: -c[1])
        beams = cands[:width]
    return [b[0] for b in beams], [b[1] for b in beams]


@pytest.mark.parametrize(("width", "length", "top_k"), [(1, 3, 50), (4, 3, 50), (5, 2, 3), (10, 4, 6)])
def test_beam_search_equals_the_plain_reference(width: int, length: int, top_k: int) -> None:
    head = make_head(2)
    h = torch.randn(E, generator=torch.Generator().manual_seed(9))
    got = beam_search(head, h, 4, width, length, top_k)
    want_tokens, want_scores = reference_beam_search(head, h, 4, width, length, top_k)
    assert list(got.tokens) == want_tokens
    assert got.scores == pytest.approx(want_scores, abs=1e-5)
    assert list(got.scores) == sorted(got.scores, reverse=True)


def test_width_one_is_greedy_and_length_one_is_the_top_tokens() -> None:
    head = make_head(3)
    h = torch.randn(E)
    greedy = beam_search(head, h, 2, width=1, length=3, top_k=V)
    state, prev, seq = head.initial_state(1), torch.tensor([2]), []
    for _ in range(3):
        logits, state = head.step(h[None], state, prev)
        prev = logits.argmax(-1)
        seq.append(int(prev))
    assert greedy.tokens == (tuple(seq),)
    first = beam_search(head, h, 2, width=5, length=1, top_k=V)
    logits, _ = head.step(h[None], head.initial_state(1), torch.tensor([2]))
    assert [b[0] for b in first.tokens] == logits[0].topk(5).indices.tolist()
    assert math.isclose(sum(math.exp(s) for s in beam_search(head, h, 2, V, 1, V).scores), 1.0, rel_tol=1e-5)


def test_sub_vocabulary_drafts_only_its_tokens() -> None:
    ids = (1, 3, 5, 7, 9)
    head = make_head(4, vocab_ids=ids)
    beams = beam_search(head, torch.randn(E), 0, width=6, length=3, top_k=4)
    assert all(t in ids for beam in beams.tokens for t in beam)
    with pytest.raises(ValueError, match="vocab_ids"):
        HeadConfig(E, V, vocab_ids=(V,)).validate()


def test_pack_beams_shares_prefixes_and_keeps_every_beam() -> None:
    beams = Beams(((1, 2, 3), (1, 2, 4), (1, 5, 6), (7, 8, 9)), (0.0, -1.0, -2.0, -3.0))
    tree = pack_beams(beams, max_nodes=64)
    assert tree.size == 3 + 1 + 2 + 3  # 12 beam tokens, 9 distinct prefixes
    paths = {tuple(tree.tokens[i] for i in path_to(n, tree.parents)) for n in range(tree.size)}
    assert all(beam in paths for beam in beams.tokens)
    small = pack_beams(beams, max_nodes=5)  # best beams first; the one that does not fit is cut
    small_paths = {tuple(small.tokens[i] for i in path_to(n, small.parents)) for n in range(small.size)}
    assert small.size == 5 and (1, 2, 3) in small_paths and (1, 2, 4) in small_paths and (1, 5) in small_paths


def _node_paths(tree) -> list[tuple[int, ...]]:
    return [tuple(tree.tokens[i] for i in path_to(n, tree.parents)) for n in range(tree.size)]


def _path_score(head: ReDrafterHead, h: torch.Tensor, last: int, path: tuple[int, ...], top_k: int) -> float:
    """Summed top-k warped log-probability of ``path`` under the head, one plain step at a time."""
    state, prev, score = head.initial_state(1), torch.tensor([last]), 0.0
    for tok in path:
        logits, state = head.step(h[None], state, prev)
        top = logits[0].topk(min(top_k, logits.shape[-1]))
        logp = dict(zip(top.indices.tolist(), torch.log_softmax(top.values, -1).tolist(), strict=True))
        score += logp[tok]
        prev = torch.tensor([tok])
    return score


def test_best_nodes_tree_of_a_full_search_is_the_most_probable_nodes() -> None:
    """When the search expands every path (width >= V ** length), the tree is exactly the
    ``max_nodes`` most probable token paths of the head, by brute force over all of them."""
    head = make_head(5)
    h = torch.randn(E, generator=torch.Generator().manual_seed(3))
    every = [(a,) for a in range(V)] + [(a, b) for a in range(V) for b in range(V)]
    score = {path: _path_score(head, h, 4, path, V) for path in every}
    for max_nodes in (1, 5, 17, 40, len(every)):
        tree = best_nodes_tree(head, h, 4, width=V * V, length=2, max_nodes=max_nodes, top_k=V)
        paths = _node_paths(tree)
        assert tree.size == max_nodes and len(set(paths)) == max_nodes
        assert all(p < i for i, p in enumerate(tree.parents))  # parents first
        got = sorted(score[p] for p in paths)
        want = sorted(score.values())[-max_nodes:]
        assert got == pytest.approx(want, abs=1e-5)  # the most probable ones (ties may pick either path)
        kept = [score[p] for p in paths]
        assert all(a >= b - 1e-6 for a, b in itertools.pairwise(kept))  # listed best first


@pytest.mark.parametrize(("width", "length"), [(1, 4), (3, 3), (10, 4)])
def test_best_nodes_tree_holds_the_beams_and_its_cuts_are_its_prefixes(width: int, length: int) -> None:
    """The search is beam search's, so with room for every candidate the tree holds every beam;
    the tree cut to n nodes is the first n nodes of a bigger one (what the tree budget relies on)."""
    head = make_head(6)
    h = torch.randn(E, generator=torch.Generator().manual_seed(1))
    beams = beam_search(head, h, 3, width, length, top_k=6)
    full = best_nodes_tree(head, h, 3, width, length, max_nodes=10_000, top_k=6)
    assert set(beams.tokens) <= set(_node_paths(full))
    assert full.size == sum(6 * min(width, 6**d) for d in range(length))  # every candidate: top_k per beam
    for n in (1, 3, 8):
        cut = best_nodes_tree(head, h, 3, width, length, max_nodes=n, top_k=6)
        assert (cut.tokens, cut.parents) == (full.tokens[:n], full.parents[:n])
    chain = best_nodes_tree(head, h, 3, 1, length, max_nodes=64, top_k=6)  # width 1: greedy + siblings
    assert _node_paths(chain)[0] == beam_search(head, h, 3, 1, 1, top_k=6).tokens[0]


def test_head_tree_modes_budgets_and_refusals() -> None:
    head = make_head(7)
    h = torch.randn(E)
    beams_tree = head_tree("beams", head, h, 2, 4, 3, max_nodes=64, top_k=6)
    packed = pack_beams(beam_search(head, h, 2, 4, 3, top_k=6), 64)
    assert (beams_tree.tokens, beams_tree.parents) == (packed.tokens, packed.parents)
    nodes_tree = head_tree("", head, h, 2, 4, 3, max_nodes=64, top_k=6)
    assert nodes_tree.size == 12  # as many nodes as the beams' tokens (4 x 3)
    assert head_tree("nodes", head, h, 2, 4, 3, max_nodes=64, top_k=6) == nodes_tree
    small = head_tree("nodes", head, h, 2, 4, 3, max_nodes=5, top_k=6)
    assert small == best_nodes_tree(head, h, 2, 3, 3, 5, top_k=6)  # the beams' search under the budget: (3, 3)
    assert beam_shape(4, 3, 5) == (3, 3)
    assert head_tree("nodes", head, h, 2, 4, 3, max_nodes=0).size == 0
    assert head_tree("beams", head, h, 2, 4, 3, max_nodes=0).size == 0
    with pytest.raises(ValueError, match="head tree"):
        head_tree("wide", head, h, 2, 4, 3, max_nodes=8)
    with pytest.raises(ValueError, match="positive"):
        best_nodes_tree(head, h, 2, 0, 3, 8)
