"""DSBD with draft beams from a ReDrafter head (method dsbd-redrafter), on the tiny target."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from testkit import hf_model, stack_config

from draft_service.beam_drafter import HeadBeamDrafter
from orchestrator.request import GenerateParams
from orchestrator.text import prompt_tokens
from spec_decode.beams import BeamParams
from spec_decode.hidden import hidden_bytes
from spec_decode.models import load_model
from spec_decode.redrafter_checkpoint import load_head, save_head
from spec_decode.redrafter_head import HeadConfig, ReDrafterHead
from spec_decode.sampling import truncate_top_k, warp_probs
from spec_decode.types import SamplingParams
from specd_cli.stack import build_inprocess, start_thread_stack
from specd_client import SpecdClient

SAMPLING = SamplingParams(temperature=1.0, top_k=20, seed=9)


@pytest.fixture(scope="module")
def head_dir(tiny_target: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random head over a subset of the vocabulary (so ids must be mapped back to target ids)."""
    target = load_model(str(tiny_target), device="cpu", dtype="float32")
    model = target.model
    torch.manual_seed(1)
    ids = tuple(range(0, target.vocab.vocab_size, 3))
    cfg = HeadConfig(model.config.hidden_size, target.vocab.vocab_size, blocks=1, vocab_ids=ids)
    head = ReDrafterHead(cfg, model.get_input_embeddings().weight, model.get_output_embeddings().weight)
    directory = tmp_path_factory.mktemp("beam-head")
    save_head(directory, head, str(tiny_target), target.vocab.fingerprint)
    return directory


def test_head_beams_draw_from_the_heads_own_distribution(tiny_target: Path, head_dir: Path) -> None:
    model = load_model(str(tiny_target), device="cpu", dtype="float32").model
    head = load_head(head_dir, model.get_input_embeddings().weight, model.get_output_embeddings().weight)
    drafter = HeadBeamDrafter(head, torch.Generator().manual_seed(2))
    drafter.restart([[5, 6, 7], [5, 6, 8]])
    hidden = torch.randn(2, head.config.hidden)  # [n, E]
    forest = drafter.draft([hidden_bytes(h) for h in hidden], [0.0, -1.0], 2, 2, 64, SAMPLING, 6, ())
    assert len(forest.layers) == 2
    first = forest.layers[0]
    with torch.inference_mode():
        h16 = hidden.to(torch.float16).to(torch.float32)  # what the wire carries
        logits, _ = head.step(h16, head.initial_state(2), torch.tensor([7, 8]))
    for b in range(2):
        want = truncate_top_k(warp_probs(logits[b], SAMPLING), 6)
        assert first.q[b].ids == tuple(head.to_token_ids(torch.tensor(want.ids)).tolist())
        assert first.q[b].probs == pytest.approx(want.probs, abs=1e-6)
    assert all(t % 3 == 0 for t in forest.tokens)  # every drafted id is in the head's vocabulary subset
    # No hidden state (a one-token prompt has none): nothing is drafted.
    assert drafter.draft([b"", b""], [0.0, 0.0], 2, 2, 64, SAMPLING, 6, ()).size == 0


def _config(tiny_target: Path, head_dir: Path):  # -> StackConfig
    config = stack_config(tiny_target, None)
    return dataclasses.replace(config, draft=dataclasses.replace(config.draft, redrafter_head=str(head_dir)))


def test_dsbd_redrafter_end_to_end_keeps_target_logprobs(tiny_target: Path, head_dir: Path) -> None:
    orch = build_inprocess(_config(tiny_target, head_dir))
    params = GenerateParams(
        prompt="Once upon a time",
        method="dsbd-redrafter",
        max_new_tokens=8,
        sampling=SAMPLING,
        ignore_eos=True,
        num_draft_tokens=2,
        beam=BeamParams(width=2),
    )
    result = orch.generate(params)
    assert len(result.beams) == 2 and all(len(b.token_ids) == 8 for b in result.beams)
    assert result.stats.draft_tokens > 0  # the head drafted every step after the prefill
    model = hf_model(tiny_target, torch.float64)
    prompt = prompt_tokens(orch._tokenizer, params)
    for beam in result.beams:
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([prompt + list(beam.token_ids)])).logits[0]
        logp = torch.log_softmax(logits.to(torch.float64), dim=-1)
        want = sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(beam.token_ids))
        assert beam.logprob == pytest.approx(want, abs=1e-6)


def test_dsbd_redrafter_over_grpc_equals_inprocess(tiny_target: Path, head_dir: Path) -> None:
    kwargs = dict(method="dsbd-redrafter", max_new_tokens=6, temperature=1.0, top_k=20, seed=4, ignore_eos=True)
    stack = start_thread_stack(_config(tiny_target, head_dir))
    try:
        with SpecdClient(stack.address, timeout=120) as client:
            remote = client.generate([1000, 2000, 3000], beam_width=2, num_draft_tokens=2, **kwargs)
    finally:
        stack.stop()
    local = build_inprocess(_config(tiny_target, head_dir)).generate(
        GenerateParams(
            prompt_token_ids=(1000, 2000, 3000),
            method="dsbd-redrafter",
            max_new_tokens=6,
            sampling=SamplingParams(temperature=1.0, top_k=20, seed=4),
            ignore_eos=True,
            num_draft_tokens=2,
            beam=BeamParams(width=2),
        )
    )
    assert [b.token_ids for b in remote.beams] == [b.token_ids for b in local.beams]
    assert remote.stats.draft_tokens == local.stats.draft_tokens > 0
