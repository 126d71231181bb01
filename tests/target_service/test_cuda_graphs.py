"""The native engine's CUDA-graph path against its own eager path, on a CUDA device.

Skipped where no GPU is present (CI); run on a GPU machine with
``python -m pytest -q tests/target_service/test_cuda_graphs.py``. The static-shape body these
graphs capture is checked on every machine by ``test_native_engine.py`` (run eagerly there).
"""

from __future__ import annotations

import random

import pytest
import torch
from target_helpers import random_tree

from spec_decode.tree import path_to
from target_service.llama_engine import NativeEngine

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _model(dtype: torch.dtype) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    return LlamaForCausalLM(config).to(device="cuda", dtype=dtype).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_graph_replays_equal_the_eager_engine(dtype: torch.dtype) -> None:
    """Tree passes replayed from CUDA graphs give the eager engine's logits and cache (fp32 to
    1e-4; bf16 to 3e-2 since attention over the padded slot sums in another order)."""
    model = _model(dtype)
    eager = NativeEngine(model, "dense", static="off")
    graphs = NativeEngine(model, "dense", static="graphs", static_context=128)
    atol = 1e-4 if dtype == torch.float32 else 3e-2
    rng = random.Random(4)
    prompt = [rng.randrange(512) for _ in range(20)]
    a, b = eager.new_cache(), graphs.new_cache()
    pending = eager.prefill(a, prompt)
    graphs.prefill(b, prompt)
    while eager.cache_len(a) < 150:  # crosses the 128-position slot: graphs hand over to eager
        tree = random_tree(rng, 512, max_nodes=rng.choice([1, 3, 7, 15]))
        parents = torch.tensor(tree.parents, dtype=torch.long)
        want = eager.score_tree(a, pending, parents, tree.tokens)  # [1+N, V]
        got = graphs.score_tree(b, pending, parents, tree.tokens)
        torch.testing.assert_close(got.float(), want.float(), atol=atol, rtol=0)
        node = rng.randrange(-1, tree.size)
        keep = [0] + ([] if node < 0 else [i + 1 for i in path_to(node, tree.parents)])
        prefix = eager.cache_len(a) - 1 - tree.size
        eager.commit(a, prefix, keep)
        graphs.commit(b, prefix, keep)
        n = a.length
        torch.testing.assert_close(b.data[:, :, :, :n].float(), a.data[:, :, :, :n].float(), atol=atol, rtol=0)
        pending = int(want[keep[-1]].argmax())
    assert graphs.static is not None
    assert graphs.static.stats["captures"] >= 2 and graphs.static.stats["replays"] > graphs.static.stats["captures"]
    assert b.slot is None  # outgrew its slot and went on eagerly


def test_greedy_chain_is_identical_with_and_without_graphs() -> None:
    """fp32 greedy decoding, one token per pass: graph replays choose the eager engine's tokens."""
    model = _model(torch.float32)
    runs = []
    for static in ("off", "graphs"):
        engine = NativeEngine(model, "dense", static=static)
        cache = engine.new_cache()
        pending = engine.prefill(cache, [5, 6, 7, 8])
        out = []
        empty = torch.zeros(0, dtype=torch.long)
        for _ in range(60):
            logits = engine.score_tree(cache, pending, empty, [])  # [1, V]
            engine.commit(cache, engine.cache_len(cache) - 1, [0])
            pending = int(logits[0].argmax())
            out.append(pending)
        runs.append(out)
    assert runs[0] == runs[1]
