"""The ``redrafter`` drafter: beam search over a trained ReDrafter head, drafted as one tree.

The head (:mod:`spec_decode.redrafter_head`, loaded from a checkpoint by
:mod:`spec_decode.redrafter_checkpoint`) drafts from the target's final hidden state at the
last accepted position, which the orchestrator asks the target for with every verify and
forwards with the next propose (float16 bytes, ``2 E`` of them). Without a hidden state (the
first step of a session, before any prefill result arrived) it proposes nothing. The tree is
the search's most probable nodes (``head_tree`` "nodes", the default) or its packed beams
("beams", the reference's tree): :func:`spec_decode.redrafter_head.head_tree`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from spec_decode.errors import InvalidArgument
from spec_decode.redrafter_head import (
    DEFAULT_LENGTH,
    DEFAULT_TOP_K,
    DEFAULT_WIDTH,
    ReDrafterHead,
    head_tree,
)
from spec_decode.types import EMPTY_TREE, HEAD_TREES, DraftOptions, DraftTree, SamplingParams

MAX_WIDTH = 64


class ReDrafterDrafter:
    """One session's drafter: the shared head, plus the latest hidden state of the target."""

    def __init__(self, head: ReDrafterHead) -> None:
        self.head = head
        self.width, self.top_k = DEFAULT_WIDTH, DEFAULT_TOP_K
        self.tree = ""  # HEAD_TREES ("" = "nodes")
        self.hidden: torch.Tensor | None = None  # [E]

    def configure(self, options: DraftOptions) -> None:
        width = options.num_branches or DEFAULT_WIDTH
        if not 1 <= width <= MAX_WIDTH:
            raise InvalidArgument(f"redrafter beam width (num_branches) must be in [1, {MAX_WIDTH}], got {width}")
        if options.head_tree not in ("", *HEAD_TREES):
            raise InvalidArgument(
                f"head_tree must be one of {', '.join(HEAD_TREES)} (or empty), got {options.head_tree!r}"
            )
        self.width = width
        self.top_k = options.draft_top_k or DEFAULT_TOP_K
        self.tree = options.head_tree

    def set_hidden_state(self, hidden: torch.Tensor) -> None:
        if hidden.shape != (self.head.config.hidden,):
            raise InvalidArgument(
                f"hidden state has {hidden.numel()} values; the ReDrafter head needs {self.head.config.hidden}"
            )
        self.hidden = hidden.to(device=self.head.embedding.device, dtype=self.head.embedding.dtype)  # [E]

    def reset(self) -> None:
        self.hidden = None

    def propose(
        self,
        context: Sequence[int],
        max_tokens: int,
        max_nodes: int,
        sampling: SamplingParams,
        generator: torch.Generator | None,
    ) -> DraftTree:
        if self.hidden is None or max_nodes <= 0 or not context:
            return EMPTY_TREE
        # a small node budget (the orchestrator's tree budget) searches no more than it can hold
        return head_tree(
            self.tree, self.head, self.hidden, int(context[-1]), self.width, max_tokens or DEFAULT_LENGTH,
            max_nodes, self.top_k,
        )  # fmt: skip

    def observe(self, num_draft: int, num_accepted: int, target_tokens: Sequence[int] = ()) -> None:
        """Nothing to learn online: the head is trained offline."""
