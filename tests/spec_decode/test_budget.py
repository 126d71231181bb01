"""The cost-model tree budget: step-cost fit, counterfactual acceptance, budget choice."""

from __future__ import annotations

import pytest

from spec_decode.budget import AcceptanceProfile, BudgetConfig, StepCost, TreeBudget, best_budget
from spec_decode.errors import InvalidArgument


def _cost(a: float, b: float, rows: tuple[int, ...] = (1, 3, 5, 9, 17)) -> StepCost:
    cost = StepCost(decay=1.0, min_steps=len(rows))
    for r in rows:
        cost.observe(r, a + b * r)
    return cost


def test_step_cost_recovers_the_line():
    a, b = _cost(0.020, 0.0017).line()
    assert a == pytest.approx(0.020, rel=1e-6)
    assert b == pytest.approx(0.0017, rel=1e-6)


def test_step_cost_is_flat_until_it_has_seen_enough_varied_steps():
    cost = StepCost(decay=1.0, min_steps=4)
    assert cost.line() == (1.0, 0.0)  # nothing seen: any budget costs the same
    for _ in range(10):
        cost.observe(9, 0.05)  # always the same rows: no slope can be told
    assert cost.line() == (pytest.approx(0.05), 0.0)
    cost.observe(0, 1.0)  # rows < 1 and bad times are ignored
    cost.observe(3, float("nan"))
    assert cost.steps == 10


def test_step_cost_never_has_a_negative_slope():
    cost = StepCost(decay=1.0, min_steps=2)
    cost.observe(1, 0.05)
    cost.observe(9, 0.02)  # noise: a bigger pass measured faster
    a, b = cost.line()
    assert b == 0.0 and a > 0


def test_step_cost_forgets_old_steps():
    cost = StepCost(decay=0.9, min_steps=2)
    for _ in range(200):
        for r in (1, 9):
            cost.observe(r, 0.02 + 0.01 * r)  # an old, steep machine
    for _ in range(200):
        for r in (1, 9):
            cost.observe(r, 0.02)  # now flat (say, a GPU took over)
    assert cost.line()[1] == pytest.approx(0.0, abs=1e-6)


def test_profile_counts_what_each_cut_of_the_tree_accepts():
    profile = AcceptanceProfile(cap=6)
    # tree of 5 nodes, accepted path 1 -> 3 (node 0 is a rejected sibling); asked for 6 nodes
    profile.observe(requested=6, tree_size=5, path=(1, 3))
    assert [profile.mean(n) for n in range(7)] == [0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 2.0]
    # a second tree cut by the budget at 2 nodes says nothing about n > 2
    profile.observe(requested=2, tree_size=2, path=(0, 1))
    assert profile.mean(2) == pytest.approx(1.5)  # (1 + 2) / 2
    assert profile.mean(5) == pytest.approx(2.0)  # only the first tree reached 5
    assert AcceptanceProfile(cap=3).mean(1) is None


def test_profile_prior_shrinks_a_young_estimate():
    prior = AcceptanceProfile(cap=2)
    for _ in range(10):
        prior.observe(2, 2, (0, 1))  # the method accepts everything, usually
    young = AcceptanceProfile(cap=2)
    young.observe(2, 2, ())  # this request rejected its first tree
    assert young.mean(2) == 0.0
    assert young.mean(2, prior, prior_weight=4.0) == pytest.approx(8 / 5)


def test_merge_keeps_the_prior_recent():
    prior = AcceptanceProfile(cap=1)
    for _ in range(3):
        request = AcceptanceProfile(cap=1)
        for _ in range(100):
            request.observe(1, 1, (0,))
        request.merge_into(prior, max_steps=50)
    assert prior.counts[1] == pytest.approx(50)
    assert prior.mean(1) == pytest.approx(1.0)


def test_best_budget_is_the_cap_when_nodes_are_free_and_small_when_they_are_dear():
    expected = [0.0, 0.8, 1.4, 1.8, 2.05, 2.1, 2.15, 2.17, 2.18]
    assert best_budget(expected, _cost(0.02, 0.0)) == 8  # flat cost (a GPU): every node that may help
    assert best_budget(expected, _cost(0.02, 0.002)) == 4
    assert best_budget(expected, _cost(0.02, 0.02)) == 1
    assert best_budget([0.0, 0.0, 0.0], _cost(0.02, 0.002)) == 0  # nothing is ever accepted: draft nothing


def test_best_budget_reads_expectations_as_non_decreasing_and_skips_unknowns():
    # n=2 measured below n=1 by chance; n=3 never seen
    assert best_budget([0.0, 1.0, 0.5, None, 3.0], _cost(0.02, 0.0)) == 4
    assert best_budget([0.0, 1.0, 0.5, None], _cost(0.02, 0.0)) == 1


def test_tree_budget_asks_for_the_limit_first_then_learns_and_explores():
    cost = _cost(0.02, 0.004)
    budget = TreeBudget(cap=16, cost=cost, prior=None, config=BudgetConfig(explore_every=4))
    assert budget.choose(16) == 16  # nothing known
    # the drafter's chains: the first token is usually right, the rest hardly ever
    budget.observe(16, 8, (0,), 0.05)
    chosen = [budget.choose(16) for _ in range(7)]
    assert chosen[0] == 1
    assert chosen[2] == 1 + 4  # the 4th step explores: max(2 * 1, 1 + 4)
    assert chosen[3:6] == [1, 1, 1] and chosen[6] == 5
    assert budget.choose(3) <= 3  # never above the step's limit
    assert budget.choose(0) == 0


def test_budget_config_is_checked():
    with pytest.raises(InvalidArgument, match="explore_every"):
        BudgetConfig(explore_every=0).validate()
    with pytest.raises(InvalidArgument, match="prior_weight"):
        BudgetConfig(prior_weight=-1.0).validate()
    with pytest.raises(InvalidArgument, match="decay"):
        StepCost(decay=0.0)


def test_many_sessions_weigh_each_row_more():
    expected = [0.0, 0.8, 1.4, 1.8, 2.05, 2.1, 2.15, 2.17, 2.18]
    cost = _cost(0.02, 0.001)
    alone, shared = best_budget(expected, cost, sessions=1), best_budget(expected, cost, sessions=16)
    assert alone > shared >= 0
    assert best_budget(expected, _cost(0.02, 0.0), sessions=64) == 8  # free rows stay free
