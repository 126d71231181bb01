"""Ouroboros part 1: lookahead decoding of the draft LM is exactly its greedy decoding, and yields phrases.

float64 weights, so float round-off cannot flip an argmax between the batched lookahead pass
and transformers' own sequential decoding.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from draft_service.lookahead import LocalPool, LookaheadDecoder, window_inputs
from draft_service.model_drafter import ModelDrafter
from draft_service.ouroboros import OuroborosDrafter
from phrase_store import open_phrase_store, phrases_from_tokens
from spec_decode.models import LoadedModel, load_model
from spec_decode.types import DraftOptions, SamplingParams

GREEDY = SamplingParams()


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lm(tiny_draft: Path) -> LoadedModel:
    return load_model(str(tiny_draft), "cpu", "float64")


def generate_greedy(lm: LoadedModel, context: list[int], n: int) -> list[int]:
    with torch.inference_mode():
        out = lm.model.generate(torch.tensor([context]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return [int(t) for t in out[0, len(context) :]]


def argmax_after(lm: LoadedModel, tokens: list[int]) -> int:
    with torch.inference_mode():
        return int(lm.model(input_ids=torch.tensor([tokens])).logits[0, -1].argmax())


def prompt(seed: int, length: int = 12) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(100, 40000) for _ in range(length)]


def test_window_mask_matches_the_docstring_example() -> None:
    allowed, offsets = window_inputs(2, 2)
    assert allowed.int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]]
    assert offsets.tolist() == [1, 2, 2, 3]


def test_local_pool_is_capped_newest_first() -> None:
    pool = LocalPool(per_key=2, max_keys=2)
    pool.add([(1, 2, 3), (1, 4, 5), (1, 2, 3), (1, 6, 7), (9,)])  # (9,) is no phrase: skipped
    assert pool.get(1, 5) == [(6, 7), (2, 3)]
    pool.add([(2, 1), (3, 1)])  # key 1 is the least recently used: evicted
    assert (pool.get(1, 5), pool.get(3, 1), len(pool)) == ([], [(1,)], 2)


@pytest.mark.parametrize(("window", "level"), [(8, 5), (3, 2), (5, 3)])
def test_chain_equals_greedy_generate_across_rollbacks(lm: LoadedModel, window: int, level: int) -> None:
    la = LookaheadDecoder(lm.model, lm.device, window=window, level=level)
    pool = LocalPool(per_key=window)
    rng = random.Random(window)
    context = prompt(window)
    for step, length in enumerate([9, 1, 6, 20, 4]):
        chain, _ = la.draft(context, length, pool)
        assert chain == generate_greedy(lm, context, length), f"step {step}"
        assert la.cached == context + chain[:-1]  # the last token stays pending
        accepted = rng.randrange(len(chain) + 1)
        context = context + chain[:accepted] + [rng.randrange(100, 40000)]
    assert la.passes > 0


def test_extend_continues_the_last_chain(lm: LoadedModel) -> None:
    la = LookaheadDecoder(lm.model, lm.device)
    pool = LocalPool()
    context = prompt(3)
    first, _ = la.draft(context, 4, pool)
    more, _ = la.extend(7, pool)
    assert first + more == generate_greedy(lm, context, 11)


def test_window_ngrams_are_the_models_own_trajectories(lm: LoadedModel) -> None:
    """Each n-gram (L_0[i], ..., L_top[i], out[i]): out[i] is the LM's argmax after the prefix, the
    pending token, L_0[0..i] and column i of the upper levels, i.e. after its own trajectory."""
    la = LookaheadDecoder(lm.model, lm.device, window=4, level=4)
    pool = LocalPool(per_key=4)
    context = prompt(8)
    checked = 0
    for step in range(6):
        levels = [list(level) for level in la.levels] if la.levels else None
        chain, grams = la.draft(context, 1, pool)  # one pass, no guesses
        if step < 2:  # level 0 is seeded, and the first N - 2 = 2 passes fill the window
            assert grams == []
        else:
            assert levels is not None and len(levels) == 3 and len(grams) == 4
            for i, gram in enumerate(grams):
                column = [levels[0][i], *(level[i] for level in levels[1:])]
                assert list(gram[:-1]) == column
                trajectory = context + levels[0][: i + 1] + [level[i] for level in levels[1:]]
                assert gram[-1] == argmax_after(lm, trajectory)
                checked += 1
            assert all(pool.get(g[0], 8) for g in grams)  # they are in the pool for the guess tree
        context = context + chain
    assert checked == 16


def test_pool_guesses_are_accepted_and_the_chain_stays_exact(lm: LoadedModel) -> None:
    context = prompt(5)
    truth = generate_greedy(lm, context, 24)
    pool = LocalPool()
    # The true continuation as 5-grams, behind decoys that agree on a prefix and then diverge.
    pool.add(phrases_from_tokens([context[-1], *truth], 5))
    seq = [context[-1], *truth]
    pool.add([(t, seq[i + 1], 7, 7, 7) for i, t in enumerate(seq[:-1])])
    la = LookaheadDecoder(lm.model, lm.device)
    chain, _ = la.draft(context, 24, pool)
    assert chain == truth
    assert la.accepted_guesses >= 12 and la.passes <= 12
    # The accepted guesses' keys/values were kept: drafting on from the cache is still exact.
    more, _ = la.extend(6, LocalPool())
    assert truth + more == generate_greedy(lm, context, 30)


def test_ouroboros_with_lookahead_feeds_the_pool(lm: LoadedModel) -> None:
    store = open_phrase_store(None, "ab" * 16)
    d = OuroborosDrafter(store, ModelDrafter(lm.model, lm.device), window=4)
    d.configure(DraftOptions(no_history_phrases=True, phrase_length=3))
    context = prompt(6)
    for _ in range(3):
        tree = d.propose(context, 8, 32, GREEDY, None)
        chain = list(tree.tokens[: 8 - 3])  # cut = 8 - 3: the LM's chain, lengthened by phrases
        assert chain == generate_greedy(lm, context, len(chain))
        assert tree.draft_probs == ()
        context = context + chain[:2] + [123]
    assert d.lookahead is not None and d.lookahead.passes > 0
    stats = store.stats()
    assert stats.added > 0 and all(len(k) == 3 for v in store.get(range(50_000), 16).values() for k in v)
    # no_lookahead: the plain draft LM chain, no phrases from a window
    quiet_store = open_phrase_store(None, "cd" * 16)
    quiet = OuroborosDrafter(quiet_store, ModelDrafter(lm.model, lm.device))
    quiet.configure(DraftOptions(no_history_phrases=True, no_lookahead=True))
    tree = quiet.propose(context, 8, 32, GREEDY, None)
    assert list(tree.tokens) == generate_greedy(lm, context, 8)
    assert quiet.lookahead is not None and quiet.lookahead.passes == 0
    assert quiet_store.stats().added == 0


def test_window_stays_inside_the_models_positions(lm: LoadedModel) -> None:
    la = LookaheadDecoder(lm.model, lm.device)
    limit = la.max_positions  # 512 for the tiny models
    context = prompt(9, limit - la.window - la.level + 1)  # base + W + N = limit at the first pass
    chain, grams = la.draft(context, 6, LocalPool())
    assert chain == generate_greedy(lm, context, 6)
    assert grams == [] and len(la.levels) == 1  # seeded, but it sat out every pass: no room left
