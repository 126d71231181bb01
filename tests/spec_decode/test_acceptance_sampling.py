"""Rejection sampling over draft trees (``accept_sampling``).

The statistical tests draft the way a real drafter does (tokens sampled from sparse q's
with a seeded generator), verify with ``accept_sampling``, and check that the first emitted
token, and the first two jointly, follow the target's p exactly: a chi-square test must not
reject, and the total-variation distance must be within sampling noise and shrink as the
number of samples grows. Negative controls run the same statistic on deliberately broken
rules to show that it has the power to notice. Everything is seeded, so it is deterministic.

Target model used throughout: ``p0`` (``[V]``) after the root, ``p1[x1]`` after a depth-1
node with token x1, ``p2[x1, x2]`` after a depth-2 node; the verifier's row for a node is the
target's distribution conditioned on that node's path (as the target service computes it).
When a step emits only one token, the second is drawn from ``p1[x1]``: the next target step.
The first two tokens must then follow ``p0[x1] * p1[x1, x2]``.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from spec_decode import acceptance
from spec_decode.acceptance import accept_sampling
from spec_decode.sampling import make_generator, truncate_top_k, warp_probs
from spec_decode.tree import children_lists, path_to, validate_tree
from spec_decode.types import Acceptance, DraftTree, SamplingParams, SparseProbs

V = 6  # vocabulary of the statistical tests
# TV bound = TV_MARGIN x the TV expected from exact sampling noise; under exact sampling the
# ratio exceeds 3.5 with probability < 1e-4 for 6 cells (less for more cells).
TV_MARGIN = 3.5


# --- helpers ------------------------------------------------------------------------------


def rand_probs(gen: torch.Generator, *shape: int, scale: float = 1.5) -> torch.Tensor:
    """Random distributions over the last dim (softmax of scaled Gaussians), float32."""
    return torch.softmax(scale * torch.randn(*shape, generator=gen), dim=-1)


def rand_sparse(gen: torch.Generator, k: int, vocab: int = V) -> SparseProbs:
    """A random top-k-truncated draft distribution with a random support."""
    return truncate_top_k(rand_probs(gen, vocab), k)


def draw(q: SparseProbs, n: int, gen: torch.Generator) -> torch.Tensor:
    """``[n]`` i.i.d. draws from a sparse q: what a sampling drafter sends."""
    idx = torch.multinomial(torch.tensor(q.probs, dtype=torch.float64), n, replacement=True, generator=gen)
    return torch.tensor(q.ids)[idx]


def draw_each(qs: list[SparseProbs], values: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """For every entry v of ``values`` one draw from ``qs[v]`` (vectorised per value)."""
    out = torch.empty_like(values)
    for v in range(len(qs)):
        at = (values == v).nonzero().flatten()
        if len(at):
            out[at] = draw(qs[v], len(at), gen)
    return out


def target_rows(tree: DraftTree, p0: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """``[1 + N, V]`` the target's row per node: p conditioned on the node's path (depth <= 2)."""
    rows = [p0]
    for i in range(tree.size):
        toks = [tree.tokens[j] for j in path_to(i, tree.parents)]
        rows.append(p1[toks[0]] if len(toks) == 1 else p2[toks[0], toks[1]])
    return torch.stack(rows)


def first_two(
    trees: list[DraftTree],
    p0: torch.Tensor,
    p1: torch.Tensor,
    p2: torch.Tensor,
    gen: torch.Generator,
    rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[Acceptance]]:
    """Verify every tree; return the first two emitted tokens per trial and the Acceptances."""
    results = [accept_sampling(rows if rows is not None else target_rows(t, p0, p1, p2), t, gen) for t in trees]
    first = torch.tensor([r.emitted[0] for r in results])
    second = torch.tensor([r.emitted[1] if len(r.emitted) > 1 else -1 for r in results])
    short = (second < 0).nonzero().flatten()
    if len(short):  # the next target step samples from p1[x1]
        second[short] = torch.multinomial(p1[first[short]], 1, generator=gen).flatten()
    return first, second, results


def tv_noise(expected: torch.Tensor, n: int) -> float:
    """Expected TV distance between ``expected`` and an empirical histogram of n exact draws."""
    p = expected.double().flatten()
    return float(0.5 * torch.sqrt(2.0 * p * (1.0 - p) / (math.pi * n)).sum())


def compare(samples: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    """Chi-square p-value and TV distance of integer ``samples`` (cell ids) against ``expected``.

    Cells the target gives probability 0 must never occur; they are left out of the test.
    Cells expecting fewer than 5 counts are pooled into one, as the chi-square test needs.
    """
    p = expected.double().flatten()
    n = len(samples)
    counts = torch.bincount(samples, minlength=len(p)).double()
    assert counts[p == 0].sum() == 0, "a token the target gives probability 0 was emitted"
    f_exp = p / p.sum() * n
    big = f_exp >= 5
    small = (p > 0) & ~big
    obs = torch.cat([counts[big], counts[small].sum()[None]])
    exp = torch.cat([f_exp[big], f_exp[small].sum()[None]])
    if not small.any():
        obs, exp = obs[:-1], exp[:-1]
    pvalue = float(chisquare(obs.numpy(), exp.numpy()).pvalue)
    tv = float(0.5 * (counts / n - p).abs().sum())
    return pvalue, tv


def assert_exact(samples: torch.Tensor, expected: torch.Tensor) -> None:
    """Samples follow ``expected``: chi-square does not reject, TV within noise and shrinking."""
    n = len(samples)
    pvalue, tv = compare(samples, expected)
    _, tv_small = compare(samples[: n // 16], expected)
    bound = TV_MARGIN * tv_noise(expected, n)
    assert pvalue > 1e-3, f"chi-square rejects: p-value {pvalue:.2e} (TV {tv:.4f})"
    assert tv < bound, f"TV {tv:.4f} over {n} samples exceeds the noise bound {bound:.4f}"
    assert tv < tv_small, f"TV did not shrink: {tv_small:.4f} at {n // 16} samples, {tv:.4f} at {n}"


def assert_not_exact(samples: torch.Tensor, expected: torch.Tensor) -> None:
    pvalue, tv = compare(samples, expected)
    bound = TV_MARGIN * tv_noise(expected, len(samples))
    assert pvalue < 1e-6, f"the negative control passed the chi-square test (p-value {pvalue:.2e})"
    assert tv > bound, f"the negative control's TV {tv:.4f} is within the noise bound {bound:.4f}"


def joint(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    return first * V + second


def target_tables(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return rand_probs(gen, V), rand_probs(gen, V, V), rand_probs(gen, V, V, V)


# --- scenarios ----------------------------------------------------------------------------


Tables = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def chain_scenario(gen: torch.Generator, n: int, k: int = 3) -> tuple[list[DraftTree], Tables, SparseProbs]:
    """Depth-2 chains drafted from sparse q's: x1 ~ q0, x2 ~ q1[x1]."""
    p0, p1, p2 = target_tables(gen)
    q0 = rand_sparse(gen, k)
    q1 = [rand_sparse(gen, k) for _ in range(V)]
    x1 = draw(q0, n, gen)
    x2 = draw_each(q1, x1, gen)
    trees = [DraftTree.chain([a, b], (q0, q1[a])) for a, b in zip(x1.tolist(), x2.tolist(), strict=True)]
    return trees, (p0, p1, p2), q0


def iid_tree_scenario(gen: torch.Generator, n: int) -> tuple[list[DraftTree], Tables]:
    """Root with 3 children drawn i.i.d. from one q0; each child has one child from q1[x]."""
    p0, p1, p2 = target_tables(gen)
    q0 = rand_sparse(gen, 4)
    q1 = [rand_sparse(gen, 3) for _ in range(V)]
    kids = draw(q0, 3 * n, gen).view(n, 3)
    grandkids = draw_each(q1, kids.flatten(), gen).view(n, 3)
    trees = [
        DraftTree(
            (*k, *g),
            (-1, -1, -1, 0, 1, 2),
            (q0, q0, q0, *(q1[t] for t in k)),
        )
        for k, g in zip(kids.tolist(), grandkids.tolist(), strict=True)
    ]
    return trees, (p0, p1, p2)


@pytest.fixture
def gen() -> torch.Generator:
    return make_generator(1234)


def test_chain_from_sparse_q_matches_target(gen: torch.Generator) -> None:
    n = 20_000
    trees, (p0, p1, p2), q0 = chain_scenario(gen, n)
    for t in trees[:50]:
        validate_tree(t, vocab_size=V, max_nodes=8, max_top_k=V)
    first, second, results = first_two(trees, p0, p1, p2, gen)
    assert_exact(first, p0)
    assert_exact(joint(first, second), p0[:, None] * p1)
    # The first draft token is accepted with probability sum_x min(p0(x), q0(x)).
    dense_q0 = torch.zeros(V)
    dense_q0[list(q0.ids)] = torch.tensor(q0.probs)
    rate = sum(len(r.path) > 0 for r in results) / n
    assert rate == pytest.approx(float(torch.minimum(p0, dense_q0).sum()), abs=0.015)


def test_tree_of_iid_children_matches_target(gen: torch.Generator) -> None:
    n = 10_000
    trees, (p0, p1, p2) = iid_tree_scenario(gen, n)
    assert any(len(set(t.tokens[:3])) < 3 for t in trees)  # repeated siblings do occur
    first, second, results = first_two(trees, p0, p1, p2, gen)
    assert_exact(first, p0)
    assert_exact(joint(first, second), p0[:, None] * p1)
    # Some trials accept the second or third child: the siblings do get their turn.
    assert any(r.path and r.path[0] > 0 for r in results)


MODEL_FREE_TREE = DraftTree(
    # root -> 2 (0) -> 1 (3), 3 (4); root -> 0 (1) -> 4 (5); root -> 5 (2)
    tokens=(2, 0, 5, 1, 3, 4),
    parents=(-1, -1, -1, 0, 0, 1),
)


def test_model_free_tree_of_point_masses_matches_target(gen: torch.Generator) -> None:
    n = 12_000
    p0, p1, p2 = target_tables(gen)
    rows = target_rows(MODEL_FREE_TREE, p0, p1, p2)
    first, second, results = first_two([MODEL_FREE_TREE] * n, p0, p1, p2, gen, rows=rows)
    assert_exact(first, p0)
    assert_exact(joint(first, second), p0[:, None] * p1)
    root_tokens = {MODEL_FREE_TREE.tokens[c] for c in children_lists(MODEL_FREE_TREE.parents)[-1]}
    for r in results:
        if not r.path:  # every root child was rejected: the recovered token is none of them
            assert r.next_token not in root_tokens


def test_q_disjoint_from_the_top_of_p_matches_target(gen: torch.Generator) -> None:
    n = 12_000
    p0, p1, p2 = target_tables(gen)
    p0 = torch.tensor([0.45, 0.35, 0.08, 0.06, 0.04, 0.02])
    q0 = SparseProbs((4, 5), (0.7, 0.3))  # the draft bets on the target's two least likely tokens
    q1 = []
    for v in range(V):
        low = torch.argsort(p1[v])[:2].tolist()
        q1.append(SparseProbs(tuple(low), (0.5, 0.5)))
    x1 = draw(q0, n, gen)
    x2 = draw_each(q1, x1, gen)
    trees = [DraftTree.chain([a, b], (q0, q1[a])) for a, b in zip(x1.tolist(), x2.tolist(), strict=True)]
    first, second, results = first_two(trees, p0, p1, p2, gen)
    assert_exact(first, p0)
    assert_exact(joint(first, second), p0[:, None] * p1)
    assert 0 < sum(len(r.path) > 0 for r in results) < 0.1 * n  # rarely accepted, sometimes


def test_warped_p_and_q_match_the_warped_target(gen: torch.Generator) -> None:
    """Temperature, top-k and top-p applied to both sides; p has zeros the output must avoid."""
    n = 12_000
    params = SamplingParams(temperature=0.8, top_k=4, top_p=0.9)
    p0 = warp_probs(2.0 * torch.randn(V, generator=gen), params)
    p1 = warp_probs(2.0 * torch.randn(V, V, generator=gen), params)
    p2 = warp_probs(2.0 * torch.randn(V, V, V, generator=gen), params)
    assert (p0 == 0).any() and (p1 == 0).any()
    q0 = truncate_top_k(warp_probs(2.0 * torch.randn(V, generator=gen), params), 3)
    q1 = [truncate_top_k(warp_probs(2.0 * torch.randn(V, generator=gen), params), 3) for _ in range(V)]
    x1 = draw(q0, n, gen)
    x2 = draw_each(q1, x1, gen)
    trees = [DraftTree.chain([a, b], (q0, q1[a])) for a, b in zip(x1.tolist(), x2.tolist(), strict=True)]
    first, second, _ = first_two(trees, p0, p1, p2, gen)
    assert_exact(first, p0)  # compare() also asserts that p == 0 tokens never appear
    assert_exact(joint(first, second), p0[:, None] * p1)


# --- negative controls: the same statistic catches broken rules ------------------------------


_ORIGINAL_RESIDUAL = acceptance._residual


@pytest.mark.parametrize(
    ("name", "replacement"),
    [
        # Accept a sampled draft token with min(1, p) instead of min(1, p / q).
        ("_q_of", lambda q, token: 1.0),
        # On rejection, drop only the rejected token from p instead of taking max(0, p - q).
        ("_residual", lambda p, q, token: _ORIGINAL_RESIDUAL(p, None, token)),
    ],
    ids=["min(1,p)-ignoring-q", "point-mass-residual-for-sampled-q"],
)
def test_negative_control_broken_chain_rule_is_detected(
    name: str, replacement: object, gen: torch.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(acceptance, name, replacement)
    trees, (p0, p1, p2), _ = chain_scenario(gen, 4_000)
    first, _, _ = first_two(trees, p0, p1, p2, gen)
    assert_not_exact(first, p0)


def test_negative_control_without_residual_between_siblings_is_detected(
    gen: torch.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trying each sibling against the unchanged p (no residual update) is not exact."""
    monkeypatch.setattr(acceptance, "_residual", lambda p, q, token: p)
    p0, p1, p2 = target_tables(gen)
    rows = target_rows(MODEL_FREE_TREE, p0, p1, p2)
    first, _, _ = first_two([MODEL_FREE_TREE] * 4_000, p0, p1, p2, gen, rows=rows)
    assert_not_exact(first, p0)


# --- seeded repeatability ---------------------------------------------------------------------


def _random_trees(count: int) -> tuple[list[DraftTree], torch.Tensor]:
    gen = make_generator(7)
    trees, (p0, p1, p2) = iid_tree_scenario(gen, count)
    return trees, torch.stack([target_rows(t, p0, p1, p2) for t in trees])


def test_same_seed_same_acceptance() -> None:
    trees, rows = _random_trees(200)
    runs = []
    for _ in range(2):
        g = make_generator(42)
        runs.append([accept_sampling(r, t, g) for r, t in zip(rows, trees, strict=True)])
    assert runs[0] == runs[1]


def test_different_seeds_differ_somewhere() -> None:
    trees, rows = _random_trees(200)
    runs = []
    for seed in (1, 2):
        g = make_generator(seed)
        runs.append([accept_sampling(r, t, g) for r, t in zip(rows, trees, strict=True)])
    assert runs[0] != runs[1]
    assert sum(a != b for a, b in zip(*runs, strict=True)) > 10


def test_generator_none_uses_the_global_rng() -> None:
    tree = DraftTree.chain([1])
    rows = torch.full((2, V), 1.0 / V)
    torch.manual_seed(5)
    a = [accept_sampling(rows, tree, None) for _ in range(50)]
    torch.manual_seed(5)
    b = [accept_sampling(rows, tree, None) for _ in range(50)]
    assert a == b


def test_target_probs_are_not_modified(gen: torch.Generator) -> None:
    trees, rows = _random_trees(50)
    before = rows.clone()
    for r, t in zip(rows, trees, strict=True):
        accept_sampling(r, t, gen)
    assert torch.equal(rows, before)


# --- edge cases -------------------------------------------------------------------------------


def one_hot(token: int, vocab: int = V) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(token), vocab).float()


def test_empty_tree_samples_from_the_root_row(gen: torch.Generator) -> None:
    p0 = torch.tensor([0.0, 0.5, 0.0, 0.25, 0.25, 0.0])
    out = [accept_sampling(p0[None], DraftTree(), gen) for _ in range(400)]
    assert all(o.path == () and o.tokens == () and o.bonus for o in out)
    assert {o.next_token for o in out} == {1, 3, 4}


def test_q_on_the_targets_one_hot_argmax_is_always_accepted() -> None:
    tokens = [3, 1, 4]
    tree = DraftTree.chain(tokens, tuple(SparseProbs((t,), (1.0,)) for t in tokens))
    rows = torch.stack([one_hot(3), one_hot(1), one_hot(4), one_hot(2)])
    for seed in range(300):
        out = accept_sampling(rows, tree, make_generator(seed))
        assert out == Acceptance((0, 1, 2), (3, 1, 4), 2, True)


def test_point_mass_on_the_targets_one_hot_is_always_accepted() -> None:
    tree = DraftTree.chain([3, 1])  # model-free: no draft_probs
    rows = torch.stack([one_hot(3), one_hot(1), one_hot(0)])
    for seed in range(300):
        assert accept_sampling(rows, tree, make_generator(seed)) == Acceptance((0, 1), (3, 1), 0, True)


def test_p_equal_to_q_is_always_accepted() -> None:
    q = SparseProbs((0, 2, 5), (0.5, 0.25, 0.25))
    p = torch.tensor([0.5, 0.0, 0.25, 0.0, 0.0, 0.25])
    for seed in range(300):
        g = make_generator(seed)
        tree = DraftTree.chain([q.ids[int(torch.randint(3, (), generator=g))]], (q,))
        out = accept_sampling(torch.stack([p, p]), tree, g)
        assert out.path == (0,) and out.bonus


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse-q", "point-mass"])
def test_token_with_zero_target_prob_is_never_accepted(sparse: bool, gen: torch.Generator) -> None:
    p0 = torch.tensor([0.3, 0.0, 0.3, 0.0, 0.2, 0.2])
    q = SparseProbs((1, 3, 0), (0.5, 0.4, 0.1))
    tree = DraftTree((1, 3, 1, 2), (-1, -1, -1, 0), (q, q, q, SparseProbs((2,), (1.0,))) if sparse else ())
    validate_tree(tree, vocab_size=V, max_nodes=4, max_top_k=3)
    rows = torch.stack([p0, *[rand_probs(gen, V) for _ in range(4)]])
    for _ in range(2_000):
        out = accept_sampling(rows, tree, gen)
        assert out.path == () and not out.bonus
        assert out.next_token not in (1, 3)


def test_residual_is_the_normalised_positive_part() -> None:
    p = torch.tensor([0.4, 0.3, 0.2, 0.1, 0.0, 0.0])
    q = SparseProbs((0, 1, 4), (0.5, 0.1, 0.4))
    out = acceptance._residual(p, q, 0)
    expected = torch.tensor([0.0, 0.2, 0.2, 0.1, 0.0, 0.0]) / 0.5
    torch.testing.assert_close(out, expected)
    # A point mass removes exactly its own token.
    torch.testing.assert_close(acceptance._residual(p, None, 1), torch.tensor([0.4, 0, 0.2, 0.1, 0, 0]) / 0.7)


def test_residual_falls_back_to_p_when_p_equals_q() -> None:
    """p <= q everywhere: rejection had probability 0; the rounding fallback returns p unchanged."""
    p = torch.tensor([0.5, 0.0, 0.25, 0.0, 0.0, 0.25])
    q = SparseProbs((0, 2, 5), (0.5, 0.25, 0.25))
    out = acceptance._residual(p, q, 0)
    assert torch.equal(out, p)
    # p one ulp below q everywhere (float round-off), and a point mass on a one-hot p.
    below = SparseProbs((0, 2, 5), (0.5000001, 0.2500001, 0.2500001))
    assert torch.equal(acceptance._residual(p, below, 2), p)
    assert torch.equal(acceptance._residual(one_hot(4), None, 4), one_hot(4))
    assert torch.isfinite(acceptance._residual(p, below, 2)).all()


def test_residual_does_not_modify_p() -> None:
    p = torch.tensor([0.4, 0.3, 0.2, 0.1, 0.0, 0.0])
    before = p.clone()
    acceptance._residual(p, SparseProbs((0,), (1.0,)), 0)
    acceptance._residual(p, None, 0)
    assert torch.equal(p, before)


# --- structural invariants on random trees ----------------------------------------------------


@st.composite
def sampled_trees(draw_: st.DrawFn) -> tuple[DraftTree, int]:
    n = draw_(st.integers(0, 10))
    parents = tuple(draw_(st.integers(-1, i - 1)) for i in range(n))
    with_q = draw_(st.booleans())
    seed = draw_(st.integers(0, 2**31))
    g = make_generator(seed)
    probs: list[SparseProbs] = []
    tokens: list[int] = []
    for _ in range(n):
        if with_q:
            q = rand_sparse(g, 3)
            probs.append(q)
            tokens.append(int(draw(q, 1, g)))
        else:
            tokens.append(int(torch.randint(V, (), generator=g)))
    return DraftTree(tuple(tokens), parents, tuple(probs)), seed


@settings(max_examples=100, deadline=None)
@given(sampled_trees())
def test_acceptance_is_a_consistent_path(case: tuple[DraftTree, int]) -> None:
    tree, seed = case
    g = make_generator(seed + 1)
    # Targets with zeros, so "p(x) = 0 is never accepted" is exercised too.
    rows = rand_probs(g, 1 + tree.size, V, scale=3.0)
    rows = torch.where(rows < 0.05, torch.zeros_like(rows), rows)
    rows = rows / rows.sum(-1, keepdim=True)
    out = accept_sampling(rows, tree, g)
    path = list(out.path)
    last = path[-1] if path else -1
    assert path == path_to(last, tree.parents)
    assert out.tokens == tuple(tree.tokens[i] for i in path)
    assert out.bonus == (last not in children_lists(tree.parents))
    for node in path:
        assert rows[tree.parents[node] + 1, tree.tokens[node]] > 0
    # Bonus or recovered, the last token comes from the last row or its residual: p > 0 there.
    assert rows[last + 1, out.next_token] > 0


def test_mixed_tree_point_mass_entries_follow_target():
    """A sampled child (with q) beside a point-mass child (empty SparseProbs): still exact."""
    import torch as _t

    from spec_decode.acceptance import accept_sampling as _accept
    from spec_decode.types import DraftTree as _Tree
    from spec_decode.types import SparseProbs as _SP

    gen = _t.Generator().manual_seed(3)
    p = _t.tensor([0.1, 0.4, 0.2, 0.3])
    q = _SP((0, 1), (0.5, 0.5))
    counts = _t.zeros(4)
    n = 20000
    for _ in range(n):
        x = (0, 1)[int(_t.randint(0, 2, (1,), generator=gen))]
        tree = _Tree((x, 3), (-1, -1), (q, _SP()))
        probs = _t.stack([p, p, p])
        acc = _accept(probs, tree, gen)
        counts[acc.emitted[0]] += 1
    tv = 0.5 * float((counts / n - p).abs().sum())
    assert tv < 0.02, (counts / n, p)
