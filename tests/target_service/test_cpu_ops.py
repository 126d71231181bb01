"""The per-layer C ops of a CPU float32 pass: RoPE bit-identical to the torch ops, RMSNorm to rounding."""

from __future__ import annotations

import random

import pytest
import torch
from target_helpers import random_tree
from test_target_engine import _tiny_config_model

from spec_decode.models import LoadedModel, load_model
from specd_kernels.cpu_ops import cpu_ops_for
from target_service.llama_engine import NativeEngine, _apply_rope, _rms_norm

OPS = cpu_ops_for(torch.device("cpu"), torch.float32)
pytestmark = pytest.mark.skipif(OPS is None, reason="the CPU kernel library could not be built")


def test_not_offered_off_cpu_float32_or_when_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    assert cpu_ops_for(torch.device("cpu"), torch.float64) is None
    assert cpu_ops_for(torch.device("cuda"), torch.float32) is None
    monkeypatch.setenv("SPECD_CPU_OPS", "0")
    assert cpu_ops_for(torch.device("cpu"), torch.float32) is None


@pytest.mark.parametrize("rows", [1, 5, 16])
def test_rms_norm_matches_transformers_rounding(rows: int) -> None:
    assert OPS is not None
    x, weight = torch.randn(rows, 576) * 3, torch.randn(576)
    torch.testing.assert_close(OPS.rms_norm(x, weight, 1e-5), _rms_norm(x, weight, 1e-5), atol=2e-6, rtol=2e-6)
    assert torch.equal(OPS.rms_norm(x[-1:], weight, 1e-5)[0], OPS.rms_norm(x, weight, 1e-5)[-1])  # row-exact


@pytest.mark.parametrize("head_dim", [64, 40])  # 40: halves of 20, not a multiple of the vector width
def test_rope_is_bit_identical_to_the_torch_ops(head_dim: int) -> None:
    assert OPS is not None
    rows, heads, kv_heads = 7, 4, 2
    qkv = torch.randn(rows, (heads + 2 * kv_heads) * head_dim)  # [T, (H + 2 Hkv) D]
    cos, sin = torch.randn(rows, 1, head_dim // 2), torch.randn(rows, 1, head_dim // 2)
    q = qkv[:, : heads * head_dim].view(rows, heads, head_dim)
    k = qkv[:, heads * head_dim : (heads + kv_heads) * head_dim].view(rows, kv_heads, head_dim)
    want_q, want_k = _apply_rope(q, cos, sin), _apply_rope(k, cos, sin)
    v_before = qkv[:, (heads + kv_heads) * head_dim :].clone()
    OPS.rope_(qkv, heads + kv_heads, head_dim, cos, sin)
    assert torch.equal(q, want_q) and torch.equal(k, want_k)
    assert torch.equal(qkv[:, (heads + kv_heads) * head_dim :], v_before)  # v untouched


def test_engine_with_and_without_the_c_ops(tiny_target_model: LoadedModel) -> None:
    """Two sessions of different lengths in one tree pass, through the C ops (attention
    included) and through torch ops: equal logits to float32 rounding, equal argmax."""
    engine = NativeEngine(tiny_target_model.model, "packed")
    assert engine._ops is not None
    rng = random.Random(9)
    work = []
    for length in (30, 7):
        prompt = [rng.randrange(engine.vocab_size) for _ in range(length)]
        work.append((prompt, random_tree(rng, engine.vocab_size, max_nodes=10)))
    outputs = []
    for ops in (engine._ops, None):
        engine._ops = ops
        items = []
        for prompt, tree in work:
            cache = engine.new_cache()
            items.append((cache, engine.prefill(cache, prompt), torch.tensor(tree.parents), tree.tokens))
        outputs.append(engine.score_trees(items))  # per session [1+N, V]
    for with_c, with_torch in zip(*outputs, strict=True):
        torch.testing.assert_close(with_c, with_torch, atol=1e-4, rtol=0)
        assert torch.equal(with_c.argmax(-1), with_torch.argmax(-1))


@pytest.mark.parametrize("kind", ["qwen2", "qwen3", "mistral"])
def test_other_architectures_in_float32(kind: str) -> None:
    """q/k/v biases (Qwen2), per-head q/k norms before RoPE (Qwen3: q and k are then tensors of
    their own, not views of the fused qkv) and a sliding window (Mistral), through the C ops."""
    model = _tiny_config_model(kind, 300).float()
    engine = NativeEngine(model, "packed")
    assert engine._ops is not None
    rng = random.Random(3)
    prompt = [rng.randrange(300) for _ in range(25)]
    tree = random_tree(rng, 300, max_nodes=8)
    outputs = []
    for ops in (engine._ops, None):
        engine._ops = ops
        cache = engine.new_cache()
        pending = engine.prefill(cache, prompt)
        outputs.append(engine.score_tree(cache, pending, torch.tensor(tree.parents), tree.tokens))  # [1+N, V]
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def tiny_target_model(tiny_target) -> LoadedModel:  # type: ignore[no-untyped-def]
    return load_model(str(tiny_target), device="cpu", dtype="float32")
