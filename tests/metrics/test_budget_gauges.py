"""The tree-budget gauges read the orchestrator's fitted step costs: one series per method label,
even when several methods outside the known labels share ``other``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from testkit import stack_config

from specd_cli.stack import build_inprocess
from specd_metrics.services import OrchestratorMetrics


def test_methods_sharing_the_other_label_give_one_series(tiny_target) -> None:
    orch = build_inprocess(stack_config(tiny_target, None))
    fits = {"ouroboros-without-lookahead": 3, "dsbd-keep-best": 20, "pld": 5}  # method -> steps observed
    for method, steps in fits.items():
        cost, _ = orch.budget_model(method)
        for i in range(steps):
            cost.observe(1 + i % 4, 0.01 + 0.001 * (1 + i % 4))
    registry = CollectorRegistry()
    OrchestratorMetrics(registry, budgets=orch)
    lines = [line for line in generate_latest(registry).decode().splitlines() if line.startswith("specd:tree_budget")]
    assert len(lines) == len(set(line.rsplit(" ", 1)[0] for line in lines))  # no series twice
    assert 'specd:tree_budget_steps{method="other"} 20.0' in lines  # the better-fitted of the two
    assert 'specd:tree_budget_steps{method="pld"} 5.0' in lines
    assert sum(line.startswith('specd:tree_budget_step_seconds{method="other"') for line in lines) == 2
