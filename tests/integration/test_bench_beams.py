"""``specd bench`` with the beam methods, as a user runs it, on the tiny pair (shape, not speed)."""

from __future__ import annotations

import json
import subprocess
import sys

from specd_cli.bench_beams import _math_correct


def test_bench_beam_methods_write_speed_quality_cpu_and_memory(tiny_target, tiny_draft, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    row = {"question_id": 7, "category": "math_reasoning", "turns": ["What is 2 + 3?"], "reference": ["#### 5"]}
    prompts.write_text(json.dumps(row) + "\n")
    out = tmp_path / "bench"
    cmd = [
        sys.executable, "-m", "specd_cli.main", "bench", "--target", str(tiny_target), "--draft-model",
        str(tiny_draft), "--device", "cpu", "--prompts", str(prompts), "--max-new-tokens", "6", "--transport",
        "inproc", "--methods", "beam-sample,dsbd,dsbd-keep-best,hf-beam-sample,sps", "--beam-width", "2",
        "--top-k", "20", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    summary = json.loads((out / "results.json").read_text())["summary"]
    assert set(summary) == {"beam-sample W=2", "dsbd W=2", "dsbd-keep-best W=2", "hf-beam-sample W=2", "sps"}
    assert summary["beam-sample W=2"]["speedup_vs_beam_sample"] == 1.0
    for s in summary.values():
        assert s["logprob_per_token"] < 0 and s["cpu_s_per_token"] > 0 and s["math_accuracy"] in (0.0, 1.0)
    # The memory-saving variant holds the KV of one sequence, like sps; full DSBD holds two beams.
    assert summary["dsbd-keep-best W=2"]["peak_kv_mib"] == summary["sps"]["peak_kv_mib"] > 0
    assert summary["dsbd W=2"]["peak_kv_mib"] >= summary["sps"]["peak_kv_mib"]
    assert "speedup vs beam-sample" in (out / "results.md").read_text()


def test_math_answers_are_read_from_the_last_number() -> None:
    row = {"reference": ["so 600+400=1000\n#### 1,000"]}
    assert _math_correct("The total is 1000.", row) is True
    assert _math_correct("It costs 1000 or maybe 999", row) is False
    assert _math_correct("no idea", row) is False
    assert _math_correct("1000", {"reference": []}) is None


def test_generate_cli_prints_every_beam(tiny_target, tiny_draft):
    cmd = [
        sys.executable, "-m", "specd_cli.main", "generate", "Hello there", "--target", str(tiny_target),
        "--draft-model", str(tiny_draft), "--device", "cpu", "--method", "dsbd", "--beam-width", "3",
        "--width-threshold", "0.9", "--min-beam-width", "2", "--temperature", "1", "--seed", "3",
        "--max-new-tokens", "6", "--ignore-eos", "--json",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["method"] == "dsbd" and 2 <= len(result["beams"]) <= 3
    assert result["token_ids"] == result["beams"][0]["token_ids"] and len(result["token_ids"]) == 6
    assert all(b["logprob"] < 0 for b in result["beams"]) and result["peak_kv_bytes"] > 0
