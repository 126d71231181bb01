"""TreeEngine: a tree pass equals sequential decoding of every branch; commit equals feeding the path."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch
from target_helpers import assert_cache_equal, inject_failure, random_tree, sequential_decode

from spec_decode.models import LoadedModel, load_model
from spec_decode.tree import path_to
from target_service.engine import TargetEngine
from target_service.engine import build_engine as build_target_engine
from target_service.llama_engine import NativeEngine


@pytest.fixture(params=["hf", "native", "native-static"])
def engine_kind(request: pytest.FixtureRequest) -> str:
    """Every engine test runs against both engines (the native one in ``dense`` format here), and
    the native one again on its static-shape path (the body CUDA graphs capture, run eagerly)."""
    return str(request.param)


def build_engine(model: Any, kind: str) -> TargetEngine:
    """The engine under test; ``native-static`` has small slots (40 positions) so that tests
    also cross from a static slot to the eager path when a session outgrows it."""
    if kind == "native-static":
        return NativeEngine(model, "dense", static="eager", static_context=40)
    return build_target_engine(model, kind)


def _prompt(rng: random.Random, vocab: int, lo: int = 1, hi: int = 12) -> list[int]:
    return [rng.randrange(vocab) for _ in range(rng.randint(lo, hi))]


def _check_tree_pass(model: Any, engine: TargetEngine, seed: int, atol: float) -> None:
    rng = random.Random(seed)
    vocab = engine.vocab_size
    prompt = _prompt(rng, vocab)
    tree = random_tree(rng, vocab)
    cache = engine.new_cache()
    pending = engine.prefill(cache, prompt)
    assert pending == prompt[-1] and engine.cache_len(cache) == len(prompt) - 1
    logits = engine.score_tree(cache, pending, torch.tensor(tree.parents), tree.tokens)  # [1+N, V]
    assert logits.shape == (1 + tree.size, vocab)
    assert engine.cache_len(cache) == len(prompt) + tree.size
    _, want = sequential_decode(model, prompt)
    torch.testing.assert_close(logits[0], want[-1], atol=atol, rtol=0)
    for node in range(tree.size):
        branch = [tree.tokens[i] for i in path_to(node, tree.parents)]
        _, want = sequential_decode(model, prompt + branch)
        torch.testing.assert_close(logits[node + 1], want[-1], atol=atol, rtol=0, msg=f"node {node}")


@pytest.mark.parametrize("seed", range(4))
def test_tree_pass_equals_sequential_decoding_of_each_branch(
    target64: LoadedModel, seed: int, engine_kind: str
) -> None:
    _check_tree_pass(target64.model, build_engine(target64.model, engine_kind), seed, atol=1e-6)


def _tiny_config_model(kind: str, vocab: int) -> Any:
    from transformers import (
        MistralConfig,
        MistralForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    torch.manual_seed(7)
    common: dict[str, Any] = dict(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    model: Any
    if kind == "qwen2":  # biases on q/k/v
        model = Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=True))
    elif kind == "qwen3":  # RMSNorm on q and k per head, explicit head_dim
        model = Qwen3ForCausalLM(Qwen3Config(**common, head_dim=16, tie_word_embeddings=False))
    else:
        model = MistralForCausalLM(MistralConfig(**common, sliding_window=64))
    return model.to(torch.float64).eval().requires_grad_(False)


@pytest.mark.parametrize("kind", ["qwen2", "qwen3", "mistral"])
def test_tree_pass_other_architectures(target64: LoadedModel, kind: str, engine_kind: str) -> None:
    model = _tiny_config_model(kind, target64.vocab.vocab_size)
    engine = build_engine(model, engine_kind)
    if kind == "mistral":
        assert engine.max_positions == 64  # the sliding window caps full-attention context
    _check_tree_pass(model, engine, seed=11, atol=1e-6)


def test_tree_pass_with_eager_attention(tiny_target: Path, engine_kind: str) -> None:
    """Eager attention adds the mask to the scores: the engine's additive float mask suits it.

    Eager softmax runs in float32 even for float64 weights, hence the looser tolerance.
    """
    loaded = load_model(str(tiny_target), device="cpu", dtype="float64")
    loaded.model.set_attn_implementation("eager")
    engine = build_engine(loaded.model, engine_kind)
    assert loaded.model.config._attn_implementation == "eager"
    _check_tree_pass(loaded.model, engine, seed=5, atol=1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_commit_equals_feeding_the_accepted_path(target64: LoadedModel, seed: int, engine_kind: str) -> None:
    rng = random.Random(100 + seed)
    engine = build_engine(target64.model, engine_kind)
    vocab = engine.vocab_size
    prompt = _prompt(rng, vocab)
    tree = random_tree(rng, vocab)
    cache = engine.new_cache()
    pending = engine.prefill(cache, prompt)
    engine.score_tree(cache, pending, torch.tensor(tree.parents), tree.tokens)
    # Accept the path to the deepest, last-numbered node: it skips rows, so index_select is exercised.
    node = max(range(tree.size), key=lambda i: (len(path_to(i, tree.parents)), i))
    path = path_to(node, tree.parents)
    engine.commit(cache, len(prompt) - 1, [0, *(i + 1 for i in path)])
    want, _ = sequential_decode(target64.model, prompt + [tree.tokens[i] for i in path])
    assert engine.cache_len(cache) == len(prompt) + len(path)
    assert_cache_equal(cache, want)


def test_commit_of_nothing_but_the_pending_token(target64: LoadedModel, engine_kind: str) -> None:
    engine = build_engine(target64.model, engine_kind)
    prompt = [11, 22, 33]
    cache = engine.new_cache()
    pending = engine.prefill(cache, prompt)
    engine.score_tree(cache, pending, torch.tensor([-1, 0, -1]), [5, 6, 7])
    engine.commit(cache, 2, [0])
    want, _ = sequential_decode(target64.model, prompt)
    assert_cache_equal(cache, want)


def test_empty_tree_is_one_plain_decode_step(target64: LoadedModel, engine_kind: str) -> None:
    engine = build_engine(target64.model, engine_kind)
    prompt = [7, 8, 9, 10]
    cache = engine.new_cache()
    pending = engine.prefill(cache, prompt)
    logits = engine.score_tree(cache, pending, torch.zeros(0, dtype=torch.long), [])
    assert logits.shape == (1, engine.vocab_size)
    want_cache, want = sequential_decode(target64.model, prompt)
    torch.testing.assert_close(logits[0], want[-1], atol=1e-10, rtol=0)
    engine.commit(cache, 3, [0])
    assert_cache_equal(cache, want_cache)


def test_one_token_prompt_feeds_nothing(target64: LoadedModel, engine_kind: str) -> None:
    engine = build_engine(target64.model, engine_kind)
    cache = engine.new_cache()
    assert engine.prefill(cache, [42]) == 42
    assert engine.cache_len(cache) == 0
    assert engine.kv_bytes(cache) == 0 or engine_kind == "native-static"  # a static slot is allocated up front
    logits = engine.score_tree(cache, 42, torch.tensor([-1]), [43])
    _, want = sequential_decode(target64.model, [42, 43])
    torch.testing.assert_close(logits, want, atol=1e-10, rtol=0)


def test_failed_pass_leaves_the_cache_as_it_was(
    target64: LoadedModel, monkeypatch: pytest.MonkeyPatch, engine_kind: str
) -> None:
    engine = build_engine(target64.model, engine_kind)
    cache = engine.new_cache()
    pending = engine.prefill(cache, [1, 2, 3, 4])
    before, _ = sequential_decode(target64.model, [1, 2, 3])
    calls = inject_failure(engine, monkeypatch)  # fails after layer 0 has written its KV
    with pytest.raises(RuntimeError, match="simulated"):
        engine.score_tree(cache, pending, torch.tensor([-1, 0]), [5, 6])
    assert calls["n"] == 1
    assert engine.cache_len(cache) == 3
    assert_cache_equal(cache, before)
    monkeypatch.undo()  # and the next pass works on the untouched cache
    logits = engine.score_tree(cache, pending, torch.tensor([-1]), [5])
    _, want = sequential_decode(target64.model, [1, 2, 3, 4, 5])
    torch.testing.assert_close(logits, want[-2:], atol=1e-9, rtol=0)


def test_kv_bytes_counts_every_layer(target64: LoadedModel, engine_kind: str) -> None:
    engine = build_engine(target64.model, engine_kind)
    cache = engine.new_cache()
    engine.prefill(cache, list(range(10, 20)))
    cfg = target64.model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    per_position = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head_dim * 8
    if engine_kind == "hf":
        assert engine.kv_bytes(cache) == per_position * 9
    else:  # preallocated: the bytes held are the capacity's (whole blocks, or the static slot's)
        assert cache.capacity >= 9 and cache.capacity % (40 if engine_kind == "native-static" else 64) == 0
        assert engine.kv_bytes(cache) == per_position * cache.capacity


def test_copy_cache_forks_an_independent_session(target64: LoadedModel, engine_kind: str) -> None:
    """A copied cache continues exactly like the original, and passes on one leave the other alone."""
    engine = build_engine(target64.model, engine_kind)
    rng = random.Random(21)
    vocab = engine.vocab_size
    prompt = _prompt(rng, vocab, lo=4)
    cache = engine.new_cache()
    pending = engine.prefill(cache, prompt)
    fork = engine.copy_cache(cache)
    assert engine.cache_len(fork) == engine.cache_len(cache)
    tree = random_tree(rng, vocab)
    want = engine.score_tree(cache, pending, torch.tensor(tree.parents), tree.tokens)  # [1+N, V]
    assert engine.cache_len(fork) == len(prompt) - 1  # the original's pass did not touch the fork
    got = engine.score_tree(fork, pending, torch.tensor(tree.parents), tree.tokens)
    torch.testing.assert_close(got, want, atol=1e-10, rtol=0)
    assert_cache_equal(fork, cache)
