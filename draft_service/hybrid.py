"""Hybrid drafting (ReDrafter issue, part 7): phrase drafts and ReDrafter beams in ONE tree.

Phrase drafting (Ouroboros: prompt lookup lengthened by the shared phrase pool) is nearly free
and very good where the text repeats (extraction, summarization, code edits) but proposes
nothing elsewhere; the ReDrafter head always proposes, from the target's hidden state, but
its beams are short and less sure. The hybrid asks both every step:

1. the phrase drafter proposes first, within half of the node budget (all of it is left to
   the head when there is no match, so nothing is wasted on an empty phrase tree);
2. the head's beams fill the remaining budget;
3. both sets of root-to-node paths are merged into one tree (shared prefixes become one node),
   which the target verifies in one pass and accepts exactly (greedy or sampled) like any tree.

Feedback goes to both: the phrase drafter learns the target's corrections of *its own* nodes
(the hybrid maps its rows in the merged tree back to the phrase tree), and the head needs none.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from draft_service.ouroboros import OuroborosDrafter
from draft_service.redrafter import ReDrafterDrafter
from spec_decode.redrafter_head import DEFAULT_LENGTH
from spec_decode.tree import merge_paths, path_to
from spec_decode.types import DraftOptions, DraftTree, SamplingParams


def tree_paths(tree: DraftTree) -> list[list[int]]:
    """Every root-to-leaf token path of ``tree`` (leaves in node order)."""
    has_child = set(tree.parents)
    return [[tree.tokens[i] for i in path_to(leaf, tree.parents)] for leaf in range(tree.size) if leaf not in has_child]


def node_index(tree: DraftTree) -> dict[tuple[int, ...], int]:
    """Token path from the root -> node, for every node of ``tree``."""
    return {tuple(tree.tokens[i] for i in path_to(node, tree.parents)): node for node in range(tree.size)}


class HybridDrafter:
    """Phrase drafter + ReDrafter head, one merged tree per step (see the module docstring)."""

    def __init__(self, phrases: OuroborosDrafter, head: ReDrafterDrafter, head_length: int = DEFAULT_LENGTH) -> None:
        self.phrases = phrases
        self.head = head
        self.head_length = head_length
        self.last_tree: DraftTree = DraftTree((), ())
        self._phrase_rows: list[int] = []  # merged-tree node of each node of the phrase drafter's last tree
        self.last_phrase_nodes = 0  # nodes the phrase drafter contributed to the last tree (telemetry)

    def configure(self, options: DraftOptions) -> None:
        self.phrases.configure(options)
        self.head.configure(options)

    def set_hidden_state(self, hidden: torch.Tensor) -> None:
        self.head.set_hidden_state(hidden)  # [E]

    def reset(self) -> None:
        self.head.reset()

    def propose(
        self,
        context: Sequence[int],
        max_tokens: int,
        max_nodes: int,
        sampling: SamplingParams,
        generator: torch.Generator | None,
    ) -> DraftTree:
        phrase_budget = max_nodes // 2 if self.head.hidden is not None else max_nodes
        phrase_tree = self.phrases.propose(context, max_tokens, phrase_budget, sampling, generator)
        head_tree = self.head.propose(
            context, min(max_tokens, self.head_length), max_nodes - phrase_tree.size, sampling, generator
        )
        merged = merge_paths(tree_paths(phrase_tree) + tree_paths(head_tree))
        where = node_index(merged)
        self._phrase_rows = [where[path] for path in node_index(phrase_tree)]  # in phrase-tree node order
        self.last_phrase_nodes = phrase_tree.size
        self.last_tree = merged
        return merged

    def observe(self, num_draft: int, num_accepted: int, target_tokens: Sequence[int] = ()) -> None:
        """Hand the phrase drafter the target's argmax at the rows of its own nodes."""
        rows: list[int] = []
        if target_tokens and len(target_tokens) == 1 + self.last_tree.size:
            rows = [int(target_tokens[0]), *(int(target_tokens[node + 1]) for node in self._phrase_rows)]
        self.phrases.observe(num_draft, num_accepted, rows)
        self.head.observe(num_draft, num_accepted, target_tokens)
