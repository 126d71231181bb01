"""The two service interfaces the orchestrator talks to.

Each is implemented twice with the same semantics: by the domain object itself (in-process,
``target_service.verifier.TargetVerifier`` / ``draft_service.service.DraftWorker``) and by
a gRPC client (``orchestrator.transports``). Errors are :mod:`spec_decode.errors` on both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from spec_decode.types import (
    ColocatedDraft,
    DraftInfo,
    DraftOptions,
    DraftTree,
    PrefillResult,
    ProposeResult,
    SamplingParams,
    TargetInfo,
    VerifyResult,
)


class TargetAPI(Protocol):
    """Holds per-session KV caches of the target model; verifies draft trees."""

    def info(self) -> TargetInfo: ...

    def prefill(
        self,
        session_id: str,
        prompt_tokens: Sequence[int],
        sampling: SamplingParams,
        return_hidden_state: bool = False,
        colocated_draft: ColocatedDraft | None = None,
    ) -> PrefillResult:
        """Create ``session_id`` (NOT a duplicate) and feed the prompt; its last token stays pending.

        With ``colocated_draft`` (a target with a co-located ReDrafter head) the result carries the first tree.
        """
        ...

    def verify(
        self,
        session_id: str,
        tree: DraftTree,
        return_target_tokens: bool = False,
        return_hidden_state: bool = False,
        colocated_draft: ColocatedDraft | None = None,
    ) -> VerifyResult:
        """Score ``tree`` in one forward pass, accept, commit the accepted path + pending token.

        With ``return_target_tokens`` the result also carries the target's argmax per row; with
        ``return_hidden_state`` the final hidden state at the last accepted row (float16 bytes);
        with ``colocated_draft`` the co-located head's tree for the next step (``next_tree``).
        """
        ...

    def release(self, session_id: str) -> bool:
        """Free the session; False when it did not exist."""
        ...


class DraftAPI(Protocol):
    """Proposes draft trees; keeps per-session drafter state (token history, draft KV)."""

    def info(self) -> DraftInfo: ...

    def propose(
        self,
        session_id: str,
        drafter: str,
        offset: int,
        tokens: Sequence[int],
        max_nodes: int,
        options: DraftOptions,
        sampling: SamplingParams,
        hidden_state: bytes = b"",
        max_depth: int = 0,
    ) -> ProposeResult:
        """Append ``tokens`` at ``offset`` to the session's history and propose a tree.

        ``offset == 0`` (re)starts the session with ``tokens`` as the whole context; a
        later call sends only the tokens emitted since the previous call. An offset that
        does not match the session's length raises FailedPrecondition (the caller then
        resends the whole context with offset 0); an unknown session with offset > 0
        raises NotFound. ``max_depth`` (0: none) caps the tree's depth below the draft length:
        the tokens the request has left minus the one the target adds.
        """
        ...

    def observe(self, session_id: str, num_draft: int, num_accepted: int, target_tokens: Sequence[int] = ()) -> int:
        """Report acceptance of the last draft; returns the draft length used next.

        ``target_tokens`` is the target's argmax per row of the last verify pass (row 0 =
        pending token, row i + 1 = node i), when the orchestrator asked for it.
        """
        ...

    def release(self, session_id: str) -> bool: ...
