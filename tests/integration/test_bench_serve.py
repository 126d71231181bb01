"""``specd bench-serve`` as a user runs it, on the tiny pair: JSON shape, no errors, and the same
greedy tokens for every prompt at every concurrency (batched verification on)."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def test_bench_serve_tiny_pair(tiny_target, tmp_path):
    out = tmp_path / "serve"
    prompts = tmp_path / "prompts.jsonl"
    rows = [
        {"question_id": 1, "category": "writing", "turns": ["Write a line about the sea."]},
        {"question_id": 2, "category": "math", "turns": ["What is 2 + 2? Then 2 + 2 again."]},
        {"question_id": 3, "category": "writing", "turns": ["Describe a red house with a red door."]},
    ]
    prompts.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cmd = [sys.executable, "-m", "specd_cli.main", "bench-serve", "--target", str(tiny_target), "--device", "cpu"]
    cmd += ["--prompts", str(prompts), "--requests", "3", "--concurrency", "1,2", "--max-batch", "4"]
    cmd += ["--drafters", "1", "--method", "pld", "--max-new-tokens", "12", "--prefill-chunk", "0,4", "--out", str(out)]
    cmd += ["--pld-placement", "draft"]  # drafted in the draft replica, so every side has CPU time to show
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    summary = json.loads((out / "results.json").read_text())
    assert summary["errors"] == 0 and summary["identical_outputs"] and summary["mismatches"] == []
    runs = summary["runs"]
    # whole prompts, then prompts fed 4 tokens a pass: the same greedy tokens (identical_outputs above)
    assert [(r["max_batch"], r["drafters"], r["prefill_chunk"], r["concurrency"]) for r in runs] == [
        (4, 1, 0, 1),
        (4, 1, 0, 2),
        (4, 1, 4, 1),
        (4, 1, 4, 2),
    ]
    for r in runs:
        assert r["requests"] == 3 and r["errors"] == 0 and r["error_messages"] == []
        assert r["tokens"] == 3 * 12  # random tiny weights: no EOS this early
        assert r["throughput_tok_s"] > 0 and r["wall_s"] > 0
        assert 0 < r["ttft_p50_s"] <= r["ttft_p99_s"]
        assert 0 < r["itl_p50_s"] <= r["itl_p99_s"]
        # CPU seconds per side, read from /proc for each service process: the target did the passes
        assert set(r["cpu_s"]) == {"target", "drafters", "orchestrator", "clients"}
        assert r["cpu_s"]["target"] > 0 and min(r["cpu_s"].values()) >= 0
        assert r["cpu_s"]["target"] <= r["wall_s"] * (os.cpu_count() or 1) + 0.5
    # /proc counts in clock ticks (10 ms): one short run of the drafter or the orchestrator can round
    # to 0, the four together do not
    assert sum(r["cpu_s"]["drafters"] for r in runs) > 0 and sum(r["cpu_s"]["orchestrator"] for r in runs) > 0
    md = (out / "results.md").read_text()
    assert "method pld (drafted in: draft)" in md and "| 4 | 1 | 4 | 64 | on | 2 | 3 | 0 | 36 |" in md
    assert {r["argmax_screen"] for r in runs} == {"on"}  # the default (this tiny target has no q8 head)
    bad = subprocess.run(
        [*cmd[:4], "--argmax-screen", "maybe", "--out", str(tmp_path / "bad")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert bad.returncode != 0 and "--argmax-screen takes on and/or off" in bad.stderr
    assert (out / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
