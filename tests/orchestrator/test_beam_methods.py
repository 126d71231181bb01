"""beam-sample and dsbd end to end on the in-process stack (tiny float64 target and draft)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from testkit import hf_model, stack_config

from orchestrator.request import GenerateParams
from orchestrator.service import GenerationResult, Orchestrator
from orchestrator.text import prompt_tokens
from spec_decode.beams import BeamParams
from spec_decode.errors import InvalidArgument
from spec_decode.types import SamplingParams
from specd_cli.stack import build_inprocess

SAMPLING = SamplingParams(temperature=1.0, top_k=20, seed=5)
NEW = 10


@pytest.fixture(scope="module")
def orch(tiny_target: Path, tiny_draft: Path) -> Orchestrator:
    return build_inprocess(stack_config(tiny_target, tiny_draft))


def _generate(orch: Orchestrator, method: str, beam: BeamParams, **kw: object) -> GenerationResult:
    params = GenerateParams(
        prompt="Tell me about beams.",
        method=method,
        max_new_tokens=NEW,
        sampling=SAMPLING,
        ignore_eos=True,
        beam=beam,
        **kw,  # type: ignore[arg-type]
    )
    return orch.generate(params)


def _check_logprobs(result: GenerationResult, target_dir: Path, orch: Orchestrator) -> None:
    """Each beam's reported log-probability is the target's own, recomputed by transformers."""
    model = hf_model(target_dir, torch.float64)
    prompt = prompt_tokens(orch._tokenizer, GenerateParams(prompt="Tell me about beams."))
    for beam in result.beams:
        ids = torch.tensor([prompt + list(beam.token_ids)])
        with torch.inference_mode():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].to(torch.float64), dim=-1)
        want = sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(beam.token_ids))
        assert beam.logprob == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("method", ["beam-sample", "dsbd"])
def test_beam_methods_return_every_beam_with_target_logprobs(
    orch: Orchestrator, tiny_target: Path, method: str
) -> None:
    result = _generate(orch, method, BeamParams(width=3), num_draft_tokens=3)
    assert len(result.beams) == 3
    assert all(len(b.token_ids) == NEW for b in result.beams)
    assert result.token_ids == result.beams[0].token_ids
    assert [b.score for b in result.beams] == sorted((b.score for b in result.beams), reverse=True)
    assert result.text == result.beams[0].text
    _check_logprobs(result, tiny_target, orch)
    if method == "beam-sample":
        assert result.stats.target_steps == NEW and result.stats.draft_tokens == 0
    else:
        assert result.stats.target_steps < NEW  # layers of draft beams were accepted
        assert 0 < result.stats.accepted_tokens <= result.stats.draft_tokens
    assert result.peak_kv_bytes > 0


def test_memory_saving_dsbd_carries_one_beam(orch: Orchestrator, tiny_target: Path) -> None:
    wide = _generate(orch, "dsbd", BeamParams(width=3), num_draft_tokens=3)
    one = _generate(orch, "dsbd", BeamParams(width=3, keep_best_only=True), num_draft_tokens=3)
    assert len(one.beams) == 1 and len(one.token_ids) == NEW
    assert one.peak_kv_bytes * 2 < wide.peak_kv_bytes
    _check_logprobs(one, tiny_target, orch)


def test_dynamic_width_dsbd_runs_within_its_bounds(orch: Orchestrator) -> None:
    result = _generate(orch, "dsbd", BeamParams(width=4, min_width=2, threshold=0.9), num_draft_tokens=2)
    assert 2 <= len(result.beams) <= 4 and len(result.token_ids) == NEW


def test_beam_methods_refuse_greedy_and_bad_widths(orch: Orchestrator) -> None:
    with pytest.raises(InvalidArgument, match="temperature"):
        orch.generate(GenerateParams(prompt="x", method="beam-sample", max_new_tokens=4))
    with pytest.raises(InvalidArgument, match="min beam width"):
        _generate(orch, "dsbd", BeamParams(width=2, min_width=3))


def test_beam_sessions_are_released_on_both_services(tiny_target: Path, tiny_draft: Path) -> None:
    from draft_service.service import DraftWorker
    from spec_decode.models import load_tokenizer
    from target_service.verifier import TargetVerifier

    config = stack_config(tiny_target, tiny_draft)
    target, draft = TargetVerifier.from_config(config.target), DraftWorker.from_config(config.draft)
    orch = Orchestrator(target, draft, load_tokenizer(str(tiny_target))[0], config.orchestrator)
    for keep in (False, True):
        result = _generate(orch, "dsbd", BeamParams(width=2, keep_best_only=keep), num_draft_tokens=2)
        assert result.stats.draft_tokens > 0
        assert not target.release(result.session_id) and not draft.release(result.session_id)
    assert len(target.sessions) == 0
