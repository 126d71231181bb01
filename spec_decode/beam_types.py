"""The beam methods' value types (torch-free: the wire layer converts them).

:class:`BeamParams` are a request's beam knobs; :class:`BeamForest` is DSBD's draft forest (see
:mod:`spec_decode.forest` for its verification); :class:`BeamUpdate` / :class:`BeamVerifyResult`
are the target's answer to one beam step (see :mod:`spec_decode.beam_api`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from spec_decode.errors import InvalidArgument
from spec_decode.types import DraftTree, SparseProbs


@dataclass(frozen=True)
class BeamParams:
    """Per-request beam knobs. ``threshold == 0`` keeps the width fixed at ``width``."""

    width: int = 4
    min_width: int = 1
    threshold: float = 0.0
    length_penalty: float = 1.0
    keep_best_only: bool = False  # memory-saving DSBD: one beam carried between steps

    def validate(self) -> BeamParams:
        if not 1 <= self.width <= 64:
            raise InvalidArgument(f"beam width must be in [1, 64], got {self.width}")
        if not 1 <= self.min_width <= self.width:
            raise InvalidArgument(f"min beam width must be in [1, width={self.width}], got {self.min_width}")
        if not (math.isfinite(self.threshold) and 0.0 <= self.threshold <= 1.0):
            raise InvalidArgument(f"width threshold must be in [0, 1] (0 = fixed width), got {self.threshold}")
        if not math.isfinite(self.length_penalty):
            raise InvalidArgument(f"length penalty must be finite, got {self.length_penalty}")
        return self


def root_ref(beam: int) -> int:
    """The node reference of session beam ``beam``'s pending token."""
    return -1 - beam


@dataclass(frozen=True)
class DraftBeamLayer:
    """One layer of draft beam sampling. ``inputs`` are node references (``-1 - b`` = session beam b)."""

    inputs: tuple[int, ...]
    input_scores: tuple[float, ...]  # the draft's cumulative score per input beam
    q: tuple[SparseProbs, ...]  # the draft's (sparse) next-token distribution per input beam
    candidates: tuple[int, ...]  # forest nodes drawn from these inputs, in sampling order


@dataclass(frozen=True)
class BeamForest:
    """Draft trees of all session beams: ``tokens[g]``, ``parents[g]`` (a node < g, or a root ref)."""

    tokens: tuple[int, ...] = ()
    parents: tuple[int, ...] = ()
    layers: tuple[DraftBeamLayer, ...] = ()

    @property
    def size(self) -> int:
        return len(self.tokens)

    def trees(self, num_beams: int) -> tuple[list[DraftTree], list[tuple[int, int]]]:
        """One :class:`DraftTree` per session beam, and ``(beam, local node)`` per global node."""
        where: list[tuple[int, int]] = []
        tokens: list[list[int]] = [[] for _ in range(num_beams)]
        parents: list[list[int]] = [[] for _ in range(num_beams)]
        for tok, par in zip(self.tokens, self.parents, strict=True):
            if par < 0:
                beam, local_parent = -1 - par, -1
            else:
                beam, local_parent = where[par]
            where.append((beam, len(tokens[beam])))
            tokens[beam].append(tok)
            parents[beam].append(local_parent)
        return [DraftTree(tuple(t), tuple(p)) for t, p in zip(tokens, parents, strict=True)], where

    def validate(self, num_beams: int, vocab_size: int, max_nodes: int, max_top_k: int = 1024) -> None:
        """Raise :class:`InvalidArgument` naming what is wrong with this forest, if anything."""
        n = self.size
        if len(self.parents) != n:
            raise InvalidArgument(f"beam forest has {n} tokens but {len(self.parents)} parents")
        if n > max_nodes:
            raise InvalidArgument(f"beam forest has {n} nodes; the limit is {max_nodes}")
        seen: set[tuple[int, int]] = set()
        for g, (tok, par) in enumerate(zip(self.tokens, self.parents, strict=True)):
            if not 0 <= tok < vocab_size:
                raise InvalidArgument(f"beam forest node {g}: token {tok} is outside the vocabulary [0, {vocab_size})")
            if par >= g or par < -num_beams:
                raise InvalidArgument(
                    f"beam forest node {g}: parent {par} must be an earlier node or a root -1..-{num_beams}"
                )
            if (par, tok) in seen:
                raise InvalidArgument(f"beam forest node {g}: its parent {par} already has a child with token {tok}")
            seen.add((par, tok))
        for j, layer in enumerate(self.layers):
            _validate_layer(j, layer, num_beams, n, vocab_size, max_top_k, self)


def _validate_layer(
    j: int, layer: DraftBeamLayer, num_beams: int, n: int, vocab_size: int, max_top_k: int, forest: BeamForest
) -> None:
    where = f"beam forest layer {j}"
    if not len(layer.inputs) == len(layer.input_scores) == len(layer.q):
        raise InvalidArgument(f"{where}: inputs, input_scores and q differ in length")
    if len(set(layer.inputs)) != len(layer.inputs):
        raise InvalidArgument(f"{where}: inputs repeat")
    if len(set(layer.candidates)) != len(layer.candidates):
        raise InvalidArgument(f"{where}: candidates repeat (they are drawn without replacement)")
    q_of: dict[int, dict[int, float]] = {}
    for ref, score, q in zip(layer.inputs, layer.input_scores, layer.q, strict=True):
        if not -num_beams <= ref < n:
            raise InvalidArgument(f"{where}: input {ref} is not a node or a root")
        if not math.isfinite(score):
            raise InvalidArgument(f"{where}: input {ref} has a non-finite draft score {score}")
        q_of[ref] = _checked_q(f"{where}, input {ref}", q, vocab_size, max_top_k)
    for g in layer.candidates:
        if not 0 <= g < n or forest.parents[g] not in q_of:
            raise InvalidArgument(f"{where}: candidate {g} is not a child of the layer's inputs")
        if q_of[forest.parents[g]].get(forest.tokens[g], 0.0) <= 0.0:
            raise InvalidArgument(f"{where}: candidate {g} has probability 0 under its parent's draft q")


def _checked_q(where: str, q: SparseProbs, vocab_size: int, max_top_k: int) -> dict[int, float]:
    if len(q.ids) != len(q.probs) or not 0 < len(q.ids) <= max_top_k:
        raise InvalidArgument(f"{where}: draft q needs 1..{max_top_k} ids with one prob each")
    out = dict(zip(q.ids, q.probs, strict=True))
    if len(out) != len(q.ids):
        raise InvalidArgument(f"{where}: draft q ids repeat")
    for tid, prob in out.items():
        if not 0 <= tid < vocab_size:
            raise InvalidArgument(f"{where}: draft q id {tid} is outside the vocabulary [0, {vocab_size})")
        if not (math.isfinite(prob) and 0.0 <= prob <= 1.0 + 1e-4):
            raise InvalidArgument(f"{where}: draft q prob {prob} is not in [0, 1]")
    if abs(sum(out.values()) - 1.0) > 1e-3:
        raise InvalidArgument(f"{where}: draft q sums to {sum(out.values()):.6f}, not 1")
    return out


EMPTY_FOREST = BeamForest()


@dataclass(frozen=True)
class BeamUpdate:
    """A beam after a step: input beam ``parent`` extended by ``tokens`` (its last one is pending).

    ``score`` is the cumulative sampling score (warped target log-probs, what beam sampling ranks
    by); ``logprob`` the cumulative raw target log-probability (log-softmax of the logits).
    """

    parent: int
    tokens: tuple[int, ...]
    score: float
    logprob: float


@dataclass(frozen=True)
class BeamVerifyResult:
    """One beam step: running beams (best first), beams that ended with EOS, and counters."""

    beams: tuple[BeamUpdate, ...]
    finished: tuple[BeamUpdate, ...]
    widths: tuple[int, ...]  # beam width used at each layer verified
    accepted: int  # draft candidates accepted
    drafted: int  # draft candidates tried
    compute_s: float
    kv_bytes: int = 0  # the session's KV memory after the step, all beams
    hidden_states: tuple[bytes, ...] = ()  # when asked: per running beam, float16 hidden state (draft heads)


@dataclass(frozen=True)
class BeamProposal:
    forest: BeamForest
    compute_s: float
