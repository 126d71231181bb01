"""Greedy losslessness of every method end to end (in-process stack, tiny models), and
exact sampling: the orchestrator's output equals transformers' own greedy decoding."""

from __future__ import annotations

import random

import pytest
import torch
from scipy.stats import chisquare
from testkit import greedy_reference, hf_model, stack_config

from orchestrator.request import GenerateParams, OuroborosParams
from spec_decode.errors import FailedPrecondition
from spec_decode.types import SamplingParams
from specd_cli.stack import build_inprocess


@pytest.fixture(scope="module")
def orch(tiny_target, tiny_draft):
    return build_inprocess(stack_config(tiny_target, tiny_draft))


def _random_prompts(n: int, seed: int) -> list[list[int]]:
    """Prompts with repeated spans, so prompt lookup finds matches and drafts get rejected too."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(n):
        base = [rng.randrange(100, 49000) for _ in range(rng.randrange(3, 12))]
        prompt = base + [rng.randrange(100, 49000) for _ in range(rng.randrange(0, 6))] + base[: rng.randrange(1, 4)]
        prompts.append(prompt)
    return prompts


@pytest.mark.parametrize("method", ["vanilla", "pld", "sps", "ouroboros"])
def test_greedy_identical_to_transformers(orch, tiny_target, method):
    for prompt in _random_prompts(12, seed=hash(method) % 1000):
        expected = greedy_reference(tiny_target, prompt, 24, torch.float64)
        result = orch.generate(GenerateParams(prompt_token_ids=tuple(prompt), method=method, max_new_tokens=24))
        assert list(result.token_ids) == expected, f"{method} diverged on prompt {prompt}"
        assert result.stats.new_tokens == len(expected)
        assert result.stats.target_steps <= len(expected)


def test_speculation_actually_speculates(orch):
    """With the noisy-copy draft, sps accepts draft tokens: τ > 1 (the test can fail)."""
    prompt = _random_prompts(1, seed=7)[0]
    result = orch.generate(GenerateParams(prompt_token_ids=tuple(prompt), method="sps", max_new_tokens=48))
    assert result.stats.accepted_tokens > 0
    assert result.stats.tau > 1.0
    assert result.stats.draft_tokens >= result.stats.accepted_tokens


def test_pld_tree_branches_lossless(orch, tiny_target):
    for prompt in _random_prompts(6, seed=11):
        expected = greedy_reference(tiny_target, prompt, 20, torch.float64)
        params = GenerateParams(prompt_token_ids=tuple(prompt), method="pld", max_new_tokens=20, num_branches=3)
        assert list(orch.generate(params).token_ids) == expected


def test_adaptive_draft_lossless(orch, tiny_target):
    prompt = _random_prompts(1, seed=5)[0]
    expected = greedy_reference(tiny_target, prompt, 30, torch.float64)
    params = GenerateParams(prompt_token_ids=tuple(prompt), method="sps", max_new_tokens=30, adaptive_draft=True)
    assert list(orch.generate(params).token_ids) == expected


def test_stream_chunks_add_up(orch):
    params = GenerateParams(prompt="Tell me about spiders.", method="sps", max_new_tokens=20)
    chunks = list(orch.stream(params))
    assert chunks[-1].done and chunks[-1].stats is not None
    tokens = [t for c in chunks for t in c.token_ids]
    whole = orch.generate(params)
    assert tuple(tokens) == whole.token_ids
    assert "".join(c.text for c in chunks) == whole.text


@pytest.mark.parametrize("method", ["vanilla", "sps", "pld"])
def test_seeded_sampling_reproducible(orch, method):
    sampling = SamplingParams(temperature=0.9, top_k=50, top_p=0.95, seed=1234)
    params = GenerateParams(prompt="Write a poem.", method=method, max_new_tokens=16, sampling=sampling)
    first = orch.generate(params).token_ids
    assert orch.generate(params).token_ids == first
    other = GenerateParams(
        prompt="Write a poem.",
        method=method,
        max_new_tokens=16,
        sampling=SamplingParams(temperature=0.9, top_k=50, top_p=0.95, seed=99),
    )
    assert orch.generate(other).token_ids != first


def test_sampled_first_token_follows_target(orch, tiny_target):
    """sps and pld sampling: the first emitted token follows the target's warped distribution."""
    prompt = (5000, 6000, 7000, 5000, 6000)
    temperature, top_k = 0.7, 4
    model = hf_model(tiny_target, torch.float64)
    with torch.inference_mode():
        logits = model(torch.tensor([list(prompt)])).logits[0, -1]
    from spec_decode.sampling import warp_probs

    probs = warp_probs(logits, SamplingParams(temperature=temperature, top_k=top_k))
    support = torch.nonzero(probs).flatten().tolist()
    for method in ("sps", "pld"):
        counts = dict.fromkeys(support, 0)
        n = 200
        for seed in range(n):
            sampling = SamplingParams(temperature=temperature, top_k=top_k, seed=seed)
            out = orch.generate(
                GenerateParams(prompt_token_ids=prompt, method=method, max_new_tokens=2, sampling=sampling)
            )
            counts[out.token_ids[0]] += 1
        expected = [float(probs[t]) * n for t in support]
        p_value = chisquare([counts[t] for t in support], expected).pvalue
        assert p_value > 1e-3, (method, counts, expected)


def test_foreign_draft_refused(tiny_target, foreign_draft):
    with pytest.raises(FailedPrecondition) as err:
        build_inprocess(stack_config(tiny_target, foreign_draft))
    assert str(foreign_draft) in err.value.message and str(tiny_target) in err.value.message


@pytest.mark.parametrize(
    "disabled",
    [(), ("phrase_extension",), ("verification_phrases", "history_phrases"), OuroborosParams.PARTS],
)
def test_ouroboros_ablations_lossless(orch, tiny_target, disabled):
    for prompt in _random_prompts(3, seed=21):
        expected = greedy_reference(tiny_target, prompt, 20, torch.float64)
        params = GenerateParams(
            prompt_token_ids=tuple(prompt),
            method="ouroboros",
            max_new_tokens=20,
            ouroboros=OuroborosParams.without(disabled),
        )
        assert list(orch.generate(params).token_ids) == expected


def test_ouroboros_pool_outlives_the_request(tiny_target):
    """A second request for the same prompt drafts from phrases the first one left in the pool."""
    fresh = build_inprocess(stack_config(tiny_target, None))
    # full trees both times: the cost budget would cut the second request's trees to what the cold
    # first one accepted (tests/orchestrator/test_tree_budget.py covers it); this test is about the pool
    params = GenerateParams(
        prompt_token_ids=(4000, 4100, 4200), method="ouroboros", max_new_tokens=40, tree_budget="max"
    )
    first = fresh.generate(params)
    second = fresh.generate(params)
    assert second.token_ids == first.token_ids
    assert second.stats.accepted_tokens > first.stats.accepted_tokens
    assert second.stats.tau > 2.0


@pytest.mark.parametrize(
    "sampling", [SamplingParams(), SamplingParams(temperature=0.9, seed=3)], ids=["greedy", "sampled"]
)
def test_ouroboros_lookahead_in_the_verify_pass(tiny_target, sampling):
    """Model-free Ouroboros with the Jacobi window riding in the target's pass: greedy output is
    the target's own, sampled output completes, and the window really advances."""
    import dataclasses

    from draft_service.service import DraftWorker
    from orchestrator.service import Orchestrator
    from spec_decode.models import load_tokenizer
    from target_service.verifier import TargetVerifier

    config = stack_config(tiny_target, None)
    worker = DraftWorker.from_config(dataclasses.replace(config.draft, verify_lookahead=True))
    tokenizer, _ = load_tokenizer(config.target.model)
    orch = Orchestrator(TargetVerifier.from_config(config.target), worker, tokenizer, config.orchestrator)
    steps = []
    for prompt in _random_prompts(4, seed=31):
        # full trees: a cost budget leaves the window out whenever its nodes do not pay for themselves
        params = GenerateParams(
            prompt_token_ids=tuple(prompt), method="ouroboros", max_new_tokens=48, sampling=sampling, tree_budget="max"
        )
        tokens: list[int] = []
        for chunk in orch.stream(params):
            tokens.extend(chunk.token_ids)
            for session in list(worker._sessions.values()):  # the live request's drafter
                window = getattr(session.drafters.get("ouroboros"), "window", None)
                if window is not None:
                    steps.append(window.steps)
        if sampling.greedy:
            assert tokens == greedy_reference(tiny_target, prompt, 48, torch.float64)
        assert len(tokens) == 48
    assert max(steps) > 3  # the target's argmax advanced the window step after step


def test_step_node_budget_shrinks_trees_not_output(tiny_target):
    """Under a step budget each request drafts at most budget/running nodes; output unchanged."""
    import dataclasses

    from orchestrator.service import OrchestratorConfig

    config = stack_config(tiny_target, None)
    tight = build_inprocess(dataclasses.replace(config, orchestrator=OrchestratorConfig(256, step_node_budget=2)))
    for prompt in _random_prompts(3, seed=41):
        params = GenerateParams(prompt_token_ids=tuple(prompt), method="pld", max_new_tokens=24, num_branches=3)
        result = tight.generate(params)
        assert list(result.token_ids) == greedy_reference(tiny_target, prompt, 24, torch.float64)
        assert result.stats.draft_tokens <= 2 * result.stats.target_steps
    with pytest.raises(Exception, match="step_node_budget"):
        OrchestratorConfig(step_node_budget=-1).validate()
