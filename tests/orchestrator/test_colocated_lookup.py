"""`pld` drafted inside the target service: prompt lookup over the session's own tokens.

The target keeps each session's tokens (prompt, then every accepted token) and, when a Prefill or
Verify asks for it (``ColocatedDraft(drafter="prompt_lookup")``), drafts the next tree right after
its pass, so a step needs no round trip to a draft service. These tests hold it to the draft
service's prompt lookup: the same trees, the same acceptance, the same output, and the target's
own greedy output every time.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from testkit import greedy_reference, stack_config

from orchestrator.request import GenerateParams
from orchestrator.service import Orchestrator, OrchestratorConfig
from spec_decode.errors import FailedPrecondition, InvalidArgument
from spec_decode.models import load_tokenizer
from spec_decode.prompt_lookup import PromptLookupDrafter
from spec_decode.types import ColocatedDraft, DraftOptions, SamplingParams
from specd_cli.stack import build_inprocess, start_thread_stack
from specd_client import SpecdClient

PROMPTS = ([1000, 2000, 3000, 1000, 2000], [42, 43, 44, 45, 42, 43], [7, 8, 9, 7, 8, 9, 7, 8])


def _placed(tiny_target: Path, placement: str):
    config = stack_config(tiny_target, None)
    return dataclasses.replace(config, orchestrator=dataclasses.replace(config.orchestrator, pld_placement=placement))


def _lookup(tokens: list[int], spec: ColocatedDraft):
    """What the draft service's prompt lookup proposes for ``tokens``."""
    drafter = PromptLookupDrafter()
    drafter.configure(DraftOptions(max_ngram=spec.max_ngram, min_ngram=spec.min_ngram, num_branches=spec.width))
    return drafter.propose(tokens, spec.length, spec.max_nodes, SamplingParams(), None)


def test_colocated_pld_drafts_what_the_draft_service_drafts(tiny_target: Path) -> None:
    """Same trees (so the same draft and accepted counts per request), the target's own output, and
    no session ever opened on the draft service."""
    here = build_inprocess(_placed(tiny_target, "target"))
    there = build_inprocess(_placed(tiny_target, "draft"))
    assert "prompt_lookup" in here.target_info.colocated_drafters
    drafted = 0
    for prompt in PROMPTS:
        for branches in (1, 3):
            params = GenerateParams(
                prompt_token_ids=tuple(prompt),
                method="pld",
                max_new_tokens=24,
                tree_budget="max",
                num_branches=branches,
            )
            a, b = here.generate(params), there.generate(params)
            assert list(a.token_ids) == list(b.token_ids)
            assert list(a.token_ids) == greedy_reference(tiny_target, prompt, 24, torch.float64)
            counts = [(r.stats.draft_tokens, r.stats.accepted_tokens, r.stats.target_steps) for r in (a, b)]
            assert counts[0] == counts[1]
            drafted += a.stats.draft_tokens
            sampled = here.generate(dataclasses.replace(params, sampling=SamplingParams(temperature=0.8, seed=5)))
            assert 0 < len(sampled.token_ids) <= 24
    assert drafted > 0  # the prompts repeat, so lookup found something to draft
    assert here._draft is not None and here._draft.info().active_sessions == 0
    assert there._draft is not None


def test_pld_runs_without_a_draft_service_when_the_target_drafts(tiny_target: Path) -> None:
    stack = build_inprocess(stack_config(tiny_target, None))
    tokenizer, _ = load_tokenizer(str(tiny_target))
    alone = Orchestrator(stack._target, None, tokenizer, OrchestratorConfig(pld_placement="auto"))
    assert "pld" in alone.methods and "ouroboros" not in alone.methods
    prompt = PROMPTS[2]
    result = alone.generate(GenerateParams(prompt_token_ids=tuple(prompt), method="pld", max_new_tokens=16))
    assert list(result.token_ids) == greedy_reference(tiny_target, prompt, 16, torch.float64)
    assert result.stats.draft_tokens > 0
    drafting_elsewhere = Orchestrator(stack._target, None, tokenizer, OrchestratorConfig(pld_placement="draft"))
    assert "pld" not in drafting_elsewhere.methods
    with pytest.raises(FailedPrecondition, match="needs a draft service"):
        drafting_elsewhere.generate(GenerateParams(prompt_token_ids=(1, 2, 3), method="pld", max_new_tokens=4))
    with pytest.raises(InvalidArgument, match="pld_placement must be auto, draft or target"):
        OrchestratorConfig(pld_placement="gpu").validate()


def test_the_target_drafts_from_the_session_tokens_over_grpc(tiny_target: Path) -> None:
    """Prefill drafts from the prompt; each Verify from the prompt + every accepted token + the new
    pending one, exactly as the draft service's lookup over that context would; bad specs are
    refused with INVALID_ARGUMENT."""
    stack = start_thread_stack(_placed(tiny_target, "target"))
    try:
        target = stack.clients[0]
        assert "prompt_lookup" in target.info().colocated_drafters
        spec = ColocatedDraft(width=2, length=4, max_nodes=6, drafter="prompt_lookup", max_ngram=2)
        prompt = PROMPTS[2]
        first = target.prefill("s1", prompt, SamplingParams(), colocated_draft=spec)
        assert first.next_tree == _lookup(prompt, spec) and first.next_tree.size > 0
        tokens = list(prompt)
        tree = first.next_tree
        for _ in range(4):
            step = target.verify("s1", tree, colocated_draft=spec)
            tokens += [*step.acceptance.tokens, step.acceptance.next_token]
            assert step.next_tree == _lookup(tokens, spec)
            tree = step.next_tree
        bad = [
            (dataclasses.replace(spec, min_ngram=3, max_ngram=2), "min_ngram <= max_ngram"),
            (dataclasses.replace(spec, width=0), "width"),
            (dataclasses.replace(spec, drafter="lookahead"), "co-located drafter must be one of"),
        ]
        for wrong, message in bad:
            with pytest.raises(InvalidArgument, match=message):
                target.verify("s1", tree, colocated_draft=wrong)
        with SpecdClient(stack.address, timeout=120) as client:
            result = client.generate(PROMPTS[0], method="pld", max_new_tokens=16)
            assert list(result.token_ids) == greedy_reference(tiny_target, PROMPTS[0], 16, torch.float64)
            assert result.stats.draft_tokens > 0
            assert stack.clients[1].info().active_sessions == 0  # the draft service was never asked
    finally:
        stack.stop()
