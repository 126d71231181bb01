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
from typing import Protocol

from spec_decode.beam_types import BeamForest, BeamParams, BeamProposal, BeamUpdate, BeamVerifyResult
from spec_decode.types import SamplingParams

__all__ = ["BeamDraftAPI", "BeamProposal", "BeamTargetAPI", "BeamUpdate", "BeamVerifyResult"]


class BeamTargetAPI(Protocol):
    """The target side of beam decoding (a session is created by ``TargetAPI.prefill``)."""

    def beam_verify(
        self,
        session_id: str,
        forest: BeamForest,
        params: BeamParams,
        eos_token_ids: Sequence[int],
        return_hidden_states: bool = False,
        tokens_left: int = 0,
    ) -> BeamVerifyResult:
        """Score the forest over all beams in one pass, run beam sampling over it, keep the new beams.

        ``tokens_left`` (0 = no limit): tokens the request may still add; the layer that reaches it
        ends the generation the way transformers' ``max_new_tokens`` does (no beam runs on).

        With ``return_hidden_states`` the result carries, per running beam, the target's final hidden
        state at the row that predicted its pending token (float16 bytes), for draft heads.
        """
        ...


class BeamDraftAPI(Protocol):
    """The draft side: draft beams from a draft LM (``drafter="model"``: one batched cache row per
    session beam) or a ReDrafter head (``drafter="redrafter"``: from each beam's target hidden state)."""

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
        drafter: str = "model",
        hidden_states: Sequence[bytes] = (),
    ) -> BeamProposal:
        """Advance the session's beams and draft a forest of ``depth`` layers from them.

        ``contexts`` (each beam's whole token list) (re)starts the session; otherwise ``updates``
        (the target's last answer) move it on. An unknown session without contexts raises NotFound.
        ``hidden_states`` (one per session beam, float16 bytes) feed the ``redrafter`` source.
        """
        ...

    def release(self, session_id: str) -> bool: ...
