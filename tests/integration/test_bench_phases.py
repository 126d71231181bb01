"""`python -m specd_cli.bench_phases`: per-method speedup, τ and per-step phases from a results.json."""

from __future__ import annotations

import json

from specd_cli.bench_phases import main


def _run(method: str, qid: str, wall: float, steps: int, verify: float = 0.0) -> dict:
    return {"method": method, "pass_no": 1, "question_id": qid, "new_tokens": 100, "wall_s": wall,
            "target_steps": steps, "verify_s": verify, "draft_s": 0.0, "network_s": 0.0, "prefill_s": 0.1}  # fmt: skip


def test_speedup_tau_and_phases_with_a_prompt_left_out(tmp_path, capsys):
    runs = [_run("hf-generate", "1", 4.0, 100), _run("pld", "1", 2.0, 50, verify=1.5)]
    runs += [_run("hf-generate", "2", 4.0, 100), _run("pld", "2", 8.0, 50, verify=7.0)]  # a disturbed prompt
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"runs": runs}))
    main([str(path)])
    both = capsys.readouterr().out
    assert "pld [pass 1]: 0.80x hf-generate, tau 2.00; ms/step wall 100.0 verify 85.0" in both
    main([str(path), "--skip", "2"])
    one = capsys.readouterr().out
    assert "pld [pass 1]: 2.00x hf-generate, tau 2.00; ms/step wall 40.0 verify 30.0" in one
    assert "prefill 5% of wall" in one
