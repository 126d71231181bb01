"""The beam seams: what the orchestrator asks the target and the draft service for beam decoding.

Beam methods (``beam-sample``, ``dsbd``) keep several beams per session. The target holds
one KV cache per beam (forked with ``engine.copy_cache``); every step the orchestrator sends
the draft forest (empty for ``beam-sample``), the target verifies it in one pass and answers
with the new beams as :class:`BeamUpdate` (which input beam each extends, and the tokens it
gained). The orchestrator forwards the same updates to the drafter, so neither side ever
resends a whole context. Both protocols are implemented in-process (``TargetVerifier``,
``DraftWorker``) and by the gRPC clients in ``orchestrator.transports``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from spec_decode.beams import BeamParams
from spec_decode.forest import BeamForest
from spec_decode.types import SamplingParams


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


@dataclass(frozen=True)
class BeamProposal:
    forest: BeamForest
    compute_s: float


class BeamTargetAPI(Protocol):
    """The target side of beam decoding (a session is created by ``TargetAPI.prefill``)."""

    def beam_verify(
        self, session_id: str, forest: BeamForest, params: BeamParams, eos_token_ids: Sequence[int]
    ) -> BeamVerifyResult:
        """Score the forest over all beams in one pass, run beam sampling over it, keep the new beams."""
        ...


class BeamDraftAPI(Protocol):
    """The draft side: a draft LM's beams, one batched cache row per session beam."""

    def propose_beams(
        self,
        session_id: str,
        contexts: Sequence[Sequence[int]],
        updates: Sequence[BeamUpdate],
        beam_scores: Sequence[float],
        depth: int,
        width: int,
        max_nodes: int,
        sampling: SamplingParams,
        draft_top_k: int = 0,
        eos_token_ids: Sequence[int] = (),
    ) -> BeamProposal:
        """Advance the session's beams and draft a forest of ``depth`` layers from them.

        ``contexts`` (each beam's whole token list) (re)starts the session; otherwise ``updates``
        (the target's last answer) move it on. An unknown session without contexts raises NotFound.
        """
        ...

    def release(self, session_id: str) -> bool: ...
