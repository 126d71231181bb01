"""The exact argmax screen (specd_kernels.q8.Q8ArgmaxScreen): greedy verification's argmax from
int8 activations plus a few exact rescored logits, always the argmax of the exact ``q8`` logits."""

from __future__ import annotations

import random

import pytest
import torch
from target_helpers import random_tree
from test_q8 import gguf_like

from spec_decode.models import LoadedModel
from specd_kernels.linear import make_linear
from specd_kernels.q8 import (
    GROUP,
    MAX_PANELS,
    Q8A8Linear,
    Q8Linear,
    argmax_screen,
    library_error,
    screen_coefficient,
    weight_of,
)
from target_service.llama_engine import SCREEN_MIN_ROWS, NativeEngine

pytestmark = pytest.mark.skipif(library_error() is not None, reason=f"q8 kernel not buildable: {library_error()}")


def _screen_for(weight: torch.Tensor, bias: torch.Tensor | None = None):  # type: ignore[no-untyped-def]
    kernel = make_linear(weight, bias, "q8")
    assert isinstance(kernel, Q8Linear)
    screen = argmax_screen(kernel)
    assert screen is not None
    return kernel, screen


def _hard_rows(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Rows with what makes a bound loose: outliers (a group's step set by one huge entry), zero
    groups, mixed scales."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * torch.rand(rows, 1, generator=g) * 8
    x[::3, 5] = 300.0  # one outlier dimension, as final-norm hidden states have
    x[1::4, :GROUP] = 0.0  # a group of zeros
    x[2::5] *= 1e-4  # a tiny row: every logit near zero, many near-ties
    return x


@pytest.mark.parametrize("kind", ["q8_0", "q4_1", "q4_0"])
def test_the_bound_holds_for_every_output(kind: str) -> None:
    """|int8-activation value - exact value| <= c * sum_g s_g A[j, g] on every output of every row:
    the inequality the screen's correctness rests on (checked in float64)."""
    weight = gguf_like(300, 192, kind, seed=1)
    kernel, screen = _screen_for(weight)
    approx_kernel = Q8A8Linear(screen.weight, None, kernel.out_features, kernel.in_features)
    x = _hard_rows(64, 192, seed=2)
    exact = kernel(x).double()  # [M, N]
    approx = approx_kernel(x).double()  # [M, N]
    steps = (x.reshape(64, -1, GROUP).abs().amax(-1) / 127).double()  # [M, G]
    absw = screen.absw.transpose(1, 2).reshape(-1, screen.absw.shape[1])[: kernel.out_features].double()  # [N, G]
    bound = screen.coefficient * steps @ absw.T  # [M, N]
    assert bool(((approx - exact).abs() <= bound).all())
    # ...and it is not vacuous: the error uses a good share of it somewhere, and the bound is small
    assert float(((approx - exact).abs() / bound.clamp(min=1e-30)).max()) > 0.05
    assert 0.5 < screen.coefficient < 0.52 and screen_coefficient(4096) > screen_coefficient(576)


@pytest.mark.parametrize("kind", ["q8_0", "q4_1"])
@pytest.mark.parametrize("rows", [1, 2, 7, 48, 200])
def test_screened_argmax_is_the_exact_argmax(kind: str, rows: int) -> None:
    weight = gguf_like(1000, 128, kind, seed=rows)  # 32 panels, the last one partial (8 of 32 columns)
    bias = torch.randn(1000) * 0.1
    for b in (None, bias):
        kernel, screen = _screen_for(weight, b)
        x = _hard_rows(rows, 128, seed=rows + 1)
        ids, candidates, fallbacks = screen.argmax(x)
        assert torch.equal(ids, kernel(x).argmax(dim=-1))
        assert candidates >= rows - fallbacks  # every screened row rescored at least its argmax


def test_ties_go_to_the_first_index_as_torch_argmax() -> None:
    """Rows of W repeated: equal exact logits, and the lower index must win."""
    base = gguf_like(64, 96, "q8_0", seed=4)
    weight = torch.cat([base, base, base[:10]])  # row j, j + 64 and j + 128 are the same
    kernel, screen = _screen_for(weight)
    x = torch.randn(100, 96)
    exact = kernel(x)
    ids, _, fallbacks = screen.argmax(x)
    assert fallbacks == 0
    assert torch.equal(ids, exact.argmax(dim=-1))
    assert bool((ids < 64).all())  # the first of each tied pair


def test_flat_and_non_finite_rows_fall_back_to_the_full_product() -> None:
    kernel, screen = _screen_for(gguf_like(32 * (MAX_PANELS + 8), 64, "q8_0", seed=5))
    zeros = torch.zeros(3, 64)  # every logit 0: all tie, in more panels than the screen rescores
    ids, _, fallbacks = screen.argmax(zeros)
    assert fallbacks == 3 and ids.tolist() == [0, 0, 0]
    bad = torch.randn(4, 64)
    bad[1, 3] = float("nan")
    bad[2, 0] = float("inf")
    ids, _, fallbacks = screen.argmax(bad)
    assert fallbacks == 4 and torch.equal(ids, kernel(bad).argmax(dim=-1))


def test_weight_of_undoes_the_panel_layout() -> None:
    weight = gguf_like(70, 96, "q4_1", seed=6)
    kernel = make_linear(weight, None, "q8")
    assert isinstance(kernel, Q8Linear)
    back = weight_of(kernel.weight, 70)
    assert back.q.shape == (70, 96) and back.d.shape == (70, 3)
    rebuilt = (back.d.repeat_interleave(GROUP, 1) * back.q.float()) + back.m.repeat_interleave(GROUP, 1)
    assert torch.equal(rebuilt, weight)


def test_only_q8_heads_get_a_screen() -> None:
    weight = gguf_like(40, 64, "q8_0", seed=7)
    assert argmax_screen(make_linear(weight, None, "q8a8")) is None  # its logits ARE the int8 ones
    assert argmax_screen(make_linear(torch.randn(40, 64), None, "q8")) is None  # not codes: packed fp32


def _engine_items(engine: NativeEngine, rng: random.Random, sessions: int):  # type: ignore[no-untyped-def]
    items = []
    for _ in range(sessions):
        cache = engine.new_cache()
        pending = engine.prefill(cache, [rng.randrange(engine.vocab_size) for _ in range(rng.randrange(3, 30))])
        tree = random_tree(rng, engine.vocab_size, max_nodes=10)
        items.append((cache, pending, torch.tensor(tree.parents, dtype=torch.long), tree.tokens))
    return items


def test_engine_greedy_passes_get_the_argmax_of_their_logits(q4_target: LoadedModel) -> None:
    """A batched pass of greedy and sampled trees: greedy ones get ids [1 + N] equal to the argmax
    of the logits the same pass gives without the screen; sampled ones keep their logits."""
    screened = NativeEngine(q4_target.model, "q8")
    plain = NativeEngine(q4_target.model, "q8", screen=False)
    assert screened.screen is not None and plain.screen is None
    rng = random.Random(11)
    for flags in ([True, True, True], [True, False, True]):
        seed = rng.randrange(1 << 30)
        got = screened.score_trees(_engine_items(screened, random.Random(seed), 3), flags)
        want = plain.score_trees(_engine_items(plain, random.Random(seed), 3))
        for g, w, greedy in zip(got, want, flags, strict=True):
            if greedy:
                assert g.dtype == torch.int64 and torch.equal(g, w.argmax(dim=-1))
            else:
                assert torch.equal(g, w)
    counts = screened.screen_counts
    assert counts.rows >= SCREEN_MIN_ROWS and counts.candidates >= counts.rows - counts.fallbacks
    # a pass of fewer rows than SCREEN_MIN_ROWS: the full LM head is as fast there, same ids
    before = counts.rows
    (small,) = _engine_items(screened, random.Random(3), 1)
    cache, pending, _, _ = small
    (one,) = screened.score_trees([(cache, pending, torch.empty(0, dtype=torch.long), [])], [True])
    assert one.shape == (1,) and counts.rows == before
    with pytest.raises(ValueError, match="flags"):
        screened.score_trees(_engine_items(screened, rng, 2), [True])


def test_verifier_greedy_output_is_the_same_with_and_without_the_screen(q4_target: LoadedModel) -> None:
    """The served path: greedy verify calls of random trees (seeded with the target's own tokens)
    on two verifiers, the screen on and off; every acceptance equal, the counters move on one only."""
    from target_helpers import greedy_reference, lossless_tree

    from spec_decode.types import SamplingParams
    from target_service.verifier import TargetConfig, TargetVerifier

    on = TargetVerifier(q4_target, TargetConfig(weight_format="q8", max_batch=1))
    off = TargetVerifier(q4_target, TargetConfig(weight_format="q8", max_batch=1, argmax_screen=False))
    assert getattr(on.engine, "screen", None) is not None and getattr(off.engine, "screen", None) is None
    rng = random.Random(5)
    vocab = on.engine.vocab_size
    for p in range(4):
        prompt = [rng.randrange(vocab) for _ in range(rng.randint(2, 12))]
        ref = greedy_reference(q4_target.model, prompt, 28)
        for v in (on, off):
            v.prefill(f"s{p}", prompt, SamplingParams())
        out: list[int] = []
        while len(out) < 20:
            tree = lossless_tree(rng, ref[len(out) :], vocab)
            a, b = on.verify(f"s{p}", tree), off.verify(f"s{p}", tree)
            assert a.acceptance == b.acceptance
            out.extend(a.acceptance.emitted)
        assert out[:20] == ref[:20]
    assert on.stats().screen_rows > 0 and off.stats().screen_rows == 0
    from prometheus_client import CollectorRegistry

    from specd_metrics.services import _TargetCollector

    registry = CollectorRegistry()
    registry.register(_TargetCollector(on))
    stats = on.stats()
    assert registry.get_sample_value("specd:target_argmax_screen_rows_total") == stats.screen_rows
    assert registry.get_sample_value("specd:target_argmax_screen_candidates_total") == stats.screen_candidates
