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

    def validate(self, num_beams: int, vocab_size: int, max_nodes: int) -> None:
        """Raise :class:`InvalidArgument` naming what is wrong with this forest, if anything."""
        n = self.size
        if len(self.parents) != n:
            raise InvalidArgument(f"beam forest has {n} tokens but {len(self.parents)} parents")
        if n > max_nodes:
            raise InvalidArgument(f"beam forest has {n} nodes; the limit is {max_nodes}")
        for g, (tok, par) in enumerate(zip(self.tokens, self.parents, strict=True)):
            if not 0 <= tok < vocab_size:
                raise InvalidArgument(f"beam forest node {g}: token {tok} is outside the vocabulary [0, {vocab_size})")
            if par >= g or par < -num_beams:
                raise InvalidArgument(
                    f"beam forest node {g}: parent {par} must be an earlier node or a root -1..-{num_beams}"
                )
        for j, layer in enumerate(self.layers):
            if not len(layer.inputs) == len(layer.input_scores) == len(layer.q):
                raise InvalidArgument(f"beam forest layer {j}: inputs, input_scores and q differ in length")
            if len(set(layer.candidates)) != len(layer.candidates):
                raise InvalidArgument(f"beam forest layer {j}: candidates repeat (they are drawn without replacement)")
            for ref in layer.inputs:
                if not -num_beams <= ref < n:
                    raise InvalidArgument(f"beam forest layer {j}: input {ref} is not a node or a root")
            inputs = set(layer.inputs)
            for g in layer.candidates:
                if not 0 <= g < n or self.parents[g] not in inputs:
                    raise InvalidArgument(f"beam forest layer {j}: candidate {g} is not a child of the layer's inputs")


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
