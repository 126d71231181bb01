"""``specd bench`` and ``specd bench-verify`` as a user runs them, on the tiny target (shape, not speed)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from testkit import snap_linears_to_q4_1


def _specd(*args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "specd_cli.main", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def test_bench_with_pool_warmup_on_another_prompt_set(tiny_target, tmp_path):
    prompts, other = tmp_path / "prompts.jsonl", tmp_path / "other.jsonl"
    rows = [
        {"question_id": 1, "category": "writing", "turns": ["Write a line about the sea."]},
        {"question_id": 2, "category": "math", "turns": ["What is 2 + 2?"]},
    ]
    prompts.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    other.write_text(json.dumps({"question_id": "w", "category": "x", "turns": ["Tell me about rivers."]}) + "\n")
    out = tmp_path / "bench"
    done = _specd(
        "bench", "--target", str(tiny_target), "--device", "cpu", "--prompts", str(prompts),
        "--per-category", "1", "--max-new-tokens", "10", "--transport", "inproc",
        "--methods", "hf-generate,vanilla,pld,ouroboros,ouroboros-without-lookahead",
        "--warmup-prompts", str(other), "--warmup-count", "1", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "pool warm-up" in done.stderr
    result = json.loads((out / "results.json").read_text())
    runs = result["runs"]
    assert {r["method"] for r in runs} == {"hf-generate", "vanilla", "pld", "ouroboros", "ouroboros-without-lookahead"}
    assert len(runs) == 2 * 5 and all(r["identical_to_reference"] for r in runs)  # greedy = hf-generate
    assert (out / "results.md").exists() and (out / "speedup.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_verify_json(tiny_target):
    done = _specd(
        "bench-verify", "--target", str(tiny_target), "--device", "cpu", "--tokens", "1,4",
        "--context", "20", "--repeats", "2", "--warmup", "1", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert set(result) == {"specd", "transformers"}
    for timings in result.values():
        assert set(timings) == {"1", "4"} and all(ms > 0 for ms in timings.values())
    meta = json.loads(done.stderr.strip().splitlines()[-1])["meta"]
    assert meta["engine"] == "native" and meta["context"] == 20
    bad = _specd("bench-verify", "--target", str(tiny_target), "--tokens", "0,x")
    assert bad.returncode != 0 and "--tokens" in bad.stderr


def test_bench_verify_on_real_text(tiny_target, tmp_path):
    """--prompts: contexts from a prompt file continued by the target itself (not random tokens)."""
    prompts = tmp_path / "p.jsonl"
    rows = [{"question_id": i, "category": "c", "turns": [f"Tell me about the number {i}."]} for i in range(3)]
    prompts.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    done = _specd(
        "bench-verify", "--target", str(tiny_target), "--device", "cpu", "--tokens", "1,4", "--context", "24",
        "--repeats", "2", "--warmup", "1", "--prompts", str(prompts), "--real-contexts", "2",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "text=" in done.stdout and "(2 contexts)" in done.stdout and "| 4 |" in done.stdout
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    bad = _specd("bench-verify", "--target", str(tiny_target), "--prompts", str(empty), "--tokens", "1")
    assert bad.returncode != 0 and "no prompts" in bad.stderr


def test_bench_on_a_format_that_changes_outputs_checks_against_its_own_vanilla(tiny_target, tmp_path):
    """``--weight-format q8a8 --reference vanilla``: every specd run must equal specd's own target-only
    decoding on that engine (hf-generate, on fp32 weights, may differ)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_target, dtype=torch.float32)
    snap_linears_to_q4_1(model)  # as a GGUF checkpoint holds them: q8a8 serves these layers from their codes
    target = tmp_path / "q4-target"
    model.save_pretrained(target)
    AutoTokenizer.from_pretrained(tiny_target).save_pretrained(target)
    prompts = tmp_path / "prompts.jsonl"
    rows = [
        {"question_id": 1, "category": "writing", "turns": ["Write a line about the sea, then repeat it."]},
        {"question_id": 2, "category": "math", "turns": ["What is 2 + 2? What is 2 + 2?"]},
    ]
    prompts.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "bench"
    done = _specd(
        "bench", "--target", str(target), "--device", "cpu", "--prompts", str(prompts), "--per-category", "1",
        "--max-new-tokens", "16", "--transport", "inproc", "--methods", "hf-generate,pld",
        "--engine", "native", "--weight-format", "q8a8", "--reference", "vanilla", "--score", "--out", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    result = json.loads((out / "results.json").read_text())
    assert result["meta"]["reference"] == "vanilla" and result["meta"]["weight_format"] == "q8a8"
    specd_runs = [r for r in result["runs"] if r["method"] in ("vanilla", "pld")]
    assert len(specd_runs) == 4 and all(r["identical_to_reference"] for r in specd_runs)
    table = (out / "results.md").read_text()
    assert "= vanilla" in table and "log p / token" in table
    for run in result["runs"]:  # --score: each output's mean log-probability under the (fp32) target
        assert run["logprob_per_token"] is not None and run["logprob_per_token"] < 0
    assert all(s["logprob_per_token"] < 0 for s in result["summary"].values())


def test_bench_linear_json(tiny_target):
    done = _specd(
        "bench-linear", "--target", str(tiny_target), "--formats", "q8a8,packed", "--rows", "1,3",
        "--repeats", "2", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert [name.split(" ")[0] for name in result["ms"]] == ["qkv", "o", "gate_up", "down", "lm_head"]
    for by_format in result["ms"].values():
        assert [f.split(" ")[0] for f in by_format] == ["q8a8", "packed"]
        assert all(set(per_m) == {"1", "3"} and min(per_m.values()) > 0 for per_m in by_format.values())
    bad = _specd("bench-linear", "--target", str(tiny_target), "--formats", "int3")
    assert bad.returncode != 0 and "--formats" in bad.stderr


def test_bench_method_names_carry_a_head_tree_and_a_budget():
    from specd_cli.bench import _base, _disabled_parts, _head_tree, _tree_budget

    assert [_base(m) for m in ("redrafter@beams:max", "hybrid@nodes", "pld:cost", "ouroboros-without-lookahead")] == [
        "redrafter",
        "hybrid",
        "pld",
        "ouroboros",
    ]
    assert [_head_tree(m) for m in ("redrafter@beams:max", "hybrid@nodes", "redrafter:max")] == ["beams", "nodes", ""]
    assert _tree_budget("redrafter@beams:max") == "max"
    assert _disabled_parts("ouroboros-without-lookahead+history_phrases:max") == ["lookahead", "history_phrases"]
    with pytest.raises(SystemExit, match="head tree after '@'"):
        _head_tree("redrafter@wide:max")


def _children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":  # ppid; zombies are already gone
            out.append(int(stat.parent.name))
    return out


def test_a_terminated_bench_stops_the_stack_it_started(tiny_target, tmp_path):
    """SIGTERM (a timeout, a CI runner) reaches `specd bench` while its target, draft service and
    orchestrator run: it exits 143 and none of them is left running."""
    prompts = tmp_path / "prompts.jsonl"
    rows = [{"question_id": i, "category": "writing", "turns": [f"Write line {i} about the sea."]} for i in range(200)]
    prompts.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cmd = [
        sys.executable, "-m", "specd_cli.main", "bench", "--target", str(tiny_target), "--device", "cpu",
        "--prompts", str(prompts), "--per-category", "200", "--max-new-tokens", "64", "--methods", "vanilla",
        "--out", str(tmp_path / "bench"),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline, seen = time.monotonic() + 240, []
        while time.monotonic() < deadline and len(seen) < 3 and proc.poll() is None:
            seen = sorted(set(seen) | set(_children(proc.pid)))  # target, draft, then the orchestrator
            time.sleep(0.05)
        assert len(seen) >= 3, f"the stack never started: {proc.poll()}"
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(0.5)
    alive = [pid for pid in seen if Path(f"/proc/{pid}").exists() and not _is_zombie(pid)]
    assert not alive, f"left running: {alive}"


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
