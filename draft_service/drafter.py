"""The drafter interface, and the adaptive draft-length policy.

In the spirit of transformers' ``CandidateGenerator``: one drafter object per session,
``propose`` returns a draft tree for a context, ``observe`` hears how much of the last
draft the target accepted (and, optionally, the target's own token per tree row).
Drafters keep whatever state makes the next proposal cheap (an n-gram index, a KV cache,
a phrase pool) and check it against the context they are given, so a context that was
rolled back or replaced is always handled correctly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from spec_decode.types import DraftOptions, DraftTree, SamplingParams


class Drafter(Protocol):
    """Proposes draft trees for one session's growing (or rolled-back) context."""

    def configure(self, options: DraftOptions) -> None:
        """Apply per-request knobs; a zero field keeps the drafter's default."""
        ...

    def propose(
        self,
        context: Sequence[int],
        max_tokens: int,
        max_nodes: int,
        sampling: SamplingParams,
        generator: torch.Generator | None,
    ) -> DraftTree:
        """A tree of at most ``max_nodes`` nodes and depth ``max_tokens`` continuing ``context``.

        ``context`` is the whole token history, its last token the session's pending token
        (the tree's root). ``generator`` drives any sampling (CPU generator).
        """
        ...

    def observe(self, num_draft: int, num_accepted: int, target_tokens: Sequence[int] = ()) -> None:
        """The target accepted ``num_accepted`` of the ``num_draft`` tokens last proposed.

        ``target_tokens``, when the orchestrator asked the target for them, is the target's argmax
        per row of that verify pass: row 0 = the pending token (the tree's root), row ``i + 1`` =
        node ``i`` of the tree this drafter proposed last (Ouroboros learns phrases from it).
        Drafters that do not use it ignore it.
        """
        ...


@dataclass
class AdaptiveLength:
    """Draft length policy of HF assisted generation: +2 after full acceptance, -1 otherwise.

    Example:
        >>> policy = AdaptiveLength(length=5, max_length=8)
        >>> policy.update(num_draft=5, num_accepted=5), policy.update(5, 5), policy.update(8, 3)
        (7, 8, 7)
    """

    length: int
    max_length: int
    grow: int = 2
    shrink: int = 1

    def __post_init__(self) -> None:
        self.length = self._clamp(self.length)

    def _clamp(self, length: int) -> int:
        return max(1, min(self.max_length, length))

    def update(self, num_draft: int, num_accepted: int) -> int:
        """Next draft length. An empty draft (``num_draft == 0``) says nothing: unchanged."""
        if num_draft > 0:
            full = num_accepted >= num_draft
            self.length = self._clamp(self.length + (self.grow if full else -self.shrink))
        return self.length
