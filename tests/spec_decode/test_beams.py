"""Beam sampling and DSBD acceptance as pure functions, on hand-written distributions."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest
import torch

from spec_decode.beams import (
    BeamParams,
    SparseJoint,
    accept_beam_candidates,
    accepted_count_distribution,
    choose_width,
    draw_draft_layer,
    joint_draft,
    num_candidates,
    sample_beam_step,
    select_beams,
)
from spec_decode.errors import InvalidArgument
from spec_decode.types import SparseProbs


def _without_replacement_law(p: list[float], count: int) -> dict[tuple[int, ...], float]:
    """Exact probability of every ordered draw of ``count`` items without replacement."""
    law = {}
    for seq in itertools.permutations(range(len(p)), count):
        prob, left = 1.0, 1.0
        for i in seq:
            prob *= p[i] / left
            left -= p[i]
        law[seq] = prob
    return law


def _tv(counts: Counter, law: dict, n: int) -> float:
    keys = set(counts) | set(law)
    return 0.5 * sum(abs(counts.get(k, 0) / n - law.get(k, 0.0)) for k in keys)


def test_select_beams_example() -> None:
    choice = select_beams([5, 12], [-2.0, -1.0], vocab_size=10, width=1, eos_ids=(2,))
    assert choice.finished == (1,) and choice.running == (0,)


def test_select_beams_ranks_by_score_not_by_drawing_order() -> None:
    # V = 10, width 2, EOS = token 2: drawn third, candidate 22 has the best score, so it finishes
    choice = select_beams([3, 14, 22, 7], [-3.0, -1.0, -0.5, -2.0], 10, 2, (2,))
    assert choice.finished == (2,)
    assert choice.running == (1, 3)  # best non-EOS scores: -1.0 (14), -2.0 (7)
    # an EOS outside the best two by score does not finish, however early it was drawn
    late = select_beams([22, 14, 3, 7], [-3.5, -1.0, -3.0, -2.0], 10, 2, (2,))
    assert late.finished == () and late.running == (1, 3)
    # the length limit: the best two drawn finish, none runs on
    last = select_beams([3, 14, 22, 7], [-3.0, -1.0, -0.5, -2.0], 10, 2, (2,), last=True)
    assert last.finished == (2, 1) and last.running == ()


def test_num_candidates_is_transformers_rule() -> None:
    assert num_candidates(4, 1) == 8 and num_candidates(4, 0) == 8 and num_candidates(3, 2) == 9


def test_beam_params_validation_names_the_knob() -> None:
    with pytest.raises(InvalidArgument, match="min beam width"):
        BeamParams(width=2, min_width=3).validate()
    with pytest.raises(InvalidArgument, match="threshold"):
        BeamParams(threshold=1.5).validate()


def test_sample_beam_step_draws_from_the_joint() -> None:
    # Two beams with scores log(0.75), log(0.25) and V = 3: joint = outer product, flattened.
    scores = torch.tensor([math.log(0.75), math.log(0.25)], dtype=torch.float64)
    logp = torch.log(torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.2, 0.6]], dtype=torch.float64))
    joint = (scores[:, None] + logp).reshape(-1)
    p = torch.softmax(joint, 0).tolist()
    gen = torch.Generator().manual_seed(0)
    n = 4000
    counts: Counter = Counter()
    for _ in range(n):
        counts[sample_beam_step(joint, 3, 1, (), gen).candidates] += 1
    assert _tv(counts, _without_replacement_law(p, 2), n) < 0.04


def test_accept_beam_candidates_is_exact_without_replacement_sampling() -> None:
    """Drafts from a different Q: the chosen candidates follow P without replacement exactly."""
    p = [0.30, 0.25, 0.20, 0.15, 0.07, 0.03]
    joint = torch.log(torch.tensor(p, dtype=torch.float64))
    q_ids, q_probs = (0, 2, 3, 5), (0.1, 0.5, 0.3, 0.1)  # misses 1 and 4, over-weights 2 and 5
    draft = SparseJoint(q_ids, q_probs)
    gen = torch.Generator().manual_seed(1)
    n = 8000
    counts: Counter = Counter()
    accepted = 0
    for _ in range(n):
        drafts = [q_ids[i] for i in torch.multinomial(torch.tensor(q_probs), 2, generator=gen).tolist()]
        draw = accept_beam_candidates(joint, drafts, draft, 2, gen)
        counts[draw.candidates] += 1
        accepted += draw.num_accepted
    # 30 ordered pairs: the sampling noise of the TV distance is about 0.02 at n = 8000.
    assert _tv(counts, _without_replacement_law(p, 2), n) < 0.045
    assert 0 < accepted < 2 * n  # both branches (accepted, residual) were exercised


def test_accept_beam_candidates_accepts_everything_when_draft_equals_target() -> None:
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    draw = accept_beam_candidates(torch.log(p), [1, 0], SparseJoint((0, 1, 2), tuple(p.tolist())), 2, None)
    assert draw.candidates == (1, 0) and draw.accepted == (True, True)


def test_accept_beam_candidates_refuses_a_draft_outside_its_own_q() -> None:
    with pytest.raises(InvalidArgument, match="probability 0"):
        accept_beam_candidates(torch.zeros(3), [2], SparseJoint((0,), (1.0,)), 1, None)


def test_accepted_count_distribution_matches_simulation_of_the_paper_model() -> None:
    p = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64)
    q = SparseJoint((0, 1, 2, 3), (0.1, 0.2, 0.3, 0.4))
    m = 3
    dist = accepted_count_distribution(p, q, m)
    assert math.isclose(float(dist.sum()), 1.0, rel_tol=1e-9)
    gen = torch.Generator().manual_seed(2)
    qt = torch.tensor(q.probs, dtype=torch.float64)
    n = 6000
    counts = Counter()
    for _ in range(n):
        cur, acc = p.clone(), 0
        for x in torch.multinomial(qt, m, replacement=True, generator=gen).tolist():
            if float(torch.rand((), generator=gen)) * float(qt[x]) < float(cur[x]):
                acc, cur = acc + 1, p.clone()
            else:
                cur = torch.clamp(cur - qt, min=0)
                cur = cur / cur.sum()
        counts[acc] += 1
    for k in range(m + 1):
        assert abs(counts[k] / n - float(dist[k])) < 0.025, (k, counts[k] / n, float(dist[k]))


def test_accepted_count_distribution_extremes() -> None:
    p = torch.tensor([0.5, 0.5, 0.0, 0.0], dtype=torch.float64)
    assert accepted_count_distribution(p, SparseJoint((0, 1), (0.5, 0.5)), 3).tolist() == [0, 0, 0, 1]
    disjoint = accepted_count_distribution(p, SparseJoint((2, 3), (0.5, 0.5)), 3)
    assert disjoint.tolist() == [1, 0, 0, 0]


def test_choose_width_examples() -> None:
    dist = torch.tensor([0.1, 0.2, 0.7], dtype=torch.float64)
    assert choose_width(dist, 0.7, 1, 2) == 2
    assert choose_width(dist, 0.9, 1, 2) == 1
    assert choose_width(dist, 0.95, 1, 2) == 1  # P(>= 1) = 0.9 < 0.95, but never below min width 1
    assert choose_width(dist, 0.95, 2, 2) == 2
    assert choose_width(dist, 0.0, 1, 4) == 4  # threshold 0: fixed width


def test_joint_draft_weights_beams_by_softmax_of_scores() -> None:
    joint = joint_draft([0.0, math.log(3.0)], [[1], [0, 2]], [[1.0], [0.5, 0.5]], vocab_size=4, slots=[1, 0])
    assert joint.ids == (4 + 1, 0, 2)
    assert [round(x, 6) for x in joint.probs] == [0.25, 0.375, 0.375]


def test_draw_draft_layer_samples_without_replacement_and_keeps_best() -> None:
    q = [SparseProbs((5, 6), (0.9, 0.1)), SparseProbs((7, 8), (0.5, 0.5))]
    draw = draw_draft_layer([0.0, -10.0], q, width=1, eos_ids=(), generator=torch.Generator().manual_seed(3))
    assert len(draw.candidates) == 2 and len(set(draw.candidates)) == 2
    logq = {(0, 5): math.log(0.9), (0, 6): math.log(0.1), (1, 7): -10 + math.log(0.5), (1, 8): -10 + math.log(0.5)}
    index, score = draw.kept[0]
    assert score == max(logq[c] for c in draw.candidates) == logq[draw.candidates[index]]
