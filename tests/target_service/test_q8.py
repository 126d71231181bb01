"""Exact int8 weights: recovery of GGUF-style group codes, the C kernel, and the engine on them."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest
import torch
from target_helpers import HAS_C_COMPILER, portable_kernels, random_tree, sequential_decode

from spec_decode.models import LoadedModel
from spec_decode.tree import path_to
from specd_kernels.linear import make_linear, resolve_format
from specd_kernels.q8 import Q8Linear, library_error, quantize_exact, to_panels
from target_service.llama_engine import NativeEngine

pytestmark = pytest.mark.skipif(library_error() is not None, reason=f"q8 kernel not buildable: {library_error()}")


def gguf_like(rows: int, cols: int, kind: str, seed: int = 0) -> torch.Tensor:
    """fp32 weights exactly as GGUF dequantizes ``kind`` blocks of 32 (fp16 d and m).

    As GGUF's quantizers make them, every block holds its extreme codes (the min and max of a
    Q4_1 block map to 0 and 15, the largest magnitude of a Q8_0/Q4_0 block to 127 / -8).
    """
    g = torch.Generator().manual_seed(seed)
    groups = rows * cols // 32
    d = (torch.rand(groups, 1, generator=g) * 0.02 + 1e-3).to(torch.float16).to(torch.float32)
    if kind == "q4_1":
        q = torch.randint(0, 16, (groups, 32), generator=g).to(torch.float32)
        q[:, 3], q[:, 17] = 0, 15
        m = (torch.randn(groups, 1, generator=g) * 0.05).to(torch.float16).to(torch.float32)
        w = d * q + m  # fl(fl(d*q) + m), as numpy computes it
    elif kind == "q8_0":
        q = torch.randint(-127, 128, (groups, 32), generator=g).to(torch.float32)
        q[:, 5] = 127
        w = q * d
    else:  # q4_0
        q = torch.randint(0, 16, (groups, 32), generator=g).to(torch.float32)
        q[:, 9] = 0
        w = (q - 8) * d
    return w.reshape(rows, cols)


@pytest.mark.parametrize("kind", ["q4_1", "q8_0", "q4_0"])
def test_codes_reproduce_the_weights_bit_for_bit(kind: str) -> None:
    weight = gguf_like(48, 96, kind)
    codes = quantize_exact(weight)
    assert codes is not None
    rebuilt = codes.d.repeat_interleave(32, 1) * codes.q.to(torch.float32) + codes.m.repeat_interleave(32, 1)
    assert torch.equal(rebuilt, weight)


def test_weights_that_are_not_group_quantized_are_refused() -> None:
    assert quantize_exact(torch.randn(16, 64)) is None
    almost = gguf_like(16, 64, "q4_1")
    almost[3, 5] += 1e-7  # one weight off the grid: the whole tensor stays fp32
    assert quantize_exact(almost) is None
    assert quantize_exact(torch.randn(16, 48)) is None  # K not a multiple of 32
    assert quantize_exact(gguf_like(16, 64, "q4_1").double()) is None


@pytest.mark.parametrize("out_features", [8, 20, 97])
def test_kernel_matches_fp32_and_rows_are_independent(out_features: int) -> None:
    weight = gguf_like(out_features, 160, "q4_1", seed=out_features)
    bias = torch.randn(out_features)
    kernel = make_linear(weight, bias, "q8")
    assert isinstance(kernel, Q8Linear)
    x = torch.randn(41, 160)
    y = kernel(x)  # [41, N]
    torch.testing.assert_close(y, torch.nn.functional.linear(x, weight, bias), atol=1e-5, rtol=1e-5)
    for rows in (1, 2, 3, 8, 17):  # any split of the rows gives bit-identical rows
        assert torch.equal(kernel(x[:rows]), y[:rows])
    assert torch.equal(kernel(x[7:8]), y[7:8])


def test_long_inputs_give_the_rows_a_short_pass_gives() -> None:
    """A prompt's rows (more than a register block, more than one row chunk) equal one-row calls."""
    weight = gguf_like(70, 64, "q8_0")  # 3 panels, the last one partial
    bias = torch.randn(70)
    kernel = make_linear(weight, bias, "q8")
    assert isinstance(kernel, Q8Linear)
    x = torch.randn(450, 64)
    y = kernel(x)  # [450, 70]
    torch.testing.assert_close(y, torch.nn.functional.linear(x, weight, bias), atol=1e-5, rtol=1e-5)
    for row in (0, 13, 191, 192, 449):
        assert torch.equal(kernel(x[row : row + 1]), y[row : row + 1])
    assert torch.equal(kernel(x[:16]), y[:16])  # 16 rows: the dequantized-panel path
    assert torch.equal(kernel(x[:5]), y[:5])  # 5 rows: dequantized in registers


def test_residual_add_is_fused_in_place_with_the_same_bits() -> None:
    weight = gguf_like(64, 96, "q4_1", seed=5)
    kernel = make_linear(weight, None, "q8")
    assert isinstance(kernel, Q8Linear)
    for rows in (1, 7, 20):  # in registers, and through a dequantized panel
        x, residual = torch.randn(rows, 96), torch.randn(rows, 64)
        want = residual + kernel(x)
        kernel.add_to(residual, x)
        assert torch.equal(residual, want)


def test_panel_layout_round_trips() -> None:
    codes = quantize_exact(gguf_like(40, 96, "q4_1"))
    assert codes is not None
    panels = to_panels(codes)
    assert panels.codes.shape == (2, 96, 32) and panels.scale.shape == (2, 3, 32)
    assert torch.equal(panels.codes[1, :, 3], codes.q[35])
    assert torch.equal(panels.scale[0, :, 7], codes.d[7]) and torch.equal(panels.shift[1, :, 0], codes.m[32])
    assert not panels.codes[1, :, 8:].any()  # padding columns hold zero codes


@pytest.mark.skipif(not HAS_C_COMPILER, reason="no C compiler")
def test_portable_build_gives_the_same_bits(tmp_path: Path) -> None:
    """Without AVX-512 the kernel computes element by element, in the same order: same bits."""
    portable = portable_kernels(tmp_path)
    assert portable.q8_has_avx512() == 0
    weight = gguf_like(50, 96, "q4_1", seed=3)
    bias = torch.randn(50)
    kernel = make_linear(weight, bias, "q8")
    assert isinstance(kernel, Q8Linear)
    for rows in (1, 4, 13, 200):
        x = torch.randn(rows, 96)
        y = torch.empty(rows, 50)
        w = kernel.weight
        portable.q8_linear(
            ctypes.c_void_p(x.data_ptr()), ctypes.c_int64(rows), ctypes.c_int64(96),
            ctypes.c_void_p(w.codes.data_ptr()), ctypes.c_void_p(w.scale.data_ptr()),
            ctypes.c_void_p(w.shift.data_ptr()), ctypes.c_int64(50),
            ctypes.c_void_p(bias.data_ptr()), None, ctypes.c_void_p(y.data_ptr()), ctypes.c_int(2),
        )  # fmt: skip
        assert torch.equal(y, kernel(x)), rows


def test_non_exact_weights_stay_fp32() -> None:
    kernel = make_linear(torch.randn(32, 64), None, "q8")
    assert not isinstance(kernel, Q8Linear)


def test_engine_on_exact_int8_weights(q4_target: LoadedModel) -> None:
    engine = NativeEngine(q4_target.model, "q8")
    assert all(isinstance(layer.gate_up, Q8Linear) for layer in engine.weights.layers)
    import random

    rng = random.Random(4)
    vocab = engine.vocab_size
    prompt = [rng.randrange(vocab) for _ in range(20)]
    tree = random_tree(rng, vocab, max_nodes=12)
    cache = engine.new_cache()
    pending = engine.prefill(cache, prompt)
    logits = engine.score_tree(cache, pending, torch.tensor(tree.parents), tree.tokens)  # [1+N, V]
    for node in range(-1, tree.size):
        branch = [] if node < 0 else [tree.tokens[i] for i in path_to(node, tree.parents)]
        _, want = sequential_decode(q4_target.model, prompt + branch)  # transformers, fp32 weights
        torch.testing.assert_close(logits[node + 1], want[-1], atol=1e-4, rtol=0)
        # ...and bit for bit to the engine's own decoding of the branch alone: on a CPU in fp32 every
        # step of a row (int8 matmuls, RMSNorm, RoPE, attention) sums in a fixed order of its own.
        solo = engine.new_cache()
        tokens = prompt + branch
        solo_pending = engine.prefill(solo, tokens[:-1]) if len(tokens) > 1 else tokens[0]
        row = engine.score_tree(solo, solo_pending, torch.tensor([-1]), [tokens[-1]])
        assert torch.equal(row[1], logits[node + 1]), node


def test_q8_format_validation() -> None:
    cpu = torch.device("cpu")
    assert resolve_format("q8", cpu, torch.float32) == "q8"
    with pytest.raises(Exception, match="'q8' needs float32"):
        resolve_format("q8", cpu, torch.float64)


@pytest.mark.parametrize("fmt", ["q8", "q8a8"])
def test_a_batched_pass_gives_each_session_its_solo_bits(q4_target: LoadedModel, fmt: str) -> None:
    """Sessions of different lengths and trees in one pass (one C attention call per layer for all
    of them) get exactly the logits each would get alone -- with exact weights, and with int8
    activations too (test_q8a8.py: the format that changes outputs against fp32)."""
    import random

    engine = NativeEngine(q4_target.model, fmt)
    assert engine._ops is not None
    rng = random.Random(11)
    vocab = engine.vocab_size
    work = []
    for length in (5, 23, 40):
        prompt = [rng.randrange(vocab) for _ in range(length)]
        tree = random_tree(rng, vocab, max_nodes=9)
        work.append((prompt, tree))

    def fresh() -> list[tuple[object, int, torch.Tensor, list[int]]]:
        items = []
        for prompt, tree in work:
            cache = engine.new_cache()
            items.append((cache, engine.prefill(cache, prompt), torch.tensor(tree.parents), tree.tokens))
        return items

    together = engine.score_trees(fresh())  # type: ignore[arg-type]
    for item, logits in zip(fresh(), together, strict=True):
        alone = engine.score_trees([item])[0]  # type: ignore[list-item]
        assert torch.equal(alone, logits)


@pytest.mark.parametrize("fmt", ["q8", "q8a8"])
def test_a_prompt_fed_in_chunks_beside_trees_gives_its_whole_prefill_bits(q4_target: LoadedModel, fmt: str) -> None:
    """Chunked prefill (target_service.batching): a prompt fed 7 tokens a pass, each pass shared
    with another session's tree, leaves exactly the KV cache, hidden row and next logits that one
    prefill pass of its own leaves."""
    import random

    engine = NativeEngine(q4_target.model, fmt)
    rng = random.Random(13)
    vocab = engine.vocab_size
    prompt = [rng.randrange(vocab) for _ in range(31)]
    whole = engine.new_cache()
    pending = engine.prefill(whole, prompt)
    other = engine.new_cache()
    other_pending = engine.prefill(other, [rng.randrange(vocab) for _ in range(12)])
    chunked = engine.new_cache()
    for lo in range(0, len(prompt) - 1, 7):
        tree = random_tree(rng, vocab, max_nodes=5)
        out = engine.score_trees_and_feed(
            [(other, other_pending, torch.tensor(tree.parents), tree.tokens)],
            [(chunked, prompt[lo : lo + 7][: len(prompt) - 1 - lo])],
        )
        assert len(out) == 1 and out[0].shape[0] == 1 + tree.size  # logits for the tree only
        engine.truncate(other, engine.cache_len(other) - 1 - tree.size)
    assert engine.cache_len(chunked) == engine.cache_len(whole) == len(prompt) - 1
    n = engine.cache_len(whole)
    assert torch.equal(chunked.data[:, :, :, :n], whole.data[:, :, :, :n])
    assert torch.equal(engine.hidden_rows(chunked), engine.hidden_rows(whole))
    tree = random_tree(rng, vocab, max_nodes=6)
    parents = torch.tensor(tree.parents)
    assert torch.equal(
        engine.score_tree(chunked, pending, parents, tree.tokens),
        engine.score_tree(whole, pending, parents, tree.tokens),
    )
