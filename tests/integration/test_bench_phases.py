"""`python -m specd_cli.bench_phases`: per-method speedup, τ and per-step phases from a results.json."""

from __future__ import annotations

import json

from specd_cli.bench_phases import main


def _run(method: str, qid: str, wall: float, steps: int, verify: float = 0.0) -> dict:
    return {"method": method, "pass_no": 1, "question_id": qid, "new_tokens": 100, "wall_s": wall,
            "target_steps": steps, "verify_s": verify, "draft_s": 0.0, "network_s": 0.0, "prefill_s": 0.1}  # fmt: skip


def test_speedup_tau_and_phases_with_a_prompt_left_out(tmp_path, capsys):
    runs = [_run("hf-generate", "1", 4.0, 100), dict(_run("pld", "1", 2.0, 50, verify=1.5), draft_tokens=150)]
    runs += [_run("hf-generate", "2", 4.0, 100), dict(_run("pld", "2", 8.0, 50, verify=7.0), draft_tokens=50)]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"runs": runs}))
    main([str(path)])
    both = capsys.readouterr().out
    assert "pld [pass 1]: 0.80x hf-generate, tau 2.00; ms/step wall 100.0 verify 85.0" in both
    main([str(path), "--skip", "2"])
    one = capsys.readouterr().out
    assert "pld [pass 1]: 2.00x hf-generate, tau 2.00; ms/step wall 40.0 verify 30.0" in one
    assert "prefill 5% of wall; draft nodes/step 3.0" in one
    assert "draft nodes/step 2.0" in both  # 200 nodes over 100 steps


def test_tau_by_category_pools_tokens_over_steps(tmp_path, capsys):
    runs = [dict(_run("pld", "1", 2.0, 50), category="qa"), dict(_run("pld", "2", 2.0, 25), category="qa")]
    runs += [dict(_run("pld", "3", 2.0, 100), category="writing")]
    runs += [dict(_run("hf-generate", "1", 4.0, 100), category="qa")]
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"runs": runs}))
    main([str(path), "--by-category"])
    out = capsys.readouterr().out
    assert "| method | qa | writing | overall |" in out
    assert "| pld | 2.67 | 1.00 | 1.71 |" in out  # 200/75, 100/100, 300/175
    assert "| hf-generate |" not in out


def test_a_missing_results_file_is_named(tmp_path):
    import pytest

    with pytest.raises(SystemExit, match=r"nope\.json not found"):
        main([str(tmp_path / "nope.json")])
