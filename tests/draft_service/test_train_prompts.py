"""specd train-prompts: deterministic prompts of several kinds from the standard library."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from draft_service.train_prompts import build_prompts, write_prompts


def test_prompts_are_deterministic_and_varied(tmp_path: Path) -> None:
    first = build_prompts(300, seed=1)
    assert first == build_prompts(300, seed=1)
    assert first != build_prompts(300, seed=2)
    assert len(first) == 300 and len({str(p["turns"]) for p in first}) == 300
    kinds = Counter(str(p["category"]) for p in first)
    assert set(kinds) >= {"coding", "summarization", "rewriting", "extraction", "qa", "translation", "writing"}
    assert kinds["coding"] <= 200  # prose prompts are half of the set while the library has prose left
    out = tmp_path / "p.jsonl"
    assert write_prompts(out, 40) == 40
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(isinstance(r["turns"][0], str) and len(r["turns"][0]) > 60 for r in rows)


def test_bench_prompts_are_not_among_them() -> None:
    bench = Path(__file__).resolve().parents[3] / "shared" / "bench" / "spec_bench.jsonl"
    texts = {json.loads(line)["turns"][0] for line in bench.read_text().splitlines() if line.strip()}
    assert texts and not texts & {str(p["turns"][0]) for p in build_prompts(500)}
