"""The native engine beyond the shared engine tests: fp32 packed weights, batching, growth, fallback."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path

import pytest
import torch
from target_helpers import assert_cache_equal, random_tree, sequential_decode

from spec_decode.errors import InvalidArgument
from spec_decode.models import LoadedModel, load_model
from spec_decode.tree import path_to
from specd_kernels.linear import resolve_format
from target_service.engine import TreeEngine, build_engine
from target_service.llama_engine import KVCache, NativeEngine


@pytest.fixture(scope="module")
def target32(tiny_target: Path) -> LoadedModel:
    return load_model(str(tiny_target), device="cpu", dtype="float32")


@pytest.mark.parametrize("fmt", ["dense", "packed", "q8"])
def test_fp32_formats_match_transformers(target32: LoadedModel, fmt: str) -> None:
    """fp32 logits within 1e-4 of transformers' (another summation order), same argmax."""
    engine = NativeEngine(target32.model, fmt)
    assert engine.weight_format == fmt
    rng = random.Random(3)
    vocab = engine.vocab_size
    for _ in range(3):
        prompt = [rng.randrange(vocab) for _ in range(rng.randint(2, 40))]
        tree = random_tree(rng, vocab, max_nodes=16)
        cache = engine.new_cache()
        pending = engine.prefill(cache, prompt)
        logits = engine.score_tree(cache, pending, torch.tensor(tree.parents), tree.tokens)  # [1+N, V]
        for node in range(-1, tree.size):
            branch = [] if node < 0 else [tree.tokens[i] for i in path_to(node, tree.parents)]
            _, want = sequential_decode(target32.model, prompt + branch)
            torch.testing.assert_close(logits[node + 1], want[-1], atol=1e-4, rtol=0)
            assert int(logits[node + 1].argmax()) == int(want[-1].argmax())


def test_batched_trees_equal_one_session_at_a_time(target64: LoadedModel) -> None:
    """score_trees over several sessions (different lengths, trees) = score_tree per session."""
    engine = NativeEngine(target64.model, "dense")
    rng = random.Random(5)
    vocab = engine.vocab_size
    items, solo_caches, solo_logits = [], [], []
    for i in range(4):
        prompt = [rng.randrange(vocab) for _ in range(3 + 7 * i)]
        tree = random_tree(rng, vocab, max_nodes=10)
        parents = torch.tensor(tree.parents)
        batch_cache, solo = engine.new_cache(), engine.new_cache()
        pending = engine.prefill(batch_cache, prompt)
        engine.prefill(solo, prompt)
        solo_logits.append(engine.score_tree(solo, pending, parents, tree.tokens))
        solo_caches.append(solo)
        items.append((batch_cache, pending, parents, tree.tokens))
    calls: list[int] = []  # rows of each LM-head call
    lm_head = engine.weights.lm_head

    def counting(rows: torch.Tensor) -> torch.Tensor:
        calls.append(rows.shape[0])
        return lm_head(rows)

    engine.weights = dataclasses.replace(engine.weights, lm_head=counting)  # type: ignore[arg-type]
    batched = engine.score_trees(items)
    assert calls == [sum(len(tokens) + 1 for _, _, _, tokens in items)]  # one LM-head call for every session
    for (cache, *_), solo, got, want in zip(items, solo_caches, batched, solo_logits, strict=True):
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
        assert_cache_equal(cache, solo)


def test_cache_growth_keeps_every_position(target64: LoadedModel) -> None:
    """Many small passes cross several capacity doublings; the result equals one-by-one decoding."""
    engine = NativeEngine(target64.model, "dense")
    rng = random.Random(9)
    tokens = [rng.randrange(engine.vocab_size) for _ in range(150)]
    cache = engine.new_cache()
    pending = engine.prefill(cache, tokens[:2])
    capacities = {cache.capacity}
    pos = 2
    while pos < len(tokens):
        step = tokens[pos : pos + rng.randint(1, 5)]
        prefix = engine.cache_len(cache)
        engine.score_tree(cache, pending, torch.arange(-1, len(step) - 1), step)
        engine.commit(cache, prefix, list(range(len(step))))  # keep the pending token + all but the last
        pending, pos = step[-1], pos + len(step)
        capacities.add(cache.capacity)
    assert len(capacities) >= 3 and engine.cache_len(cache) == len(tokens) - 1
    want, _ = sequential_decode(target64.model, tokens[:-1])
    assert_cache_equal(cache, want, atol=1e-9)


def test_commit_moves_rows_in_place(target64: LoadedModel) -> None:
    engine = NativeEngine(target64.model, "dense")
    cache = engine.new_cache()
    pending = engine.prefill(cache, [3, 4, 5])
    engine.score_tree(cache, pending, torch.tensor([-1, -1, 1, 2]), [6, 7, 8, 9])
    storage = cache.data.data_ptr()
    engine.commit(cache, 2, [0, 2, 3, 4])  # pending, then 7 -> 8 -> 9: rows move down by one
    assert cache.data.data_ptr() == storage and engine.cache_len(cache) == 6
    want, _ = sequential_decode(target64.model, [3, 4, 5, 7, 8, 9])
    assert_cache_equal(cache, want, atol=1e-9)
    with pytest.raises(ValueError, match="must increase"):
        engine.commit(cache, 2, [0, 0])


def test_context_limit_is_enforced(target64: LoadedModel) -> None:
    engine = NativeEngine(target64.model, "dense", max_context=40)
    assert engine.max_positions == 40
    cache = engine.new_cache()
    pending = engine.prefill(cache, list(range(1, 39)))
    with pytest.raises(ValueError, match="exceed the engine's limit of 40"):
        engine.score_tree(cache, pending, torch.tensor([-1, 0, 1]), [1, 2, 3])
    assert engine.cache_len(cache) == 37 and isinstance(cache, KVCache)


def test_engine_choice(target64: LoadedModel, target32: LoadedModel) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    assert isinstance(build_engine(target64.model, "auto"), NativeEngine)
    assert isinstance(build_engine(target64.model, "hf"), TreeEngine)
    assert build_engine(target32.model, "auto").weight_format == "q8"  # type: ignore[union-attr]
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64)).eval()
    assert isinstance(build_engine(gpt2, "auto"), TreeEngine)  # not Llama-family: transformers runs it
    with pytest.raises(InvalidArgument, match="native engine cannot run this model: model_type 'gpt2'"):
        build_engine(gpt2, "native")
    with pytest.raises(InvalidArgument, match="unknown engine 'fast'"):
        build_engine(gpt2, "fast")
    with pytest.raises(InvalidArgument, match="needs the native engine"):
        build_engine(target32.model, "hf", "packed")


def test_weight_format_validation() -> None:
    cpu = torch.device("cpu")
    assert resolve_format(None, cpu, torch.float64) == "dense"
    assert resolve_format("auto", cpu, torch.float32) == "q8"
    with pytest.raises(InvalidArgument, match="'packed' needs float32"):
        resolve_format("packed", cpu, torch.float64)
    with pytest.raises(InvalidArgument, match="unknown weight format 'int4'"):
        resolve_format("int4", cpu, torch.float32)


def test_static_path_decodes_like_the_eager_path(target64: LoadedModel) -> None:
    """Static-shape passes (padded buckets, attention over the whole slot) give the eager engine's
    logits and cache through a long run of tree passes and commits, and hand over to the eager
    path when the session outgrows its slot."""
    eager = NativeEngine(target64.model, "dense")
    static = NativeEngine(target64.model, "dense", static="eager", static_context=64)
    assert static.static is not None and static.static.buckets == (1, 2, 4, 8, 16, 32, 64)
    rng = random.Random(17)
    vocab = eager.vocab_size
    prompt = [rng.randrange(vocab) for _ in range(9)]
    a, b = eager.new_cache(), static.new_cache()
    assert b.slot is not None
    pending = eager.prefill(a, prompt)
    static.prefill(b, prompt)
    while eager.cache_len(a) < 90:
        tree = random_tree(rng, vocab, max_nodes=rng.choice([1, 2, 6, 12]))  # Q = 1 + N: padded to a bucket
        parents = torch.tensor(tree.parents, dtype=torch.long)
        want = eager.score_tree(a, pending, parents, tree.tokens)
        got = static.score_tree(b, pending, parents, tree.tokens)
        torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
        torch.testing.assert_close(static.hidden_rows(b), eager.hidden_rows(a), atol=1e-10, rtol=0)
        node = rng.randrange(-1, tree.size)
        path = [] if node < 0 else path_to(node, tree.parents)
        prefix = eager.cache_len(a) - 1 - tree.size
        keep = [0] + [i + 1 for i in path]
        eager.commit(a, prefix, keep)
        static.commit(b, prefix, keep)
        assert_cache_equal(b, a)
        pending = int(want[keep[-1]].argmax())
    assert static.static.stats["eager_static"] > 5  # the static body ran ...
    assert b.slot is None and b.capacity > 64  # ... until the session outgrew its slot
    c = static.new_cache()  # the slot it left is reused
    assert c.slot == 0 and static.static.slots == 1


def test_static_slots_return_when_a_cache_is_dropped(target64: LoadedModel) -> None:
    engine = NativeEngine(target64.model, "dense", static="eager", static_context=64)
    assert engine.static is not None
    first = engine.new_cache()
    second = engine.new_cache()
    assert (first.slot, second.slot) == (0, 1)
    del first
    import gc

    gc.collect()
    third = engine.new_cache()
    assert third.slot == 0 and engine.static.slots == 2
    with pytest.raises(ValueError, match="static mode"):
        NativeEngine(target64.model, "dense", static="sometimes")
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        NativeEngine(target64.model, "dense", static="graphs")
