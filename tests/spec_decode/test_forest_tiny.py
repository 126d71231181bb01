"""DSBD on a tiny model pair: its output beams follow target-only beam sampling (statistical test).

The tiny target and draft (tests/conftest.py) give real next-token distributions; with top-k 3
warping every reachable prefix of 3 tokens is enumerated once, and the tokens are re-indexed
into the small vocabulary they span (the distributions are unchanged; the functions run on a
vocabulary of a few dozen instead of 49152, so thousands of decodes take seconds).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from scipy.stats import chi2_contingency
from testkit import hf_model

from spec_decode.beams import BeamParams, sample_beam_step
from spec_decode.forest import BeamForest, accept_forest, draft_forest
from spec_decode.sampling import warp_probs
from spec_decode.types import SamplingParams, SparseProbs

PROMPT = [1, 504, 3458, 314, 260]
LENGTH = 3  # tokens generated per decode
WIDTH = 2
SAMPLING = SamplingParams(temperature=1.0, top_k=3)


class TinyPair:
    """Warped next-token distributions of the tiny target and draft over every reachable prefix."""

    def __init__(self, target_dir: Path, draft_dir: Path) -> None:
        target, draft = hf_model(target_dir, torch.float32), hf_model(draft_dir, torch.float32)
        dists: dict[tuple[str, tuple[int, ...]], torch.Tensor] = {}
        frontier: list[tuple[int, ...]] = [()]
        for _ in range(LENGTH):
            nxt: list[tuple[int, ...]] = []
            for seq in frontier:
                ids = torch.tensor([PROMPT + list(seq)])  # [1, L]
                with torch.inference_mode():
                    for name, model in (("target", target), ("draft", draft)):
                        dists[name, seq] = warp_probs(model(input_ids=ids).logits[0, -1], SAMPLING)  # [V]
                support = (dists["target", seq] > 0) | (dists["draft", seq] > 0)
                nxt.extend((*seq, int(t)) for t in support.nonzero().flatten().tolist())
            frontier = nxt
        vocab = sorted({t for seq in frontier for t in seq})
        self.vocab = len(vocab)
        ids = torch.tensor(vocab)
        index = {t: i for i, t in enumerate(vocab)}
        # Re-index sequences and distributions into the small vocabulary.
        self.target: dict[tuple[int, ...], torch.Tensor] = {}
        self.draft: dict[tuple[int, ...], SparseProbs] = {}
        for (name, seq), probs in dists.items():
            small = tuple(index[t] for t in seq)
            sub = probs[ids].to(torch.float64)  # [V'] all the mass lives here
            if name == "target":
                self.target[small] = torch.log(sub)
            else:
                keep = sub > 0
                self.draft[small] = SparseProbs(tuple(keep.nonzero().flatten().tolist()), tuple(sub[keep].tolist()))


@pytest.fixture(scope="module")
def pair(tiny_target: Path, tiny_draft: Path) -> TinyPair:
    return TinyPair(tiny_target, tiny_draft)


def target_beam_sampling(pair: TinyPair, gen: torch.Generator, model: str = "target") -> tuple:
    """Beam sampling of LENGTH tokens with the target's distributions (or the draft's: a control)."""
    beams: list[tuple[tuple[int, ...], float]] = [((), 0.0)]
    for _ in range(LENGTH):
        joint = torch.cat([score + _log_probs(pair, model, seq) for seq, score in beams])  # [n * V']
        choice = sample_beam_step(joint, pair.vocab, WIDTH, (), gen)
        beams = [
            ((*beams[choice.candidates[i] // pair.vocab][0], choice.candidates[i] % pair.vocab), choice.scores[i])
            for i in choice.running
        ]
    return tuple(sorted(seq for seq, _ in beams))


def dsbd(pair: TinyPair, gen: torch.Generator, params: BeamParams, draft: str = "draft") -> tuple:
    """Decode LENGTH tokens with DSBD steps; returns (sorted beams, steps, accepted, drafted, widths)."""
    beams: Beams = [((), 0.0)]
    steps = accepted = drafted = 0
    widths: list[int] = []
    while len(beams[0][0]) < LENGTH:
        scores = [score for _, score in beams]
        depth = min(2, LENGTH - len(beams[0][0]) - 1)
        forest = draft_forest(scores, _DraftQ(pair, beams, draft), depth, params.width, (), gen, 64)
        rows = _TargetRows(pair, beams, forest)
        out = accept_forest(scores, rows, forest, params, (), pair.vocab, gen)
        beams = [((*_seq_of(b.parent, forest, beams), b.token), b.score) for b in out.beams]
        steps += 1
        accepted += out.accepted
        drafted += out.drafted
        widths.extend(out.widths)
    return tuple(sorted(seq for seq, _ in beams)), steps, accepted, drafted, widths


Beams = list[tuple[tuple[int, ...], float]]


def _log_probs(pair: TinyPair, model: str, seq: tuple[int, ...]) -> torch.Tensor:
    if model == "target":
        return pair.target[seq]
    q = pair.draft[seq]
    out = torch.full((pair.vocab,), float("-inf"), dtype=torch.float64)  # [V']
    out[list(q.ids)] = torch.log(torch.tensor(q.probs, dtype=torch.float64))
    return out


def _seq_of(ref: int, forest: BeamForest, beams: Beams) -> tuple[int, ...]:
    """The tokens of a node reference: its session beam's, then the forest path to it."""
    if ref < 0:
        return beams[-1 - ref][0]
    return (*_seq_of(forest.parents[ref], forest, beams), forest.tokens[ref])


class _DraftQ:
    def __init__(self, pair: TinyPair, beams: Beams, draft: str) -> None:
        self.pair, self.beams, self.draft = pair, beams, draft

    def __call__(self, refs: list[int], forest: BeamForest) -> list[SparseProbs]:
        seqs = [_seq_of(ref, forest, self.beams) for ref in refs]
        if self.draft != "target":
            return [self.pair.draft[seq] for seq in seqs]
        out = []  # the target as its own draft: q = p
        for seq in seqs:
            p = torch.exp(self.pair.target[seq])
            keep = p > 0
            out.append(SparseProbs(tuple(keep.nonzero().flatten().tolist()), tuple(p[keep].tolist())))
        return out


class _TargetRows:
    def __init__(self, pair: TinyPair, beams: Beams, forest: BeamForest) -> None:
        self.pair, self.beams, self.forest = pair, beams, forest

    def __call__(self, ref: int) -> torch.Tensor:
        return self.pair.target[_seq_of(ref, self.forest, self.beams)]


def _pooled_table(a: Counter, b: Counter, min_count: int = 10) -> list[list[int]]:
    keys = sorted(set(a) | set(b), key=lambda k: -(a[k] + b[k]))
    big = [k for k in keys if a[k] + b[k] >= min_count]
    rest = [k for k in keys if a[k] + b[k] < min_count]
    table = [[a[k] for k in big], [b[k] for k in big]]
    if rest:
        table[0].append(sum(a[k] for k in rest))
        table[1].append(sum(b[k] for k in rest))
    return table


def test_dsbd_output_beams_follow_target_beam_sampling(pair: TinyPair) -> None:
    """Two-sample chi-square test of the final beam sets (fixed seeds; a true match fails 1 in 1000)."""
    n = 2500
    gen_t, gen_d = torch.Generator().manual_seed(11), torch.Generator().manual_seed(12)
    reference = Counter(target_beam_sampling(pair, gen_t) for _ in range(n))
    runs = [dsbd(pair, gen_d, BeamParams(width=WIDTH)) for _ in range(n)]
    ours = Counter(r[0] for r in runs)
    table = _pooled_table(reference, ours)
    assert len(table[0]) >= 5, "too few distinct outcomes to test anything"
    p_value = chi2_contingency(table).pvalue
    assert p_value > 1e-3, (p_value, table)
    # DSBD did speculate: drafts were accepted and steps went past the first layer.
    assert sum(r[2] for r in runs) > 0.3 * sum(r[3] for r in runs)
    assert sum(r[1] for r in runs) < LENGTH * n
    # The test has power: beam sampling with the draft's distributions instead is told apart.
    gen_c = torch.Generator().manual_seed(13)
    control = Counter(target_beam_sampling(pair, gen_c, model="draft") for _ in range(n))
    assert chi2_contingency(_pooled_table(control, ours)).pvalue < 1e-6


def test_dsbd_with_the_target_as_draft_accepts_everything(pair: TinyPair) -> None:
    gen = torch.Generator().manual_seed(5)
    for _ in range(50):
        _, steps, accepted, drafted, widths = dsbd(pair, gen, BeamParams(width=WIDTH), draft="target")
        assert accepted == drafted > 0
        assert steps == 1 and len(widths) == 3  # two drafted layers and the bonus layer, one pass


def test_dynamic_width_stays_within_bounds(pair: TinyPair) -> None:
    gen = torch.Generator().manual_seed(6)
    params = BeamParams(width=3, min_width=2, threshold=0.9)
    seen: set[int] = set()
    for _ in range(100):
        _, _, _, _, widths = dsbd(pair, gen, params)
        seen.update(widths)
    assert seen <= {2, 3} and 2 in seen
