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


def test_chat_prompts_cover_the_kinds_of_request_and_never_repeat(tmp_path: Path) -> None:
    from draft_service.chat_prompts import build_chat_prompts, capacity

    first = build_chat_prompts(2000, seed=3)
    assert first == build_chat_prompts(2000, seed=3) and first != build_chat_prompts(2000, seed=4)
    assert len({str(p["turns"]) for p in first}) == 2000
    kinds = Counter(str(p["category"]) for p in first)
    assert set(kinds) >= {"writing", "roleplay", "reasoning", "math", "coding", "stem", "humanities", "qa"}
    assert max(kinds.values()) < 0.4 * len(first)  # no kind crowds out the others
    assert len(build_chat_prompts(10**6)) == capacity() > 4000
    out = tmp_path / "chat.jsonl"
    assert write_prompts(out, 50, kind="chat") == 50
    assert [json.loads(line)["turns"][0] for line in out.read_text().splitlines()] == [
        p["turns"][0] for p in build_chat_prompts(50)
    ]


def test_chat_prompts_are_not_bench_prompts() -> None:
    from draft_service.chat_prompts import build_chat_prompts

    bench = Path(__file__).resolve().parents[3] / "shared" / "bench" / "spec_bench.jsonl"
    texts = {json.loads(line)["turns"][0].strip() for line in bench.read_text().splitlines() if line.strip()}
    assert not texts & {str(p["turns"][0]).strip() for p in build_chat_prompts(10**6)}


def test_unknown_kind_is_refused(tmp_path: Path) -> None:
    import pytest

    with pytest.raises(ValueError, match="unknown prompt kind"):
        write_prompts(tmp_path / "x.jsonl", 5, kind="poems")
