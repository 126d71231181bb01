"""Logit warping and sampling helpers (spec_decode/sampling.py) and SamplingParams validation."""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from spec_decode.errors import InvalidArgument
from spec_decode.sampling import make_generator, sample, sample_sparse, truncate_top_k, warp_probs
from spec_decode.tree import validate_tree
from spec_decode.types import DraftTree, SamplingParams, SparseProbs


def logits_of(probs: list[float]) -> torch.Tensor:
    return torch.log(torch.tensor(probs, dtype=torch.float64)).float()


# --- warp_probs: temperature ------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.25, 0.7, 1.0, 2.5])
def test_temperature_matches_softmax_of_scaled_logits(temperature: float) -> None:
    logits = torch.randn(3, 11, generator=make_generator(0)) * 3
    out = warp_probs(logits, SamplingParams(temperature=temperature))
    torch.testing.assert_close(out, torch.softmax(logits / temperature, dim=-1))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.sum(-1), torch.ones(3))


def test_low_precision_logits_give_float32_probs() -> None:
    logits = torch.randn(2, 8, generator=make_generator(1)).to(torch.bfloat16)
    out = warp_probs(logits, SamplingParams(temperature=1.0))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.softmax(logits.float(), dim=-1))


def test_greedy_params_raise() -> None:
    with pytest.raises(ValueError, match="temperature > 0"):
        warp_probs(torch.zeros(4), SamplingParams())
    with pytest.raises(ValueError):
        warp_probs(torch.zeros(4), SamplingParams(temperature=0.0, top_k=2))


# --- warp_probs: top-k ------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 12), st.integers(1, 14), st.integers(0, 2**31))
def test_top_k_keeps_exactly_k(vocab: int, k: int, seed: int) -> None:
    logits = torch.randn(4, vocab, generator=make_generator(seed)) * 2  # continuous: no ties
    out = warp_probs(logits, SamplingParams(temperature=1.0, top_k=k))
    kept = min(k, vocab)
    assert ((out > 0).sum(-1) == kept).all()
    top = torch.topk(logits, kept, dim=-1).indices
    assert (out.gather(-1, top) > 0).all()  # the k most likely tokens, not any k
    # Within the kept set the ratios are those of softmax(logits): a renormalised restriction.
    full = torch.softmax(logits, -1)
    torch.testing.assert_close(out.gather(-1, top), full.gather(-1, top) / full.gather(-1, top).sum(-1, keepdim=True))


def test_top_k_ties_at_the_boundary_are_kept() -> None:
    logits = torch.tensor([3.0, 1.0, 1.0, 0.0])
    out = warp_probs(logits, SamplingParams(temperature=1.0, top_k=2))
    assert (out > 0).tolist() == [True, True, True, False]


def test_top_k_zero_or_at_least_vocab_is_off() -> None:
    logits = torch.randn(6, generator=make_generator(2))
    plain = warp_probs(logits, SamplingParams(temperature=1.0))
    for k in (0, 6, 100):
        torch.testing.assert_close(warp_probs(logits, SamplingParams(temperature=1.0, top_k=k)), plain)


def test_top_k_after_temperature() -> None:
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    out = warp_probs(logits, SamplingParams(temperature=0.5, top_k=2))
    expected = torch.softmax(torch.tensor([4.0, 2.0]), -1)
    torch.testing.assert_close(out, torch.cat([expected, torch.zeros(2)]))


# --- warp_probs: top-p ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("top_p", "kept"),
    [
        (0.4, [0.5]),  # the top token alone already reaches 0.4
        (0.75, [0.5, 0.3]),  # 0.5 < 0.75 <= 0.8
        (0.85, [0.5, 0.3, 0.15]),  # 0.8 < 0.85 <= 0.95
        (0.97, [0.5, 0.3, 0.15, 0.05]),
        (1.0, [0.5, 0.3, 0.15, 0.05]),
    ],
)
def test_top_p_keeps_the_smallest_prefix_reaching_p(top_p: float, kept: list[float]) -> None:
    probs = [0.15, 0.5, 0.05, 0.3]  # sorted: 0.5 (id 1), 0.3 (id 3), 0.15 (id 0), 0.05 (id 2)
    out = warp_probs(logits_of(probs), SamplingParams(temperature=1.0, top_p=top_p))
    expected = torch.tensor([p if p in kept else 0.0 for p in probs])
    torch.testing.assert_close(out, expected / expected.sum())


def test_top_p_works_per_row() -> None:
    logits = torch.stack([logits_of([0.7, 0.2, 0.1]), logits_of([0.1, 0.2, 0.7]), logits_of([0.4, 0.35, 0.25])])
    out = warp_probs(logits, SamplingParams(temperature=1.0, top_p=0.6))
    assert (out > 0).tolist() == [[True, False, False], [False, False, True], [True, True, False]]


def test_top_k_then_top_p() -> None:
    # top_k=3 leaves 0.5, 0.3, 0.15 -> renormalised 0.526, 0.316, 0.158; top_p=0.8 then keeps two.
    probs = [0.5, 0.3, 0.15, 0.05]
    out = warp_probs(logits_of(probs), SamplingParams(temperature=1.0, top_k=3, top_p=0.8))
    torch.testing.assert_close(out, torch.tensor([0.625, 0.375, 0.0, 0.0]))


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 12), st.floats(0.05, 1.0), st.integers(0, 2**31))
def test_top_p_keeps_a_minimal_prefix(vocab: int, top_p: float, seed: int) -> None:
    logits = torch.randn(vocab, generator=make_generator(seed)) * 2
    out = warp_probs(logits, SamplingParams(temperature=1.0, top_p=top_p))
    full = torch.softmax(logits, -1)
    order = torch.argsort(full, descending=True)
    kept = int((out > 0).sum())
    assert (out[order[:kept]] > 0).all()  # a prefix of the sorted order
    mass = full[order].cumsum(0)
    assert mass[kept - 1] >= top_p - 1e-5  # reaches top_p ...
    if kept > 1:
        assert mass[kept - 2] < top_p + 1e-5  # ... and one token fewer would not
    torch.testing.assert_close(out.sum(), torch.tensor(1.0))


# --- truncate_top_k / sample_sparse / sample / make_generator ---------------------------------


def test_truncate_top_k_renormalises() -> None:
    probs = torch.tensor([0.1, 0.4, 0.0, 0.3, 0.2])
    q = truncate_top_k(probs, 2)
    assert q.ids == (1, 3)
    assert q.probs == pytest.approx((0.4 / 0.7, 0.3 / 0.7))
    assert math.fsum(q.probs) == pytest.approx(1.0, abs=1e-6)


def test_truncate_top_k_drops_zeros_and_clips_k() -> None:
    probs = torch.tensor([0.0, 0.75, 0.0, 0.25])
    q = truncate_top_k(probs, 10)
    assert q.ids == (1, 3)
    assert q.probs == pytest.approx((0.75, 0.25))
    assert truncate_top_k(probs, 1) == SparseProbs((1,), (1.0,))


def test_truncate_top_k_output_is_a_valid_draft_distribution() -> None:
    probs = warp_probs(torch.randn(50, generator=make_generator(3)), SamplingParams(temperature=0.9))
    q = truncate_top_k(probs, 8)
    tree = DraftTree.chain([q.ids[5]], (q,))
    validate_tree(tree, vocab_size=50, max_nodes=1, max_top_k=8)
    assert len(q.ids) == 8
    assert list(q.probs) == sorted(q.probs, reverse=True)


def test_sample_sparse_only_returns_support_with_the_right_frequencies() -> None:
    q = SparseProbs((7, 2, 9), (0.6, 0.3, 0.1))
    gen = make_generator(4)
    draws = [sample_sparse(q, gen) for _ in range(6000)]
    assert set(draws) == {7, 2, 9}
    for tok, prob in zip(q.ids, q.probs, strict=True):
        assert draws.count(tok) / len(draws) == pytest.approx(prob, abs=0.02)


def test_sample_respects_zeros() -> None:
    probs = torch.tensor([0.0, 0.5, 0.0, 0.5])
    gen = make_generator(5)
    assert {sample(probs, gen) for _ in range(300)} == {1, 3}


def test_make_generator_is_repeatable() -> None:
    a, b = make_generator(11), make_generator(11)
    assert torch.equal(torch.rand(5, generator=a), torch.rand(5, generator=b))
    c = make_generator(12)
    assert not torch.equal(torch.rand(5, generator=make_generator(11)), torch.rand(5, generator=c))
    fresh = make_generator(None)
    assert torch.rand((), generator=fresh).item() >= 0.0


# --- SamplingParams -----------------------------------------------------------------------------


def test_sampling_params_defaults_are_greedy() -> None:
    assert SamplingParams().greedy
    assert not SamplingParams(temperature=0.1).greedy
    assert SamplingParams(temperature=0.7, top_k=50, top_p=0.9, seed=3).validate().top_k == 50


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (SamplingParams(temperature=-0.1), "temperature must be >= 0"),
        (SamplingParams(temperature=float("nan")), "temperature must be >= 0"),
        (SamplingParams(temperature=float("inf")), "temperature must be >= 0"),
        (SamplingParams(top_k=-1), "top_k must be >= 0"),
        (SamplingParams(top_p=0.0), "top_p must be in (0, 1]"),
        (SamplingParams(top_p=1.5), "top_p must be in (0, 1]"),
        (SamplingParams(top_p=float("nan")), "top_p must be in (0, 1]"),
        (SamplingParams(seed=-1), "seed must be in [0, 2**63)"),
        (SamplingParams(seed=2**63), "seed must be in [0, 2**63)"),
    ],
)
def test_sampling_params_validate(params: SamplingParams, message: str) -> None:
    with pytest.raises(InvalidArgument, match=re.escape(message)):
        params.validate()
