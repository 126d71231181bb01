"""specd's beam-sampling step against transformers' ``generate(num_beams=W, do_sample=True)``.

A 1-layer Llama with a 6-token vocabulary (random, sharpened weights) keeps the outcome space
small enough to compare the two distributions of returned beams directly: 1000 decodes each,
two tokens, two beams, temperature 1 and no top-k/top-p (where specd's scores and transformers'
are the same numbers, docs/ALGORITHMS.md §9.1), two-sample chi-square test at fixed seeds.
transformers 5.0-5.23 kept the drawn candidates in drawing order; 4.x and 5.24+ (pinned in
pyproject.toml) rank them by score, which is what specd does.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from scipy.stats import chi2_contingency

from spec_decode.beams import normalized_score, sample_beam_step

VOCAB = 6
WIDTH = 2
NEW = 2
PROMPT = [1, 2, 3]
N = 1000


@pytest.fixture(scope="module")
def model():  # -> LlamaForCausalLM
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(7)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=32,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
    )
    lm = LlamaForCausalLM(config).to(torch.float64).eval()
    with torch.no_grad():
        lm.lm_head.weight.mul_(16.0)  # sharper next-token distributions: fewer, better-filled cells
    return lm


def _logp(model, seq: tuple[int, ...]) -> torch.Tensor:
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([PROMPT + list(seq)])).logits[0, -1]
    return torch.log_softmax(logits, dim=-1)  # [V]


def _specd(model, gen: torch.Generator, cache: dict, ranked: bool = True) -> tuple:
    beams: list[tuple[tuple[int, ...], float]] = [((), 0.0)]
    for step in range(NEW):
        rows = []
        for seq, score in beams:
            if seq not in cache:
                cache[seq] = _logp(model, seq)
            rows.append(score + cache[seq])
        last = step == NEW - 1  # max_new_tokens reached: the best WIDTH drawn finish
        choice = sample_beam_step(torch.cat(rows), VOCAB, WIDTH, (), gen, last)
        kept = choice.finished if last else choice.running
        if not ranked and last:  # transformers 5.0-5.23: the first WIDTH drawn finish
            kept = tuple(range(min(WIDTH, len(choice.candidates))))
        beams = [
            ((*beams[choice.candidates[i] // VOCAB][0], choice.candidates[i] % VOCAB), choice.scores[i]) for i in kept
        ]
    ranked = sorted(beams, key=lambda b: normalized_score(b[1], len(b[0]), 1.0), reverse=True)
    return tuple(seq for seq, _ in ranked)


def _hf(model) -> tuple:
    ids = torch.tensor([PROMPT])
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            num_beams=WIDTH,
            num_return_sequences=WIDTH,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=NEW,
            min_new_tokens=NEW,
            pad_token_id=0,
        )
    return tuple(tuple(int(t) for t in row[len(PROMPT) :]) for row in out)


def test_beam_sample_step_matches_transformers_beam_sampling(model) -> None:
    torch.manual_seed(21)  # transformers draws from torch's global generator
    theirs = Counter(_hf(model) for _ in range(N))
    cache: dict = {}
    gen = torch.Generator().manual_seed(22)
    ours = Counter(_specd(model, gen, cache) for _ in range(N))
    table = _pooled(theirs, ours)
    assert len(table[0]) >= 6, "too few distinct outcomes to test anything"
    assert chi2_contingency(table).pvalue > 1e-3, table
    # Power: finishing the first WIDTH drawn at the last step (transformers 5.0-5.23) is told apart.
    wrong = Counter(_specd(model, gen, cache, ranked=False) for _ in range(N))
    assert chi2_contingency(_pooled(theirs, wrong)).pvalue < 1e-6


def _pooled(a: Counter, b: Counter) -> list[list[int]]:
    keys = sorted(set(a) | set(b), key=lambda k: -(a[k] + b[k]))
    big = [k for k in keys if a[k] + b[k] >= 10]
    rest = [k for k in keys if a[k] + b[k] < 10]
    return [[a[k] for k in big] + [sum(a[k] for k in rest)], [b[k] for k in big] + [sum(b[k] for k in rest)]]
