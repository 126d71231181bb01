"""DSBD's draft forest and its verification, as pure functions over target log-probabilities.

A session holds ``n`` beams, each with its own KV cache and pending token. A drafter proposes a
**forest**: one token tree per session beam, built layer by layer by draft beam sampling.
Nodes are numbered globally; a node's parent is an earlier node or a *root reference*
``-1 - b`` (session beam ``b``'s pending token). Layer ``j`` records the draft's input beams
(node references), their draft scores and sparse next-token distributions, and the candidates
the draft drew from them (forest nodes, in sampling order, without replacement); the draft's
kept beams of layer ``j`` are layer ``j + 1``'s inputs.

:func:`accept_forest` replays beam sampling with the target's distributions layer by layer
(:func:`spec_decode.beams.accept_beam_candidates`, exact), going deeper while every beam the
target kept is a forest node (its next-token row is in the same pass). Output beams are
``(parent reference, pending token, score)``: the parent's path is committed to the KV cache,
the pending token is not. Math: docs/ALGORITHMS.md#dsbd.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from spec_decode.beam_types import EMPTY_FOREST as EMPTY_FOREST  # the types are re-exported from beam_types
from spec_decode.beam_types import BeamForest as BeamForest
from spec_decode.beam_types import DraftBeamLayer as DraftBeamLayer
from spec_decode.beam_types import root_ref as root_ref
from spec_decode.beams import (
    BeamChoice,
    BeamParams,
    accept_beam_candidates,
    accepted_count_distribution,
    choose_width,
    draw_draft_layer,
    joint_draft,
    num_candidates,
    sample_beam_step,
    select_beams,
)
from spec_decode.types import SparseProbs


def draft_forest(
    root_scores: Sequence[float],  # [n] scores of the session beams (the draft's layer-0 input scores)
    next_q: Callable[[list[int], BeamForest], list[SparseProbs]],  # refs, forest so far -> q after each ref
    depth: int,
    width: int,
    eos_ids: Sequence[int],
    generator: torch.Generator | None,
    max_nodes: int,
) -> BeamForest:
    """Draft beam sampling for ``depth`` layers from the session beams, recorded as a forest.

    ``next_q`` is called once per layer with the layer's input beams and the forest drawn so far
    (a drafter batches them into one forward pass). Stops early when the next layer would exceed ``max_nodes`` nodes.
    """
    tokens: list[int] = []
    parents: list[int] = []
    layers: list[DraftBeamLayer] = []
    refs = [root_ref(b) for b in range(len(root_scores))]
    scores = [float(s) for s in root_scores]
    for _ in range(depth):
        if not refs or len(tokens) + num_candidates(width, len(eos_ids)) > max_nodes:
            break
        qs = next_q(refs, BeamForest(tuple(tokens), tuple(parents)))
        draw = draw_draft_layer(scores, qs, width, eos_ids, generator)
        first = len(tokens)
        for i, tok in draw.candidates:
            tokens.append(tok)
            parents.append(refs[i])
        candidates = tuple(range(first, len(tokens)))
        layers.append(DraftBeamLayer(tuple(refs), tuple(scores), tuple(qs), candidates))
        refs = [first + j for j, _ in draw.kept]
        scores = [score for _, score in draw.kept]
    return BeamForest(tuple(tokens), tuple(parents), tuple(layers))


@dataclass(frozen=True)
class OutBeam:
    """A beam after a step: ``parent`` (node reference) + ``token`` (pending), cumulative ``score``."""

    parent: int
    token: int
    score: float


@dataclass(frozen=True)
class ForestOutcome:
    """What :func:`accept_forest` decided: running beams (best first), finished ones, per-layer widths."""

    beams: tuple[OutBeam, ...]
    finished: tuple[OutBeam, ...]
    widths: tuple[int, ...]  # the width used at each layer verified
    accepted: int  # draft candidates accepted, over all layers
    drafted: int  # draft candidates tried


def forest_path(ref: int, parents: Sequence[int]) -> tuple[int, list[int]]:
    """``(session beam, forest nodes from the root's child down to ref)`` for a node reference."""
    path: list[int] = []
    while ref >= 0:
        path.append(ref)
        ref = parents[ref]
    path.reverse()
    return -1 - ref, path


def accept_forest(
    beam_scores: Sequence[float],  # [n] the session beams' cumulative target scores
    log_probs: Callable[[int], torch.Tensor],  # node reference -> [V] warped target log-probs after it
    forest: BeamForest,
    params: BeamParams,
    eos_ids: Sequence[int],
    vocab_size: int,
    generator: torch.Generator | None,
    tokens_left: int = 0,
) -> ForestOutcome:
    """Target beam sampling over the forest's layers (exact given each layer's width).

    Each layer: the target's joint ``P`` over its current beams, the draft's ``Q`` over the
    draft's input beams (both on one flat index space), the width from the dynamic program (or
    ``params.width`` when ``params.threshold`` is 0), candidates by
    :func:`~spec_decode.beams.accept_beam_candidates`, beams by
    :func:`~spec_decode.beams.select_beams`. When every kept beam is a forest node the next layer
    follows (after the last one, a target-only layer on their rows); otherwise the step ends.
    ``tokens_left`` (0 = no limit): the layer that reaches it is the generation's last, where the
    best ``width`` candidates drawn finish (transformers' ``max_new_tokens`` rule) and none runs on.
    """
    node_of = {(par, tok): g for g, (tok, par) in enumerate(zip(forest.tokens, forest.parents, strict=True))}
    refs = [root_ref(b) for b in range(len(beam_scores))]
    scores = [float(s) for s in beam_scores]
    finished: list[OutBeam] = []
    widths: list[int] = []
    accepted = drafted = 0
    for depth, layer in enumerate((*forest.layers, None)):
        last = 0 < tokens_left <= depth + 1
        slots = {ref: i for i, ref in enumerate(refs)}
        for ref in layer.inputs if layer is not None else ():
            slots.setdefault(ref, len(slots))
        joint = torch.full((len(slots) * vocab_size,), float("-inf"), dtype=torch.float64)  # [S * V]
        for i, ref in enumerate(refs):
            joint[i * vocab_size : (i + 1) * vocab_size] = scores[i] + log_probs(ref).to(torch.float64)
        if layer is None:
            width = params.width
            choice = sample_beam_step(joint, vocab_size, width, eos_ids, generator, last)
        else:
            q = joint_draft(
                layer.input_scores,
                [d.ids for d in layer.q],
                [d.probs for d in layer.q],
                vocab_size,
                [slots[r] for r in layer.inputs],
            )
            width = params.width
            if params.threshold > 0.0:
                dist = accepted_count_distribution(torch.softmax(joint, dim=0), q, params.width)
                width = choose_width(dist, params.threshold, params.min_width, params.width)
            drafts = [slots[forest.parents[g]] * vocab_size + forest.tokens[g] for g in layer.candidates]
            draw = accept_beam_candidates(joint, drafts, q, num_candidates(width, len(eos_ids)), generator)
            accepted += draw.num_accepted
            drafted += min(len(drafts), len(draw.candidates))
            scores_drawn = joint[list(draw.candidates)].tolist()
            choice = select_beams(draw.candidates, scores_drawn, vocab_size, width, eos_ids, last)
        widths.append(width)
        slot_ref = list(slots)
        out = [_out_beam(choice, i, slot_ref, vocab_size) for i in choice.running]
        finished.extend(_out_beam(choice, i, slot_ref, vocab_size) for i in choice.finished)
        nodes = [node_of.get((b.parent, b.token)) for b in out]
        if layer is None or last or not out or any(g is None for g in nodes):
            return ForestOutcome(tuple(out), tuple(finished), tuple(widths), accepted, drafted)
        refs = [g for g in nodes if g is not None]
        scores = [b.score for b in out]
    raise AssertionError("unreachable: the last layer always returns")


def _out_beam(choice: BeamChoice, i: int, slot_ref: list[int], vocab_size: int) -> OutBeam:
    flat = choice.candidates[i]
    return OutBeam(slot_ref[flat // vocab_size], flat % vocab_size, float(choice.scores[i]))
