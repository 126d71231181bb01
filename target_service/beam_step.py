"""One beam step of a target session: score the draft forest over every beam in one pass, run
beam sampling over it (:func:`spec_decode.forest.accept_forest`), fork and commit the KV caches.

A beam session keeps one :class:`BeamSlot` per beam, each with its own KV cache holding the
beam's committed tokens and its pending token outside the cache, exactly like a plain session.
The forest holds one tree per beam; :meth:`TargetEngine.score_trees` scores all of them in one
forward pass (the native engine stacks their rows into one batch). A new beam extends an input
beam by a path of forest nodes and a pending token: when several new beams extend the same input
beam its cache is forked (``engine.copy_cache``, pass rows included) before each copy commits its
own path; an input beam that nothing extends is dropped. Beam-sample (no drafts) is the same step
with an empty forest: each tree is just the pending token.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from spec_decode.beam_api import BeamUpdate, BeamVerifyResult
from spec_decode.beams import BeamParams
from spec_decode.errors import InvalidArgument
from spec_decode.forest import BeamForest, OutBeam, accept_forest, forest_path
from spec_decode.hidden import hidden_bytes
from spec_decode.sampling import warp_probs
from spec_decode.types import SamplingParams
from target_service.engine import TargetEngine
from target_service.sessions import Session

MAX_EOS_IDS = 64


@dataclass
class BeamSlot:
    """One beam of a session: its KV cache (``prefix_len`` tokens), pending token and scores."""

    cache: Any
    prefix_len: int
    pending_token: int
    score: float = 0.0  # cumulative warped log-prob (what beam sampling ranks by)
    logprob: float = 0.0  # cumulative raw target log-prob


def beam_slots(session: Session) -> list[BeamSlot]:
    """The session's beams; a fresh session becomes one beam (its prompt) on the first step."""
    if session.beams is None:
        session.beams = [BeamSlot(session.cache, session.prefix_len, session.pending_token)]
    return session.beams


def beam_step(
    engine: TargetEngine,
    session: Session,
    forest: BeamForest,
    params: BeamParams,
    eos_token_ids: Sequence[int],
    *,
    max_nodes_per_beam: int,
    max_context: int,
    return_hidden_states: bool = False,
    max_top_k: int = 1024,
    tokens_left: int = 0,
) -> BeamVerifyResult:
    """Verify ``forest`` for ``session`` and keep the new beams (all, or the best one if
    ``params.keep_best_only``); on any failure every beam's cache is left as it was."""
    if session.sampling.greedy:
        raise InvalidArgument("beam sampling needs temperature > 0 (set --temperature)")
    params.validate()
    slots = beam_slots(session)
    if not slots:
        raise InvalidArgument("this beam session has no running beam left (every beam finished)")
    forest.validate(len(slots), engine.vocab_size, max_nodes_per_beam * len(slots), max_top_k)
    if tokens_left < 0:
        raise InvalidArgument(f"tokens_left must be >= 0 (0 = no limit), got {tokens_left}")
    if len(eos_token_ids) > MAX_EOS_IDS or any(not 0 <= t < engine.vocab_size for t in eos_token_ids):
        raise InvalidArgument(f"eos_token_ids must be at most {MAX_EOS_IDS} ids in the vocabulary")
    trees, where = forest.trees(len(slots))
    for slot, tree in zip(slots, trees, strict=True):
        if slot.prefix_len + 1 + tree.size > max_context:
            raise InvalidArgument(
                f"context overflow: a beam of {slot.prefix_len + 1} tokens + {tree.size} draft nodes exceeds "
                f"max_context {max_context}"
            )
    start = time.perf_counter()
    items = [
        (slot.cache, slot.pending_token, torch.tensor(tree.parents, dtype=torch.long), tree.tokens)
        for slot, tree in zip(slots, trees, strict=True)
    ]
    try:
        logits = engine.score_trees(items)  # [1 + N_b, V] per beam, one pass
        rows = _Rows(logits, where, session.sampling)
        outcome = accept_forest(
            [s.score for s in slots],
            rows.warped,
            forest,
            params,
            eos_token_ids,
            engine.vocab_size,
            session.generator,
            tokens_left,
        )
        running = outcome.beams[:1] if params.keep_best_only else outcome.beams
        updates = [_update(b, forest, slots, rows) for b in running]
        finished = tuple(_update(b, forest, slots, rows) for b in outcome.finished)
        hidden = tuple(_hidden(engine, b, slots, where) for b in running) if return_hidden_states else ()
        session.beams = _fork_and_commit(engine, slots, running, updates, forest, where)
    except BaseException:
        for slot in slots:
            engine.truncate(slot.cache, slot.prefix_len)
        raise
    compute_s = time.perf_counter() - start
    if not session.beams:  # every beam finished: nothing runs on; the session keeps its first beam's prefix
        engine.truncate(slots[0].cache, slots[0].prefix_len)
    best = session.beams[0] if session.beams else slots[0]
    session.cache, session.prefix_len, session.pending_token = best.cache, best.prefix_len, best.pending_token
    session.kv_bytes = sum(engine.kv_bytes(s.cache) for s in session.beams)
    return BeamVerifyResult(
        tuple(updates),
        finished,
        outcome.widths,
        outcome.accepted,
        outcome.drafted,
        compute_s,
        session.kv_bytes,
        hidden,
    )


class _Rows:
    """Next-token distributions per node reference, from the per-beam logits of the pass."""

    def __init__(self, logits: list[torch.Tensor], where: list[tuple[int, int]], sampling: SamplingParams) -> None:
        self._logits = logits
        self._where = where
        self._sampling = sampling
        self._warped: dict[int, torch.Tensor] = {}

    def _row(self, ref: int) -> torch.Tensor:
        if ref < 0:
            return self._logits[-1 - ref][0]  # [V] after the beam's pending token
        beam, local = self._where[ref]
        return self._logits[beam][local + 1]  # [V] after node ref

    def warped(self, ref: int) -> torch.Tensor:
        """``[V]`` warped log-probabilities after ``ref`` (``-inf`` where warping removed a token)."""
        if ref not in self._warped:
            self._warped[ref] = torch.log(warp_probs(self._row(ref), self._sampling)).to(torch.float64)
        return self._warped[ref]

    def raw(self, ref: int, token: int) -> float:
        """The target's own log-probability of ``token`` after ``ref``."""
        return float(torch.log_softmax(self._row(ref).to(torch.float64), dim=-1)[token])


def _update(beam: OutBeam, forest: BeamForest, slots: list[BeamSlot], rows: _Rows) -> BeamUpdate:
    parent, path = forest_path(beam.parent, forest.parents)
    tokens = (*(forest.tokens[g] for g in path), beam.token)
    refs = (-1 - parent, *path)  # the row that predicted each new token
    logprob = slots[parent].logprob + sum(rows.raw(ref, tok) for ref, tok in zip(refs, tokens, strict=True))
    return BeamUpdate(parent, tokens, beam.score, logprob)


def _hidden(engine: TargetEngine, beam: OutBeam, slots: list[BeamSlot], where: list[tuple[int, int]]) -> bytes:
    """The final hidden state at the row that predicted ``beam``'s pending token (float16 bytes)."""
    parent = -1 - beam.parent if beam.parent < 0 else where[beam.parent][0]
    rows = engine.hidden_rows(slots[parent].cache)  # [1 + N_b, E] of this pass
    if rows is None:
        return b""
    return hidden_bytes(rows[0 if beam.parent < 0 else where[beam.parent][1] + 1])


def _fork_and_commit(
    engine: TargetEngine,
    slots: list[BeamSlot],
    running: Sequence[OutBeam],
    updates: Sequence[BeamUpdate],
    forest: BeamForest,
    where: list[tuple[int, int]],
) -> list[BeamSlot]:
    """New slots for ``running``: fork each input beam's cache once per extra child, commit paths."""
    plans = [forest_path(b.parent, forest.parents) for b in running]
    uses: dict[int, int] = {}
    for parent, _ in plans:
        uses[parent] = uses.get(parent, 0) + 1
    spare: dict[int, list[Any]] = {
        parent: [engine.copy_cache(slots[parent].cache) for _ in range(count - 1)] for parent, count in uses.items()
    }
    new: list[BeamSlot] = []
    for beam, update, (parent, path) in zip(running, updates, plans, strict=True):
        old = slots[parent]
        cache = spare[parent].pop() if spare[parent] else old.cache  # the last child takes the original
        keep_rows = [0, *(where[g][1] + 1 for g in path)]  # pending row + the path's rows in its tree
        engine.commit(cache, old.prefix_len, keep_rows)
        new.append(BeamSlot(cache, old.prefix_len + len(keep_rows), beam.token, beam.score, update.logprob))
    return new
