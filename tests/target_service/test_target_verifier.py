"""TargetVerifier end to end on the tiny target: greedy losslessness, KV state, sampling."""

from __future__ import annotations

import random
import threading
from typing import Any

import pytest
from target_helpers import (
    MakeVerifier,
    assert_cache_equal,
    greedy_reference,
    lossless_tree,
    random_tree,
    sequential_decode,
)

from spec_decode.models import LoadedModel
from spec_decode.types import EMPTY_TREE, Acceptance, DraftTree, SamplingParams, SparseProbs
from target_service.verifier import TargetVerifier

GREEDY = SamplingParams()
NEW_TOKENS = 30


def _run_lossless(
    verifier: TargetVerifier,
    model: Any,
    prompt: list[int],
    rng: random.Random,
    sampling: SamplingParams,
    sid: str,
) -> tuple[list[int], list[int], list[Acceptance]]:
    """Verify random trees (seeded with the target's own tokens) until NEW_TOKENS are out."""
    vocab = verifier.engine.vocab_size
    ref = greedy_reference(model, prompt, NEW_TOKENS + 8)
    assert len(ref) == NEW_TOKENS + 8
    verifier.prefill(sid, prompt, sampling)
    out: list[int] = []
    steps: list[Acceptance] = []
    while len(out) < NEW_TOKENS:
        tree = lossless_tree(rng, ref[len(out) :], vocab)
        result = verifier.verify(sid, tree)
        assert result.context_len == len(prompt) + len(out) + len(result.acceptance.emitted)
        out.extend(result.acceptance.emitted)
        steps.append(result.acceptance)
    return out[:NEW_TOKENS], ref[:NEW_TOKENS], steps


def test_greedy_verify_loop_equals_generate(verifier: TargetVerifier, target64: LoadedModel) -> None:
    """20 random prompts x 30 tokens: the output is exactly model.generate(do_sample=False)'s."""
    rng = random.Random(2024)
    vocab = verifier.engine.vocab_size
    steps: list[Acceptance] = []
    for p in range(20):
        prompt = [rng.randrange(vocab) for _ in range(rng.randint(1, 16))]
        out, ref, these = _run_lossless(verifier, target64.model, prompt, rng, GREEDY, f"s{p}")
        assert out == ref, f"prompt {p} ({prompt}) diverged from generate()"
        steps += these
        assert verifier.release(f"s{p}")
    # The trees carried the target's own tokens, so drafts were really accepted, with both
    # endings: bonus (a whole branch accepted) and recovered (a draft token rejected).
    accepted = sum(len(a.tokens) for a in steps)
    assert accepted >= 150 and len(steps) < 20 * NEW_TOKENS * 0.7, (accepted, len(steps))
    assert sum(a.bonus for a in steps) >= 20 and sum(not a.bonus for a in steps) >= 20


def test_top_k_1_sampling_is_greedy(verifier: TargetVerifier, target64: LoadedModel) -> None:
    """temperature 1, top_k 1: p is one-hot at the argmax, so rejection sampling must reproduce greedy."""
    rng = random.Random(7)
    params = SamplingParams(temperature=1.0, top_k=1, seed=3)
    for p in range(3):
        prompt = [rng.randrange(verifier.engine.vocab_size) for _ in range(rng.randint(1, 10))]
        out, ref, steps = _run_lossless(verifier, target64.model, prompt, rng, params, f"k{p}")
        assert out == ref
        assert sum(len(a.tokens) for a in steps) > 0


def test_kv_cache_after_many_verifies_equals_sequential(verifier: TargetVerifier, target64: LoadedModel) -> None:
    rng = random.Random(5)
    vocab = verifier.engine.vocab_size
    prompt = [rng.randrange(vocab) for _ in range(6)]
    ref = greedy_reference(target64.model, prompt, 40)
    verifier.prefill("kv", prompt, GREEDY)
    out: list[int] = []
    for step in range(8):
        tree = lossless_tree(rng, ref[len(out) :], vocab) if step % 2 else random_tree(rng, vocab)
        out.extend(verifier.verify("kv", tree).acceptance.emitted)
        with verifier.sessions.checkout("kv") as session:
            committed = prompt + out[:-1]  # every emitted token but the new pending one
            assert session.prefix_len == len(committed) and session.pending_token == out[-1]
            want, _ = sequential_decode(target64.model, committed)
            assert_cache_equal(session.cache, want)
            assert session.kv_bytes == verifier.engine.kv_bytes(session.cache)


def test_empty_tree_is_one_decode_step(verifier: TargetVerifier, target64: LoadedModel) -> None:
    prompt = [3, 1, 4, 1, 5, 9]
    ref = greedy_reference(target64.model, prompt, 5)
    verifier.prefill("e", prompt, GREEDY)
    out: list[int] = []
    for _ in range(5):
        result = verifier.verify("e", EMPTY_TREE)
        assert result.acceptance.path == () and result.acceptance.bonus
        out.extend(result.acceptance.emitted)
    assert out == ref
    assert result.context_len == len(prompt) + 5


def test_prefill_result_and_one_token_prompt(verifier: TargetVerifier, target64: LoadedModel) -> None:
    result = verifier.prefill("one", [77], GREEDY)
    assert result.context_len == 1 and result.evicted_sessions == 0
    assert verifier.sessions.kv_bytes("one") == 0
    ref = greedy_reference(target64.model, [77], 3)
    emitted = verifier.verify("one", DraftTree.chain([*ref[:1], ref[1] + 1])).acceptance.emitted
    assert emitted == tuple(ref[:2])  # first draft token accepted, second rejected and recovered


def _sample_run(verifier: TargetVerifier, sid: str, seed: int | None, with_q: bool) -> list[int]:
    rng = random.Random(0)  # same trees for every run
    vocab = verifier.engine.vocab_size
    verifier.prefill(sid, [10, 20, 30], SamplingParams(temperature=1.0, top_k=50, seed=seed))
    out: list[int] = []
    for _ in range(10):
        tree = random_tree(rng, vocab, max_nodes=6)
        if with_q:  # each node's token drawn from a 2-point q: exercises the sparse-q residual path
            probs = tuple(SparseProbs((t, (t + 1) % vocab), (0.75, 0.25)) for t in tree.tokens)
            tree = DraftTree(tree.tokens, tree.parents, probs)
        out.extend(verifier.verify(sid, tree).acceptance.emitted)
    return out


@pytest.mark.parametrize("with_q", [False, True])
def test_seeded_sampling_is_reproducible(make_verifier: MakeVerifier, with_q: bool) -> None:
    a = _sample_run(make_verifier(), "x", seed=1234, with_q=with_q)
    b = _sample_run(make_verifier(), "x", seed=1234, with_q=with_q)
    c = _sample_run(make_verifier(), "x", seed=99, with_q=with_q)
    assert a == b
    assert a != c


def test_concurrent_sessions_match_serial_results(make_verifier: MakeVerifier) -> None:
    """Sessions verified from several threads at once give the same tokens as one by one."""
    rng = random.Random(3)
    serial = make_verifier()
    vocab = serial.engine.vocab_size
    prompts = [[rng.randrange(vocab) for _ in range(5)] for _ in range(4)]
    trees = [[random_tree(rng, vocab, max_nodes=5) for _ in range(6)] for _ in range(4)]

    def run(verifier: TargetVerifier, i: int, out: dict[int, list[int]]) -> None:
        verifier.prefill(f"t{i}", prompts[i], GREEDY)
        out[i] = [t for tree in trees[i] for t in verifier.verify(f"t{i}", tree).acceptance.emitted]

    want: dict[int, list[int]] = {}
    for i in range(4):
        run(serial, i, want)
    shared = make_verifier()
    got: dict[int, list[int]] = {}
    threads = [threading.Thread(target=run, args=(shared, i, got)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == want
