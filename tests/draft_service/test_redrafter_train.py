"""``specd train-redrafter`` on the tiny target: responses cached and resumable, a checkpoint the
draft service loads, held-out metrics, a curve; the trained head drafts losslessly."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from testkit import greedy_reference, stack_config

from orchestrator.request import GenerateParams
from spec_decode.redrafter_checkpoint import read_checkpoint
from specd_cli.stack import build_inprocess


def test_train_then_draft(tiny_target: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    topics = ["rivers", "the moon", "bread", "a red house", "trains", "winter", "cats", "numbers"]
    prompts.write_text("\n".join(json.dumps({"turns": [f"Tell me about {t}."]}) for t in topics) + "\n")
    out = tmp_path / "head"
    cmd = [sys.executable, "-m", "specd_cli.main", "train-redrafter", "--target", str(tiny_target), "--device", "cpu"]
    cmd += ["--prompts", str(prompts), "--out", str(out), "--max-new-tokens", "24", "--gen-batch", "3"]
    cmd += ["--length", "3", "--epochs", "4", "--batch-size", "32", "--blocks", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "top-1 by offset" in done.stdout
    cached = (out / "responses.jsonl").read_text().splitlines()
    assert len(cached) == len(topics)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["responses"] == len(topics) and metrics["held_out_samples"] > 0
    assert len(metrics["held_out_top1"]) == 3 and 1 <= metrics["best_epoch"] <= metrics["epochs_run"] <= 4
    assert metrics["manifest"]["prompts"] == len(topics)
    assert (out / "curve.png").read_bytes()[:4] == b"\x89PNG"
    assert read_checkpoint(out).config.blocks == 1
    # Resumable: a second run reuses every cached response (none generated again).
    again = subprocess.run(
        [*cmd, "--epochs", "1", "--select", "chain"], capture_output=True, text=True, timeout=300, check=False
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "responses.jsonl").read_text().splitlines() == cached
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["select"] == "chain" and 0 <= metrics["held_out_chain"] <= 3
    assert metrics["history"][0]["held_out_chain"] == metrics["held_out_chain"]
    # The trained head serves the redrafter method, losslessly.
    config = stack_config(tiny_target, None)
    orch = build_inprocess(
        dataclasses.replace(config, draft=dataclasses.replace(config.draft, redrafter_head=str(out)))
    )
    prompt = [5, 6, 7, 5, 6]
    result = orch.generate(GenerateParams(prompt_token_ids=tuple(prompt), method="redrafter", max_new_tokens=16))
    assert list(result.token_ids) == greedy_reference(tiny_target, prompt, 16, torch.float64)
    assert result.stats.draft_tokens > 0


def test_batched_samples_equal_one_sequence_at_a_time(tiny_target: Path) -> None:
    """Right-padded batches of several lengths give each sequence the states it gets alone."""
    from draft_service.redrafter_train import build_samples
    from spec_decode.models import load_model

    model = load_model(str(tiny_target), "cpu").model
    pairs = [([5, 6, 7], [8, 9, 10, 11, 12, 13]), ([3] * 9, [4, 5, 6, 7, 8]), ([1, 2], [3]), ([7, 7], [1, 2, 3, 4, 5])]
    alone_h, alone_t, alone_o = build_samples(model, pairs, 2, batch_tokens=1)
    both_h, both_t, both_o = build_samples(model, pairs, 2, batch_tokens=4096)
    assert alone_o == both_o == [0] * 4 + [1] * 3 + [3] * 3  # R - L samples each; a 1-token response has none
    assert torch.equal(alone_t, both_t)
    assert torch.allclose(alone_h, both_h, atol=1e-5)
    assert alone_t[0].tolist() == [8, 9, 10]  # h at the last prompt token; g0 = first response token


def test_generation_stops_at_the_deadline_and_resumes(tiny_target: Path, tmp_path: Path) -> None:
    import time

    from draft_service.redrafter_train import generate_responses
    from spec_decode.models import load_model
    from target_service.engine import build_engine

    loaded = load_model(str(tiny_target), "cpu")
    engine = build_engine(loaded.model, "auto")

    class Bar:
        def update(self, n: int) -> None:
            pass

    prompts = [[5, 6, 7], [1, 2, 3, 4], [9, 8]]
    cache = tmp_path / "r.jsonl"
    assert generate_responses(engine, prompts, 4, set(), 1, cache, Bar(), deadline=time.monotonic() - 1) == []
    pairs = generate_responses(engine, prompts, 4, set(), 2, cache, Bar())
    assert [p for p, _ in pairs] == prompts and all(len(r) == 4 for _, r in pairs)


def test_chain_is_the_leading_run_of_right_guesses() -> None:
    """evaluate(): per sample, right top-1 guesses counted until the first miss, averaged."""
    from draft_service.redrafter_train import evaluate
    from spec_decode.redrafter_head import HeadConfig, ReDrafterHead

    torch.manual_seed(0)
    head = ReDrafterHead(HeadConfig(8, 5, 1), torch.randn(5, 8), torch.randn(5, 8))
    hidden, tokens = torch.randn(300, 8), torch.randint(0, 5, (300, 4))  # [S, E], [S, L+1]: L = 3
    _, top1, chain = evaluate(head, hidden, tokens)
    with torch.no_grad():
        right = (head(hidden, tokens).argmax(-1) == tokens[:, 1:]).tolist()  # [S, L]
    runs = [next((i for i, r in enumerate(row) if not r), len(row)) for row in right]
    assert chain == pytest.approx(sum(runs) / len(runs))
    assert top1 == pytest.approx([sum(row[i] for row in right) / len(right) for i in range(3)])
    assert 0 < chain < top1[0] * 3  # some right guesses, and a miss ends a run


def test_an_unknown_checkpoint_choice_is_refused_before_any_work(tmp_path: Path) -> None:
    from draft_service.redrafter_train import TrainConfig

    with pytest.raises(ValueError, match="select must be one of loss, chain"):
        TrainConfig(target="smollm2", out=tmp_path, select="accuracy")
