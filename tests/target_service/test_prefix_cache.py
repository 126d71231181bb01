"""The target's prompt-prefix cache: exact-prefix blocks, LRU eviction, and prompts that reuse
them getting what a full prefill gives (bit for bit on the CPU's q8 engine)."""

from __future__ import annotations

import random

import pytest
import torch
from target_helpers import MakeVerifier

from spec_decode.models import LoadedModel
from spec_decode.types import DraftTree, SamplingParams
from target_service.llama_engine import NativeEngine
from target_service.prefix_cache import PrefixCache

GREEDY = SamplingParams()


def _rows(tag: float):  # a fake engine's KV rows: 4 floats per position, tagged by the prompt
    return lambda lo, hi: torch.full((hi - lo, 4), tag)


def test_blocks_stand_for_exact_prefixes() -> None:
    cache = PrefixCache(block=2, max_bytes=1 << 20)
    assert cache.insert([1, 2, 3, 4, 5], _rows(1.0)) == 2  # [1 2] [3 4]; the odd 5 is no full block
    assert [b.data[0, 0].item() for b in cache.lookup([1, 2, 3, 4, 9, 9], limit=6)] == [1.0, 1.0]
    assert len(cache.lookup([1, 2, 3, 4, 9, 9], limit=3)) == 1  # at most `limit` tokens
    assert cache.lookup([3, 4, 1, 2], limit=4) == []  # [3 4] is cached only after [1 2]
    assert cache.insert([7, 7, 3, 4], _rows(2.0)) == 2  # the same tokens after another prefix: a block of its own
    assert [b.data[0, 0].item() for b in cache.lookup([7, 7, 3, 4], 4)] == [2.0, 2.0]
    assert cache.insert([1, 2, 3, 4, 6, 6], _rows(3.0)) == 1  # shares two blocks, adds one
    assert [b.data[0, 0].item() for b in cache.lookup([1, 2, 3, 4, 6, 6], 6)] == [1.0, 1.0, 3.0]
    assert cache.hit_tokens == 4 + 2 + 4 + 6


def test_lru_eviction_takes_descendants_and_keeps_the_cap() -> None:
    block_bytes = 2 * 4 * 4  # 2 positions x 4 floats
    cache = PrefixCache(block=2, max_bytes=3 * block_bytes)
    cache.insert([1, 1, 2, 2], _rows(1.0))  # a, a->b
    cache.insert([5, 5], _rows(2.0))  # c
    cache.lookup([1, 1], 2)  # a is fresh again; b and c are older
    cache.insert([6, 6], _rows(3.0))  # over the cap by one block: the least recently used (b) goes
    assert len(cache) == 3 and cache.bytes == 3 * block_bytes
    assert len(cache.lookup([1, 1, 2, 2], 4)) == 1 and cache.lookup([5, 5], 2) and cache.lookup([6, 6], 2)
    cache.lookup([5, 5], 2)
    cache.lookup([6, 6], 2)
    cache.insert([7, 7], _rows(4.0))  # now a is the oldest: it goes
    assert cache.lookup([1, 1], 2) == [] and len(cache) == 3
    cache.insert([8, 8, 9, 9, 10, 10], _rows(5.0))  # a chain as big as the cap: everything else goes
    assert len(cache) == 3 and len(cache.lookup([8, 8, 9, 9, 10, 10], 6)) == 3
    cache.insert([3, 3, 4, 4, 5, 5, 6, 6], _rows(6.0))  # longer than the cap: as much as fits, never over
    assert cache.bytes <= cache.max_bytes and len(cache.lookup([3, 3, 4, 4], 4)) == 2
    assert PrefixCache(block=2, max_bytes=0).insert([1, 1], _rows(1.0)) == 0  # off
    with pytest.raises(ValueError):
        PrefixCache(block=0, max_bytes=1)


def test_a_cached_prefix_gives_the_bits_of_a_full_prefill(q4_target: LoadedModel) -> None:
    """KV rows of a shared prefix copied from one session into another, the rest fed, equal one
    prefill of the whole prompt: the cache, the hidden row and the next pass's logits (q8)."""
    engine = NativeEngine(q4_target.model, "q8")
    rng = random.Random(3)
    vocab = engine.vocab_size
    shared = [rng.randrange(vocab) for _ in range(16)]
    first = shared + [rng.randrange(vocab) for _ in range(9)]
    second = shared + [rng.randrange(vocab) for _ in range(13)]
    a = engine.new_cache()
    engine.prefill(a, first)
    blocks = [engine.kv_rows(a, lo, lo + 8) for lo in (0, 8)]
    reused = engine.new_cache()
    engine.append_kv_rows(reused, blocks)
    engine.score_trees_and_feed((), [(reused, second[16:-1])])
    whole = engine.new_cache()
    pending = engine.prefill(whole, second)
    n = engine.cache_len(whole)
    assert engine.cache_len(reused) == n
    assert torch.equal(reused.data[:, :, :, :n], whole.data[:, :, :, :n])
    assert torch.equal(engine.hidden_rows(reused), engine.hidden_rows(whole))
    tree = torch.tensor([-1, 0, 0]), [5, 6, 7]
    assert torch.equal(engine.score_tree(reused, pending, *tree), engine.score_tree(whole, pending, *tree))


def test_prompts_sharing_a_prefix_reuse_it_and_decode_the_same(make_verifier: MakeVerifier) -> None:
    rng = random.Random(8)
    system = [rng.randrange(1, 60) for _ in range(19)]  # two 8-token blocks, then 3 more
    prompts = [system + [rng.randrange(1, 60) for _ in range(5 + i)] for i in range(3)]
    chain = DraftTree.chain([3, 4, 5])

    def run(verifier) -> list[list[int]]:
        out = []
        for i, prompt in enumerate(prompts):
            verifier.prefill(f"s{i}", prompt, GREEDY, return_hidden_state=True)
            out.append([t for _ in range(3) for t in verifier.verify(f"s{i}", chain).acceptance.emitted])
        return out

    plain = make_verifier(prefix_cache_mb=0)
    cached = make_verifier()
    assert run(cached) == run(plain)
    assert plain.stats().prefix_cache_tokens == 0
    assert cached.stats().prefix_cache_tokens == 2 * 16  # the 2nd and 3rd prompts: the system's two blocks
    assert cached.stats().prefix_cache_bytes > 0
    # A prompt that is only cached blocks plus its pending token still computes one row (its state).
    again = cached.prefill("again", prompts[0][:17], GREEDY, return_hidden_state=True)
    assert len(again.hidden_state) > 0 and again.context_len == 17
