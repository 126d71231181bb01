"""The kernel library at each vector width: AVX2 + FMA and element by element, beside this CPU's own build.

(``q8a8`` too: its integer sums are exact on every route, so every build gives the same bits.)

The engine compiles ``-march=native``, so on an AVX-512 machine the AVX2 code never runs in the
other tests (and vice versa). Here each width is built on purpose and put in the engine's place:
the ``q8`` matmuls must give the native build's bits (every width sums k = 0..K-1 with one fused
multiply-add each), and a whole engine on that build must keep its own guarantees -- a tree pass
equal, bit for bit, to decoding each branch alone, and logits within the engine's tolerance of
transformers'. The models have 64-wide heads, three and four query heads per KV head: the
attention kernels' grouped path and their general one.
"""

from __future__ import annotations

import copy
import ctypes
import platform
import random
from pathlib import Path

import pytest
import torch
from target_helpers import HAS_C_COMPILER, kernel_build, random_tree, sequential_decode
from test_q8 import gguf_like
from testkit import snap_linears_to_q4_1

from spec_decode.tree import path_to
from specd_kernels import q8
from specd_kernels.linear import make_linear
from specd_kernels.q8 import Q8A8Linear, Q8Linear
from target_service.llama_engine import NativeEngine

# name -> (compiler flags, the width the build reports, cpu flags it needs)
BUILDS = {
    "avx2": (["-march=x86-64-v3"], 256, ("avx2", "fma")),
    "portable": (["-mno-avx512f"], 0, ()),
}

pytestmark = pytest.mark.skipif(
    not HAS_C_COMPILER or platform.machine() not in ("x86_64", "AMD64") or q8.load_library() is None,
    reason="needs an x86-64 CPU, a C compiler and the native kernel library",
)


def _cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.fixture(scope="module", params=sorted(BUILDS))
def build(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, ctypes.CDLL]:
    name = str(request.param)
    flags, _, needs = BUILDS[name]
    missing = [f for f in needs if f not in _cpu_flags()]
    if missing:
        pytest.skip(f"this CPU lacks {', '.join(missing)}")
    return name, kernel_build(tmp_path_factory.mktemp(name), name, flags)


def test_the_build_reports_its_width(build: tuple[str, ctypes.CDLL]) -> None:
    name, lib = build
    assert lib.q8_simd_width() == BUILDS[name][1]
    assert q8.simd_width() in (256, 512)  # this machine's own build has vector code (CI runs on x86-64 v3+)


@pytest.mark.parametrize("kind", ["q4_1", "q8_0"])
def test_linear_gives_the_native_builds_bits(build: tuple[str, ctypes.CDLL], kind: str) -> None:
    _, lib = build
    weight = gguf_like(70, 96, kind, seed=8)  # 3 panels, the last one partial (6 of its 32 columns)
    bias = torch.randn(70)
    kernel = make_linear(weight, bias, "q8")
    assert isinstance(kernel, Q8Linear)
    w = kernel.weight
    for rows in (1, 2, 5, 6, 7, 8, 12, 13, 16, 200):  # one block in registers, two, a dequantized panel
        x = torch.randn(rows, 96)
        y = torch.empty(rows, 70)
        status = lib.q8_linear(
            x.data_ptr(), rows, 96, w.codes.data_ptr(), w.scale.data_ptr(), w.shift.data_ptr(), 70,
            bias.data_ptr(), None, y.data_ptr(), 2,
        )  # fmt: skip
        assert status == 0
        assert torch.equal(y, kernel(x)), rows


@pytest.mark.parametrize("kind", ["q4_1", "q4_0", "q8_0"])  # AVX2: codes + 128 (Q4_*), sign moved (Q8_0)
def test_int8_activations_give_the_native_builds_bits(build: tuple[str, ctypes.CDLL], kind: str) -> None:
    name, lib = build
    weight = gguf_like(70, 96, kind, seed=9)
    bias = torch.randn(70)
    kernel = make_linear(weight, bias, "q8a8")
    assert isinstance(kernel, Q8A8Linear)
    w = kernel.weight
    assert w.max_abs == {"q4_1": 15, "q4_0": 8, "q8_0": 127}[kind]
    assert lib.q8a8_path(w.max_abs) == (1 if name == "avx2" else 0)
    for rows in (1, 3, 6, 7, 13, 40):
        x = torch.randn(rows, 96)
        x[0, :32] = 0.0  # a group of zeros: a = 0, whose sign is 0
        x[-1, 40] = -1e3  # one huge entry: a = -127 for it, the rest of its group near 0
        # Any bound at or above the codes' own is exact: 64 and 127 force AVX2's other routes on them.
        for bound in sorted({w.max_abs, max(w.max_abs, 64), 127}):
            y = torch.empty(rows, 70)
            status = lib.q8a8_linear(
                x.data_ptr(), rows, 96, w.codes.data_ptr(), w.start.data_ptr(), w.scale.data_ptr(),
                w.shift.data_ptr(), 70, bias.data_ptr(), None, y.data_ptr(), 2, bound,
            )  # fmt: skip
            assert status == 0
            assert torch.equal(y, kernel(x)), (rows, bound)


def _q4_model(heads: int, kv_heads: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(5)
    config = LlamaConfig(
        vocab_size=320,
        hidden_size=64 * heads,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).float().eval()
    snap_linears_to_q4_1(model)
    return model


@pytest.mark.parametrize(("heads", "fmt"), [(3, "q8"), (4, "q8"), (3, "q8a8")])
def test_engine_on_the_build_keeps_its_guarantees(
    build: tuple[str, ctypes.CDLL], heads: int, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """3 query heads per KV head: the grouped D = 64 attention; 4: the general path (AVX2).
    ``q8a8`` changes the logits against transformers, so it is held to the tree = solo rule only."""
    _, lib = build
    model = _q4_model(heads, 1)
    monkeypatch.setattr(q8, "_LIB", lib)  # every kernel call of the engine below goes to this build
    engine = NativeEngine(copy.deepcopy(model), fmt)
    assert engine._ops is not None and engine._ops.lib is lib
    kind = Q8Linear if fmt == "q8" else Q8A8Linear
    assert all(isinstance(layer.gate_up, kind) for layer in engine.weights.layers)
    rng = random.Random(heads)
    prompt = [rng.randrange(320) for _ in range(37)]  # 37 + depth: positions that end mid-vector
    tree = random_tree(rng, 320, max_nodes=12)
    cache = engine.new_cache()
    pending = engine.prefill(cache, prompt)
    logits = engine.score_tree(cache, pending, torch.tensor(tree.parents), tree.tokens)  # [1+N, V]
    for node in range(-1, tree.size):
        branch = [] if node < 0 else [tree.tokens[i] for i in path_to(node, tree.parents)]
        tokens = prompt + branch
        if fmt == "q8":
            _, want = sequential_decode(model, tokens)  # transformers, the same fp32 weights
            torch.testing.assert_close(logits[node + 1], want[-1], atol=1e-4, rtol=0)
        solo = engine.new_cache()
        row = engine.score_tree(solo, engine.prefill(solo, tokens[:-1]), torch.tensor([-1]), [tokens[-1]])
        assert torch.equal(row[1], logits[node + 1]), node


@pytest.mark.parametrize("kind", ["q4_1", "q8_0"])
def test_argmax_screen_on_the_build_gives_the_exact_argmax(
    build: tuple[str, ctypes.CDLL], kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The screen's bound loop and rescoring on each width: the argmax of this CPU's exact logits
    (AVX2: the bound's plain-C loop; element by element there is no screen: it would be slower)."""
    name, lib = build
    weight = gguf_like(1000, 96, kind, seed=12)  # 32 panels, the last one partial
    kernel = make_linear(weight, torch.randn(1000) * 0.1, "q8")
    assert isinstance(kernel, Q8Linear)
    x = torch.randn(40, 96) * 3
    x[::4, 7] = 200.0  # an outlier: a loose group
    want = kernel(x).argmax(dim=-1)  # the native build
    monkeypatch.setattr(q8, "_LIB", lib)
    screen = q8.argmax_screen(kernel)
    if name == "portable":
        assert screen is None
        return
    assert screen is not None
    ids, _, fallbacks = screen.argmax(x)
    assert fallbacks < 40 and torch.equal(ids, want)
