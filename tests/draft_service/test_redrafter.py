"""The ``redrafter`` method end to end: head checkpoints, the hidden state's trip, losslessness.

The head here is untrained (random): its drafts are mostly wrong, which is exactly when a lossy
acceptance would show. Training is tested with the trainer.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from testkit import greedy_reference, stack_config

from draft_service.redrafter import read_checkpoint, save_head
from draft_service.redrafter_head import HeadConfig, ReDrafterHead
from draft_service.service import DraftConfig, DraftWorker
from orchestrator.request import GenerateParams
from spec_decode.errors import FailedPrecondition
from spec_decode.models import load_model
from spec_decode.types import DraftOptions, SamplingParams
from specd_cli.stack import build_inprocess, start_thread_stack
from specd_client import SpecdClient


@pytest.fixture(scope="module")
def head_dir(tiny_target: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = load_model(str(tiny_target), device="cpu", dtype="float32")
    model = target.model
    torch.manual_seed(0)
    cfg = HeadConfig(model.config.hidden_size, target.vocab.vocab_size, blocks=1)
    head = ReDrafterHead(cfg, model.get_input_embeddings().weight, model.get_output_embeddings().weight)
    with torch.no_grad():  # a head that copies the target's own view: h through P ~ identity on the h half
        head.proj.weight.zero_()
        head.proj.weight[:, : cfg.hidden] = torch.eye(cfg.hidden)
        head.proj.bias.zero_()
    directory = tmp_path_factory.mktemp("head")
    save_head(directory, head, str(tiny_target), target.vocab.fingerprint)
    return directory


def test_checkpoint_round_trip_and_refusals(head_dir: Path, tiny_target: Path, tmp_path: Path) -> None:
    checkpoint = read_checkpoint(head_dir)
    assert checkpoint.target == str(tiny_target) and checkpoint.config.blocks == 1
    worker = DraftWorker.from_config(DraftConfig(device="cpu", redrafter_head=str(head_dir)))
    assert "redrafter" in worker.drafters and worker.info().vocab is not None
    with pytest.raises(FailedPrecondition, match="not a ReDrafter head checkpoint"):
        DraftConfig(redrafter_head=str(tmp_path)).validate()
    plain = DraftWorker(DraftConfig(device="cpu"))
    with pytest.raises(FailedPrecondition, match="--redrafter-head"):
        plain.propose("s", "redrafter", 0, [1, 2, 3], 8, DraftOptions(), SamplingParams())
    # Without a hidden state the drafter proposes nothing (never garbage from a stale state).
    assert worker.propose("s", "redrafter", 0, [1, 2, 3], 8, DraftOptions(), SamplingParams()).tree.size == 0


def _with_head(tiny_target: Path, head_dir: Path):
    config = stack_config(tiny_target, None)
    return dataclasses.replace(config, draft=dataclasses.replace(config.draft, redrafter_head=str(head_dir)))


def test_redrafter_is_lossless_and_drafts_beams(tiny_target: Path, head_dir: Path) -> None:
    orch = build_inprocess(_with_head(tiny_target, head_dir))
    accepted = 0
    for prompt in ([1000, 2000, 3000, 1000, 2000], [42, 43, 44, 45, 42, 43], [777] * 6):
        expected = greedy_reference(tiny_target, prompt, 20, torch.float64)
        params = GenerateParams(prompt_token_ids=tuple(prompt), method="redrafter", max_new_tokens=20)
        result = orch.generate(params)
        assert list(result.token_ids) == expected
        assert result.stats.draft_tokens > 20  # beams from the first step on (the prefill's hidden state)
        accepted += result.stats.accepted_tokens
        sampled = orch.generate(dataclasses.replace(params, sampling=SamplingParams(temperature=0.8, seed=4)))
        assert len(sampled.token_ids) == 20
    assert accepted > 0  # the identity-projection head guesses the target's next token now and then


def test_redrafter_over_grpc(tiny_target: Path, head_dir: Path) -> None:
    stack = start_thread_stack(_with_head(tiny_target, head_dir))
    try:
        with SpecdClient(stack.address, timeout=120) as client:
            prompt = [5, 6, 7, 5, 6]
            result = client.generate(prompt, method="redrafter", max_new_tokens=16)
            assert list(result.token_ids) == greedy_reference(tiny_target, prompt, 16, torch.float64)
            assert result.stats.draft_tokens > 0
    finally:
        stack.stop()
