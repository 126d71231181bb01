"""Beam sampling and DSBD's beam acceptance as pure functions (no I/O, no model).

A *beam step* extends ``n`` input beams at once. Beam ``b`` has a cumulative score ``s_b``
(the sum of its tokens' warped target log-probabilities) and a next-token distribution
``p_b``; the step's candidates are the flattened pairs ``(b, x)``, index ``b * V + x``, with
joint score ``s_b + log p_b(x)``. Beam *sampling* (transformers' ``generate(num_beams=W,
do_sample=True)``) draws ``max(2, 1 + #eos) * W`` candidates **without replacement** from
``softmax(joint)`` = ``softmax(s)_b * p_b(x)``, then ranks the drawn by joint score (transformers
4.x and >= 5.24 sort them; 5.0-5.23 kept drawing order); a candidate ending in EOS among the best
``W`` of the drawn finishes its hypothesis, and the best ``W`` others run on.

DSBD (Qin et al. 2024, docs/ALGORITHMS.md#dsbd) draws those candidates speculatively: a draft
sampled its own candidates without replacement from ``Q`` (its beam scores and sparse q); the
target takes them in order and accepts draft ``c_i`` with ``min(1, P_i(c_i) / Q_i(c_i))``,
where ``P_i`` is ``P`` without the candidates chosen so far and ``Q_i`` is ``Q`` without the
drafts before ``c_i`` (each renormalised). On a rejection the candidate comes from the residual
``norm(max(0, P_i - Q_i))``. Each chosen candidate is then exactly a draw from ``P_i``, so the
candidates are exactly a without-replacement sample from ``P`` and the beams kept from them
follow target beam sampling. The paper's own rule (accept against ``p`` that resets after an
acceptance, fill missing beams from the residual) gives i.i.d. draws *with* replacement, which
is not what beam sampling does; specd implements the exact rule only.

Dynamic width (the paper's rule): the number of accepted draft beams out of ``m`` is modelled
by a small dynamic program over ``P`` and ``Q`` (:func:`accepted_count_distribution`); the
width is the largest ``k`` with ``P(#accepted >= k) >= threshold``, never below the minimum
width. The width depends only on the distributions, never on the sampled drafts, so it does
not disturb the exactness above: given its width, every step is target beam sampling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from spec_decode.beam_types import BeamParams as BeamParams  # re-exported (torch-free home: beam_types)
from spec_decode.errors import InvalidArgument
from spec_decode.types import SparseProbs


@dataclass(frozen=True)
class BeamChoice:
    """What one beam step chose among its ``candidates`` (flat ids ``b * V + x``, sampling order).

    ``running`` and ``finished`` index ``candidates``: ``running`` are the beams that go on, best
    score first; ``finished`` the candidates that ended with EOS among the best ``width`` drawn,
    best score first.
    """

    candidates: tuple[int, ...]
    scores: tuple[float, ...]
    running: tuple[int, ...]
    finished: tuple[int, ...]


@dataclass(frozen=True)
class SparseJoint:
    """A draft's joint distribution over flat candidates: ``probs[i]`` at flat id ``ids[i]``."""

    ids: tuple[int, ...]
    probs: tuple[float, ...]


def num_candidates(width: int, num_eos: int) -> int:
    """Candidates drawn per step: transformers' ``max(2, 1 + #eos) * width``."""
    return max(2, 1 + num_eos) * width


def joint_scores(
    beam_scores: torch.Tensor,  # [n] cumulative score per input beam
    log_probs: torch.Tensor,  # [n, V] warped next-token log-probabilities per beam
) -> torch.Tensor:
    """``[n * V]`` joint scores ``s_b + log p_b(x)`` at flat index ``b * V + x``."""
    return (beam_scores[:, None] + log_probs).reshape(-1)


def joint_draft(
    beam_scores: Sequence[float],  # [n] the draft's score per input beam
    q_ids: Sequence[Sequence[int]],  # [n][k] support of each beam's sparse q
    q_probs: Sequence[Sequence[float]],  # [n][k]
    vocab_size: int,
    slots: Sequence[int] | None = None,  # [n] flat beam slot per input beam (default 0..n-1)
) -> SparseJoint:
    """The draft's ``Q(b, x) = softmax(s)_b * q_b(x)`` as a sparse joint over flat ids."""
    weights = torch.softmax(torch.tensor(list(beam_scores), dtype=torch.float64), dim=0).tolist()
    ids: list[int] = []
    probs: list[float] = []
    for b, (w, tids, tps) in enumerate(zip(weights, q_ids, q_probs, strict=True)):
        slot = b if slots is None else slots[b]
        for tid, prob in zip(tids, tps, strict=True):
            if prob > 0.0:
                ids.append(slot * vocab_size + int(tid))
                probs.append(w * float(prob))
    return SparseJoint(tuple(ids), tuple(probs))


def select_beams(
    candidates: Sequence[int],
    scores: Sequence[float],
    vocab_size: int,
    width: int,
    eos_ids: Sequence[int],
    last: bool = False,
) -> BeamChoice:
    """transformers' selection: the drawn candidates ranked by score; EOS among the best ``width``
    finish, the best ``width`` others run.

    ``last``: this step reaches ``max_new_tokens``, so every candidate hits a stopping criterion and,
    as in transformers, the best ``width`` drawn finish and none runs on. Only the set drawn and
    the scores matter, never the drawing order (ties, which have probability 0, go to the earlier
    draw), so a speculative draw of the same set law gives the same beams' law.

    Example:
        V = 10, width 1, eos (2,): candidates [5, 12] (beam 0 token 5, beam 1 token 2 = EOS), scores
        [-2.0, -1.0] -> the EOS candidate ranks first: finished (1,), running (0,).
    """
    eos = set(eos_ids)
    ranked = sorted(range(len(candidates)), key=lambda i: (-scores[i], i))  # best score first
    is_eos = [c % vocab_size in eos or last for c in candidates]
    finished = tuple(i for i in ranked[:width] if is_eos[i])
    alive = [i for i in ranked if not is_eos[i]]
    return BeamChoice(tuple(candidates), tuple(scores), tuple(alive[:width]), finished)


def sample_beam_step(
    joint: torch.Tensor,  # [n * V] joint scores (-inf where impossible)
    vocab_size: int,
    width: int,
    eos_ids: Sequence[int],
    generator: torch.Generator | None,
    last: bool = False,
) -> BeamChoice:
    """One step of target beam sampling, transformers' semantics (see the module docstring and
    :func:`select_beams` for ``last``)."""
    logp = torch.log_softmax(joint.to(torch.float64), dim=0)  # [n * V]
    drawn = draw_without_replacement(logp, num_candidates(width, len(eos_ids)), generator)
    scores = joint[drawn].tolist()
    return select_beams(drawn, scores, vocab_size, width, eos_ids, last)


def draw_without_replacement(
    logp: torch.Tensor,  # [M] log-probabilities (-inf = impossible), need not be normalised
    count: int,
    generator: torch.Generator | None,
) -> list[int]:
    """``count`` indices drawn one by one without replacement, in drawing order (at most the support).

    The Gumbel-top-k trick: ordering ``logp + Gumbel noise`` descending gives exactly the law of
    sequential sampling without replacement (what ``torch.multinomial(replacement=False)`` draws),
    with one ``topk`` instead of ``count`` passes over ``M``.
    """
    count = min(count, int(torch.isfinite(logp).sum()))
    if count <= 0:
        return []
    u = torch.rand(logp.shape, generator=generator, dtype=torch.float64, device=logp.device)  # [M]
    gumbel = -torch.log(-torch.log(u.clamp_(min=1e-300)))  # [M]
    return torch.topk(logp.to(torch.float64) + gumbel, count).indices.tolist()


@dataclass(frozen=True)
class CandidateDraw:
    """Candidates drawn speculatively: ``candidates`` in order, ``accepted[i]`` = draft i was kept."""

    candidates: tuple[int, ...]
    accepted: tuple[bool, ...]

    @property
    def num_accepted(self) -> int:
        return sum(self.accepted)


def accept_beam_candidates(
    joint: torch.Tensor,  # [M] target joint scores over flat candidates (-inf where impossible)
    drafts: Sequence[int],  # draft candidates (flat ids), drawn without replacement from `draft`
    draft: SparseJoint,  # the draft's joint Q the drafts were drawn from
    count: int,
    generator: torch.Generator | None,
) -> CandidateDraw:
    """Draw ``count`` candidates without replacement from ``P = softmax(joint)``, using the drafts.

    Candidate ``i``: draft ``c_i`` (if any is left) is accepted with ``min(1, P_i(c_i) / Q_i(c_i))``,
    ``P_i`` = ``P`` without the candidates chosen so far, ``Q_i`` = ``Q`` without the drafts
    before ``c_i``; otherwise the candidate is drawn from ``norm(max(0, P_i - Q_i))``. Once the
    drafts run out, candidates are drawn from ``P_i``. Every candidate is exactly a draw from
    ``P_i``, so the result is distributed as ``torch.multinomial(P, count, replacement=False)``.

    Example:
        P = Q and drafts [7, 3]: both are accepted (P_i = Q_i at each step), candidates (7, 3).
    """
    p = torch.softmax(joint.to(torch.float64), dim=0)  # [M]
    count = min(count, int((p > 0).sum()))
    q_ids = torch.tensor(draft.ids, dtype=torch.long)  # [K]
    q_all = torch.tensor(draft.probs, dtype=torch.float64)  # [K]
    q_pos = {int(i): k for k, i in enumerate(draft.ids)}
    q_live = torch.ones(len(draft.ids), dtype=torch.bool)  # drafts not yet drawn
    chosen: list[int] = []
    accepted: list[bool] = []
    mass = float(p.sum())  # of the candidates not chosen yet: P_i = p / mass
    for i in range(min(count, len(drafts))):
        c = int(drafts[i])
        q_i = torch.where(q_live, q_all, torch.zeros_like(q_all))
        q_i = q_i / q_i.sum()
        q_c = float(q_i[q_pos[c]]) if c in q_pos else 0.0
        if q_c <= 0.0:
            raise InvalidArgument(f"draft candidate {c} has probability 0 under its own draft distribution")
        u = float(torch.rand((), generator=generator, dtype=torch.float64))
        if u * q_c < float(p[c]) / mass:
            pick, ok = c, True
        else:
            residual = p / mass  # [M] a new tensor: P_i
            residual[q_ids] = torch.clamp(residual[q_ids] - q_i, min=0.0)
            total = float(residual.sum())
            pick, ok = _draw(residual if total > 0.0 else p, generator), False
        q_live[q_pos[c]] = False
        chosen.append(pick)
        accepted.append(ok)
        mass -= float(p[pick])
        p[pick] = 0.0
    # No draft left: the rest of the candidates straight from P without the chosen ones.
    rest = draw_without_replacement(torch.log(p), count - len(chosen), generator)
    return CandidateDraw((*chosen, *rest), (*accepted, *(False for _ in rest)))


def _draw(weights: torch.Tensor, generator: torch.Generator | None) -> int:
    """One index drawn with probability proportional to ``weights`` (``[M]``, >= 0): inverse CDF."""
    cdf = torch.cumsum(weights, dim=0)  # [M]
    u = float(torch.rand((), generator=generator, dtype=torch.float64)) * float(cdf[-1])
    index = int(torch.searchsorted(cdf, torch.tensor([u], dtype=cdf.dtype), right=True)[0])
    # right=True lands on an entry with weight > 0; round-off at the very top falls back to the last one.
    return index if index < len(weights) else int(torch.nonzero(weights).flatten()[-1])


def accepted_count_distribution(
    p: torch.Tensor,  # [M] target joint probabilities
    draft: SparseJoint,  # [M] (sparse) draft joint
    m: int,
) -> torch.Tensor:
    """``[m + 1]``: probability that ``k`` of ``m`` draft beams are accepted, DSBD's dynamic program.

    The model (the paper's): draft beams are i.i.d. draws from ``Q``, tried in turn; the first
    try of a round accepts with ``alpha_0 = sum(min(P, Q))``; after ``r`` rejections in a row
    the target distribution is the ``r``-times residual and the try accepts with ``alpha_r``;
    an acceptance starts a new round from ``P``. With ``f_i`` the probability that a round's
    first acceptance is its ``i``-th try, ``D[n][k] = sum_i f_i D[n - i][k - 1]`` and
    ``D[n][0] = prod_{r < n} (1 - alpha_r)``.

    Example:
        P = Q: alpha_0 = 1, so all ``m`` are accepted: ``[0, ..., 0, 1]``.
    """
    q = torch.zeros_like(p, dtype=torch.float64)
    if draft.ids:
        q[torch.tensor(draft.ids, dtype=torch.long)] = torch.tensor(draft.probs, dtype=torch.float64)
    cur = p.to(torch.float64) / p.sum()
    alphas: list[float] = []
    for _ in range(m):
        alphas.append(float(torch.minimum(cur, q).sum()))
        residual = torch.clamp(cur - q, min=0.0)
        total = float(residual.sum())
        cur = residual / total if total > 0.0 else cur
    first = []  # f_i, i = 1..m: rejections for i - 1 tries, then an acceptance
    none_yet = 1.0
    for alpha in alphas:
        first.append(none_yet * alpha)
        none_yet *= 1.0 - alpha
    table = [[0.0] * (m + 1) for _ in range(m + 1)]  # table[n][k]
    table[0][0] = 1.0
    for n in range(1, m + 1):
        table[n][0] = math.prod(1.0 - a for a in alphas[:n])
        for k in range(1, n + 1):
            table[n][k] = sum(first[i - 1] * table[n - i][k - 1] for i in range(1, n + 1))
    return torch.tensor(table[m], dtype=torch.float64)


def choose_width(dist: torch.Tensor, threshold: float, min_width: int, max_width: int) -> int:
    """The largest ``k <= max_width`` with ``P(#accepted >= k) >= threshold``, at least ``min_width``.

    ``dist``: ``[m + 1]`` from :func:`accepted_count_distribution`. ``threshold == 0`` -> ``max_width``.

    Example:
        dist [0.1, 0.2, 0.7], threshold 0.7 -> P(>= 2) = 0.7 -> 2; threshold 0.9 -> P(>= 1) = 0.9 -> 1.
    """
    if threshold <= 0.0:
        return max_width
    tail = torch.flip(torch.cumsum(torch.flip(dist, (0,)), 0), (0,)).tolist()  # tail[k] = P(#acc >= k)
    best = 0
    for k in range(1, min(max_width, len(tail) - 1) + 1):
        if tail[k] >= threshold - 1e-12:
            best = k
    return max(min_width, best)


@dataclass(frozen=True)
class DraftLayerDraw:
    """One layer of draft beam sampling: what was drawn and what the draft keeps.

    ``candidates`` are ``(input index, token)`` in sampling order; ``kept`` the beams that go
    on, ``(candidate index, draft score)``, best first (EOS candidates never go on).
    """

    candidates: tuple[tuple[int, int], ...]
    kept: tuple[tuple[int, float], ...]


def draw_draft_layer(
    input_scores: Sequence[float],  # [n] the draft's cumulative score per input beam
    q: Sequence[SparseProbs],  # [n] the draft's sparse next-token distribution per input beam
    width: int,
    eos_ids: Sequence[int],
    generator: torch.Generator | None,
) -> DraftLayerDraw:
    """Draft beam sampling over sparse q: the same draw and selection as :func:`sample_beam_step`.

    The draw is over the sparse entries only (``n * k`` of them, never ``n * V``); candidates are
    drawn without replacement from ``Q(i, x) = softmax(s)_i q_i(x)``, as
    :func:`accept_beam_candidates` assumes.
    """
    pairs: list[tuple[int, int]] = []
    logq: list[float] = []
    for i, (score, dist) in enumerate(zip(input_scores, q, strict=True)):
        for tid, prob in zip(dist.ids, dist.probs, strict=True):
            if prob > 0.0:
                pairs.append((i, int(tid)))
                logq.append(float(score) + math.log(prob))
    if not pairs:
        return DraftLayerDraw((), ())
    joint = torch.tensor(logq, dtype=torch.float64)  # [K] over the sparse entries
    count = min(num_candidates(width, len(eos_ids)), len(pairs))
    drawn = torch.multinomial(torch.softmax(joint, dim=0), count, replacement=False, generator=generator).tolist()
    eos = set(eos_ids)
    alive = sorted((j for j in range(count) if pairs[drawn[j]][1] not in eos), key=lambda j: -logq[drawn[j]])
    candidates = tuple(pairs[d] for d in drawn)
    return DraftLayerDraw(candidates, tuple((j, logq[drawn[j]]) for j in alive[:width]))


def normalized_score(score: float, length: int, length_penalty: float) -> float:
    """transformers' hypothesis score: ``score / length ** length_penalty``."""
    return score / max(1, length) ** length_penalty
