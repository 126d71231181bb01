"""The model drafter: greedy chains equal the draft LM's own generate, across rollbacks."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from draft_service.model_drafter import ModelDrafter
from spec_decode.models import LoadedModel, load_model
from spec_decode.sampling import make_generator, truncate_top_k, warp_probs
from spec_decode.types import DraftOptions, DraftTree, SamplingParams

GREEDY = SamplingParams()
SAMPLED = SamplingParams(temperature=0.9, top_p=0.95)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and lose 10x when the CPU is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def draft_lm(tiny_draft: Path) -> LoadedModel:
    return load_model(str(tiny_draft), "cpu", "float32")


def drafter_for(lm: LoadedModel, **options: Any) -> ModelDrafter:
    drafter = ModelDrafter(lm.model, lm.device)
    drafter.configure(DraftOptions(**options))
    return drafter


def generate_greedy(lm: LoadedModel, context: list[int], n: int) -> list[int]:
    with torch.inference_mode():
        out = lm.model.generate(
            torch.tensor([context]), max_new_tokens=n, min_new_tokens=n, do_sample=False
        )  # [1, len(context) + n]
    return [int(t) for t in out[0, len(context) :]]


def prompt(seed: int, length: int = 12) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1000, 40000) for _ in range(length)]


def test_greedy_chain_equals_generate(draft_lm: LoadedModel) -> None:
    context = prompt(0)
    tree = drafter_for(draft_lm).propose(context, 6, 16, GREEDY, None)
    assert tree == DraftTree.chain(generate_greedy(draft_lm, context, 6))
    assert tree.draft_probs == ()


def test_greedy_chain_survives_partial_acceptance_rollbacks(draft_lm: LoadedModel) -> None:
    """Next context = old + some drafted tokens + a different token; compare with fresh drafters."""
    rng = random.Random(1)
    drafter = drafter_for(draft_lm)
    context = prompt(1)
    for step in range(6):
        tree = drafter.propose(context, 5, 5, GREEDY, None)
        fresh = drafter_for(draft_lm).propose(context, 5, 5, GREEDY, None)
        assert tree == fresh, f"step {step}"
        if step % 3 == 0:
            assert list(tree.tokens) == generate_greedy(draft_lm, context, 5)
        accepted = [0, 5, 2, 1, 4, 3][step]
        drafted = list(tree.tokens)
        other = rng.randrange(1000, 40000)
        while accepted < len(drafted) and other == drafted[accepted]:
            other += 1
        assert drafter.cached == context + drafted[:-1]
        context = context + drafted[:accepted] + [other]


def test_cache_follows_restarts_and_repeated_contexts(draft_lm: LoadedModel) -> None:
    drafter = drafter_for(draft_lm)
    a, b = prompt(2), prompt(3)
    first = drafter.propose(a, 4, 4, GREEDY, None)
    assert drafter.cached == a + list(first.tokens[:-1])  # the last draft token is never fed
    assert drafter.propose(a, 4, 4, GREEDY, None) == first  # same context again
    for other in (b, a[:5]):  # a different context, then a shorter one
        fresh = drafter_for(draft_lm).propose(other, 3, 3, GREEDY, None)
        assert drafter.propose(other, 3, 3, GREEDY, None) == fresh


def test_length_is_bounded_by_max_tokens_and_max_nodes(draft_lm: LoadedModel) -> None:
    drafter = drafter_for(draft_lm)
    context = prompt(4)
    assert drafter.propose(context, 7, 3, GREEDY, None).size == 3
    assert drafter.propose(context, 2, 9, GREEDY, None).size == 2
    assert drafter.propose(context, 5, 0, GREEDY, None).size == 0
    assert drafter.propose([], 5, 5, GREEDY, None).size == 0


def test_sampled_nodes_carry_their_sparse_q(draft_lm: LoadedModel) -> None:
    drafter = drafter_for(draft_lm, draft_top_k=8)
    context = prompt(5)
    tree = drafter.propose(context, 6, 6, SAMPLED, make_generator(11))
    assert tree.parents == tuple(range(-1, 5))
    assert len(tree.draft_probs) == tree.size == 6
    for token, q in zip(tree.tokens, tree.draft_probs, strict=True):
        assert 1 <= len(q.ids) <= 8
        assert len(set(q.ids)) == len(q.ids) == len(q.probs)
        assert token in q.ids
        assert q.probs[q.ids.index(token)] > 0
        assert sum(q.probs) == pytest.approx(1.0, abs=1e-5)
    # Each q is the warped, top-k-truncated distribution after the context and earlier drafts.
    with torch.inference_mode():
        for i, q in enumerate(tree.draft_probs):
            ids = torch.tensor([context + list(tree.tokens[:i])])
            logits = draft_lm.model(input_ids=ids).logits[0, -1]  # [V]
            expected = truncate_top_k(warp_probs(logits, SAMPLED), 8)
            assert q.ids == expected.ids
            assert q.probs == pytest.approx(expected.probs, abs=1e-4)


def test_sampled_drafts_are_reproducible_with_a_seeded_generator(draft_lm: LoadedModel) -> None:
    context = prompt(6)
    one = drafter_for(draft_lm).propose(context, 5, 5, SAMPLED, make_generator(3))
    two = drafter_for(draft_lm).propose(context, 5, 5, SAMPLED, make_generator(3))
    assert one == two
    runs = {drafter_for(draft_lm).propose(context, 5, 5, SAMPLED, make_generator(s)).tokens for s in range(6)}
    assert len(runs) > 1  # the generator does drive the draft


def test_default_draft_top_k_is_16(draft_lm: LoadedModel) -> None:
    tree = drafter_for(draft_lm).propose(prompt(7), 3, 3, SamplingParams(temperature=5.0), make_generator(0))
    assert all(len(q.ids) == 16 for q in tree.draft_probs)
