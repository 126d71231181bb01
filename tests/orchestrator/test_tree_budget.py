"""The cost-model tree budget in the decode loop: small trees when nodes are dear, the cap when
they are free, and the output the same token for token either way (in-process stack, tiny models)."""

from __future__ import annotations

import pytest
import torch
from testkit import greedy_reference, late_wide_steps, record_steps, stack_config

from orchestrator.request import GenerateParams
from spec_decode.errors import InvalidArgument
from spec_decode.types import SamplingParams
from specd_cli.stack import build_inprocess

# sps drafts with the tiny draft, a noisy copy of the target: most of its tokens are accepted.
PROMPT = (1234, 4000, 77, 4242, 900, 31, 1234, 4000, 77, 4242, 900, 31, 1234, 4000)


@pytest.fixture(scope="module")
def orch(tiny_target, tiny_draft):
    return build_inprocess(stack_config(tiny_target, tiny_draft))


def _run(orch, budget: str, **kw):
    params = GenerateParams(prompt_token_ids=PROMPT, method="sps", max_new_tokens=40, tree_budget=budget, **kw)
    return orch.generate(params)


def _nodes_per_step(result) -> float:
    return result.stats.draft_tokens / result.stats.target_steps


def test_dear_nodes_make_small_trees_and_the_same_tokens(orch, tiny_target):
    expected = greedy_reference(tiny_target, list(PROMPT), 40, torch.float64)
    full = _run(orch, "max")
    cost, _ = orch.budget_model("sps")
    for _ in range(64):  # a machine where every row of a pass costs as much as the whole rest of the step
        for rows in (1, 2, 5, 9):
            cost.observe(rows, 0.01 * rows)
    small = _run(orch, "cost")
    assert list(full.token_ids) == expected
    assert list(small.token_ids) == expected
    assert full.stats.draft_tokens > 0
    assert _nodes_per_step(small) < 0.5 * _nodes_per_step(full)


def test_free_nodes_keep_what_gets_accepted(tiny_target, tiny_draft):
    orch = build_inprocess(stack_config(tiny_target, tiny_draft))
    cost, _ = orch.budget_model("sps")
    cost.decay = 1.0  # so this request's own (tiny, fast) steps cannot outweigh the seeded ones
    for _ in range(5000):  # a pass costs the same whatever its rows (a GPU)
        for rows in (1, 2, 5, 9):
            cost.observe(rows, 0.03)
    full, chosen = _run(orch, "max"), _run(orch, "cost")
    assert chosen.token_ids == full.token_ids
    # nodes are only left out where this request never had one accepted (a plateau of acc(n))
    assert chosen.stats.accepted_tokens >= 0.9 * full.stats.accepted_tokens
    assert _nodes_per_step(chosen) >= 0.6 * _nodes_per_step(full)


def test_the_server_default_and_a_bad_budget(tiny_target, tiny_draft):
    cfg = stack_config(tiny_target, tiny_draft)
    from dataclasses import replace

    with pytest.raises(InvalidArgument, match="tree_budget"):
        replace(cfg.orchestrator, tree_budget="some").validate()
    with pytest.raises(InvalidArgument, match="tree_budget must be one of"):
        _run(build_inprocess(cfg), "all")


def test_seeded_sampling_keeps_the_cap_so_a_seed_repeats(orch):
    sampling = SamplingParams(temperature=0.8, top_k=40, seed=7)
    cost, _ = orch.budget_model("sps")
    for _ in range(64):
        for rows in (1, 2, 5, 9):
            cost.observe(rows, 0.01 * rows)
    first, second = _run(orch, "", sampling=sampling), _run(orch, "", sampling=sampling)
    assert first.token_ids == second.token_ids
    assert first.stats.draft_tokens == second.stats.draft_tokens


def test_the_last_tokens_cap_a_trees_depth_not_its_width(tiny_target):
    """Near the end of a request a step can emit at most the tokens left, so its tree may be no
    deeper than that less one (the target's own token), but as wide as ever: the draft service
    drafts to that depth (nothing is cut after drafting, so a drafter learning from the target's
    rows of its tree still gets them all), and the output stays the target's own."""
    orch = build_inprocess(stack_config(tiny_target, None))
    steps = record_steps(orch)
    prompt = [7, 8, 9, 1, 7, 8, 9, 2, 7, 8, 9, 3, 7, 8]
    params = GenerateParams(
        prompt_token_ids=tuple(prompt), method="ouroboros", max_new_tokens=16, tree_budget="max", num_draft_tokens=6
    )
    expected = greedy_reference(tiny_target, prompt, 16, torch.float64)
    for _ in range(2):  # the second request also drafts from the phrases the first one taught the pool
        steps.clear()
        assert list(orch.generate(params).token_ids) == expected
        assert late_wide_steps(steps, 16) > 0
