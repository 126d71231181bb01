"""The opt-in ``q8a8`` format: exact int8 weights times int8 activations (per row, per group of 32).

It changes outputs against fp32 -- the tests bound by how much -- but must keep every row
independent of the others, so speculative decoding on it equals its own greedy decoding.
"""

from __future__ import annotations

import ctypes
import random
from pathlib import Path

import pytest
import torch
from target_helpers import HAS_C_COMPILER, portable_kernels, random_tree
from test_q8 import gguf_like

from spec_decode.models import LoadedModel
from spec_decode.tree import path_to
from specd_kernels.linear import make_linear, resolve_format
from specd_kernels.q8 import Q8A8Linear, Q8Linear, library_error, quantize_exact, to_a8_panels
from target_service.llama_engine import NativeEngine

pytestmark = pytest.mark.skipif(library_error() is not None, reason=f"q8 kernel not buildable: {library_error()}")


def reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The format's definition in float64: x rounded to int8 per row and group of 32, times the weights."""
    rows, k = x.shape
    groups = x.reshape(rows, k // 32, 32)
    amax = groups.abs().amax(-1, keepdim=True)  # [M, G, 1]
    inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
    codes = torch.round(groups * inv).clamp(-127, 127)
    xq = (codes * (amax / 127.0)).reshape(rows, k)  # the activations the kernel multiplies
    y = xq.double() @ weight.double().T
    return (y + bias.double() if bias is not None else y).float()


@pytest.mark.parametrize("kind", ["q4_1", "q8_0", "q4_0"])
def test_kernel_computes_the_format_and_rows_are_independent(kind: str) -> None:
    weight = gguf_like(70, 160, kind, seed=2)
    bias = torch.randn(70)
    kernel = make_linear(weight, bias, "q8a8")
    assert isinstance(kernel, Q8A8Linear)
    x = torch.randn(23, 160)
    y = kernel(x)  # [23, 70]
    torch.testing.assert_close(y, reference(x, weight, bias), atol=2e-5, rtol=1e-5)
    exact = torch.nn.functional.linear(x, weight, bias)
    error = (y - exact).abs().max() / exact.abs().max()
    assert 0 < error < 0.02  # int8 activations: off fp32 by about a percent, not more
    for rows in (1, 2, 5, 6, 7, 13):  # any split of the rows gives bit-identical rows
        assert torch.equal(kernel(x[:rows]), y[:rows])
    assert torch.equal(kernel(x[11:12]), y[11:12])


def test_residual_add_is_fused_in_place_with_the_same_bits() -> None:
    kernel = make_linear(gguf_like(64, 96, "q4_1", seed=5), None, "q8a8")
    assert isinstance(kernel, Q8A8Linear)
    for rows in (1, 7, 20):
        x, residual = torch.randn(rows, 96), torch.randn(rows, 64)
        want = residual + kernel(x)
        kernel.add_to(residual, x)
        assert torch.equal(residual, want)


def test_zero_and_outlier_groups() -> None:
    """An all-zero group quantizes to zeros (no division by zero); one huge value saturates only its group."""
    weight = gguf_like(32, 64, "q4_1", seed=8)
    kernel = make_linear(weight, None, "q8a8")
    x = torch.zeros(2, 64)
    x[1, :32] = torch.randn(32)
    x[1, 40] = 1e4
    y = kernel(x)
    assert torch.isfinite(y).all() and not y[0].any()
    torch.testing.assert_close(y, reference(x, weight, None), atol=1e-2, rtol=1e-5)


def test_layout() -> None:
    codes = quantize_exact(gguf_like(40, 96, "q8_0"))
    assert codes is not None
    panels = to_a8_panels(codes)
    assert panels.codes.shape == (2, 24, 32, 4) and panels.codes.dtype == torch.int8
    assert panels.start.shape == (2, 3, 32) and panels.start.dtype == torch.int32  # what the kernel reads
    k, n = 37, 35  # codes[p, k/4, j, k%4] = q[32p + j, k]
    assert int(panels.codes[1, k // 4, n - 32, k % 4]) == int(codes.q[n, k])
    assert int(panels.start[1, 1, n - 32]) == -128 * int(codes.q[n, 32:64].sum())
    assert torch.equal(panels.scale[0, 2], codes.d[:32, 2]) and not panels.start[1, :, 8:].any()


@pytest.mark.skipif(not HAS_C_COMPILER, reason="no C compiler")
def test_portable_build_gives_the_same_bits(tmp_path: Path) -> None:
    """Without VNNI the same integer sums and float steps run element by element: same bits."""
    portable = portable_kernels(tmp_path)
    assert portable.q8a8_has_vnni() == 0
    weight = gguf_like(50, 96, "q8_0", seed=3)
    bias = torch.randn(50)
    kernel = make_linear(weight, bias, "q8a8")
    assert isinstance(kernel, Q8A8Linear)
    for rows in (1, 4, 13):
        x = torch.randn(rows, 96)
        y = torch.empty(rows, 50)
        w = kernel.weight
        portable.q8a8_linear(
            ctypes.c_void_p(x.data_ptr()), ctypes.c_int64(rows), ctypes.c_int64(96),
            ctypes.c_void_p(w.codes.data_ptr()), ctypes.c_void_p(w.start.data_ptr()),
            ctypes.c_void_p(w.scale.data_ptr()), ctypes.c_void_p(w.shift.data_ptr()), ctypes.c_int64(50),
            ctypes.c_void_p(bias.data_ptr()), None, ctypes.c_void_p(y.data_ptr()), ctypes.c_int(2),
            ctypes.c_int(w.max_abs),
        )  # fmt: skip
        assert torch.equal(y, kernel(x)), rows


def test_format_is_opt_in() -> None:
    cpu = torch.device("cpu")
    assert resolve_format("q8a8", cpu, torch.float32) == "q8a8"
    assert resolve_format(None, cpu, torch.float32) != "q8a8"
    with pytest.raises(Exception, match="'q8a8' needs float32"):
        resolve_format("q8a8", cpu, torch.float64)
    assert not isinstance(make_linear(torch.randn(32, 64), None, "q8a8"), (Q8A8Linear, Q8Linear))


def test_tree_rows_equal_the_engines_own_decoding(q4_target: LoadedModel) -> None:
    """The property speculative decoding needs: each branch of a tree pass gets, bit for bit, what this
    engine gives decoding that branch alone -- though both differ from fp32 by the activations' rounding."""
    engine = NativeEngine(q4_target.model, "q8a8")
    exact = NativeEngine(q4_target.model, "q8")
    assert all(isinstance(layer.gate_up, Q8A8Linear) for layer in engine.weights.layers)
    rng = random.Random(4)
    prompt = [rng.randrange(engine.vocab_size) for _ in range(20)]
    tree = random_tree(rng, engine.vocab_size, max_nodes=12)
    cache = engine.new_cache()
    pending = engine.prefill(cache, prompt)
    logits = engine.score_tree(cache, pending, torch.tensor(tree.parents), tree.tokens)  # [1+N, V]
    exact_cache = exact.new_cache()
    exact_logits = exact.score_tree(
        exact_cache, exact.prefill(exact_cache, prompt), torch.tensor(tree.parents), tree.tokens
    )
    assert not torch.equal(logits, exact_logits)  # the activations' rounding shows...
    assert (
        logits - exact_logits
    ).norm() / exact_logits.norm() < 0.06  # ...but only a little (3 % on this random model)
    for node in range(-1, tree.size):
        tokens = prompt + ([] if node < 0 else [tree.tokens[i] for i in path_to(node, tree.parents)])
        solo = engine.new_cache()
        solo_pending = engine.prefill(solo, tokens[:-1])
        row = engine.score_tree(solo, solo_pending, torch.tensor([-1]), [tokens[-1]])
        assert torch.equal(row[1], logits[node + 1]), node
