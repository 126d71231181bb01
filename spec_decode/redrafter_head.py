"""ReDrafter's recurrent draft head and its beam search (Zhang et al. 2024; docs/PAPERS.md §3).

The head drafts from the target's own last hidden state ``h`` (it has no transformer of its
own). Step ``j`` keeps a recurrent state::

    s_j = SiLU(W e(g_{j-1}) + U s_{j-1})        e: the target's embedding table (frozen)
    x   = [h ; s_j]                              then residual blocks x + SiLU(Linear(x))
    logits_j = LM_head(P x)                      the target's LM head (frozen), P: 2E -> E

so only ``W``, ``U``, the blocks and ``P`` are trained. ``s_0 = 0`` and ``g_0`` is the last
accepted token (the target's pending token). Optionally the LM head is restricted to a
frequent-token sub-vocabulary (``vocab_ids``), which makes each step cheaper and can only
lose drafts whose token is outside it.

:func:`beam_search` runs the head for ``length`` steps keeping ``width`` beams (top-k warped
log-probabilities, summed along the beam); :func:`pack_beams` merges the beams' shared
prefixes into one draft tree (ReDrafter's dynamic tree attention: fewer nodes, same beams).
:func:`best_nodes_tree` runs the same search but keeps, instead of the surviving beams'
prefixes, the ``max_nodes`` most probable nodes of every expansion it made (EAGLE-2's
selection over ReDrafter's search; docs/ALGORITHMS.md §12): siblings that the beams pruned
come back where they are likelier than the beams' deep tails. :func:`head_tree` picks one of
the two (``HEAD_TREES``). Either tree's nodes are point masses (the search is deterministic),
which the target's acceptance handles exactly for greedy and sampled requests alike
(docs/ALGORITHMS.md §4.2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from spec_decode.tree import merge_paths
from spec_decode.types import HEAD_TREES, DraftTree

DEFAULT_WIDTH = 10  # the reference code's beam shape (10, 4)
DEFAULT_LENGTH = 4
DEFAULT_TOP_K = 50


@dataclass(frozen=True)
class HeadConfig:
    hidden: int  # E: the target's hidden size (= its embedding width)
    vocab: int  # V: the target's vocabulary
    blocks: int = 2  # residual blocks on [h ; s]
    vocab_ids: tuple[int, ...] = ()  # optional sub-vocabulary of the LM head (empty = all V)

    def validate(self) -> HeadConfig:
        if self.hidden < 1 or self.vocab < 1 or self.blocks < 0:
            raise ValueError(f"bad head config {self}")
        if self.vocab_ids and not all(0 <= t < self.vocab for t in self.vocab_ids):
            raise ValueError("vocab_ids must be token ids of the target's vocabulary")
        return self


class ReDrafterHead(nn.Module):
    """The trainable head; the target's embedding and LM head are frozen buffers."""

    def __init__(self, config: HeadConfig, embedding: torch.Tensor, lm_head: torch.Tensor) -> None:
        super().__init__()
        config.validate()
        e = config.hidden
        if embedding.shape != (config.vocab, e) or lm_head.shape != (config.vocab, e):
            raise ValueError(
                f"embedding {tuple(embedding.shape)} and lm_head {tuple(lm_head.shape)} must both be "
                f"({config.vocab}, {e})"
            )
        self.config = config
        head = lm_head.detach()
        if config.vocab_ids:
            head = head[list(config.vocab_ids)]  # [V', E]
        self.embedding: torch.Tensor
        self.lm_head: torch.Tensor
        self.vocab_ids: torch.Tensor
        self.register_buffer("embedding", embedding.detach(), persistent=False)  # [V, E]
        self.register_buffer("lm_head", head, persistent=False)  # [V or V', E]
        self.register_buffer("vocab_ids", torch.tensor(config.vocab_ids, dtype=torch.long), persistent=False)
        self.w = nn.Linear(e, e)  # W e(g)
        self.u = nn.Linear(e, e, bias=False)  # U s
        blocks = [nn.Linear(2 * e, 2 * e) for _ in range(config.blocks)]
        for block in blocks:  # start as the identity map on [h ; s]
            nn.init.zeros_(block.weight)
            nn.init.zeros_(block.bias)
        self.blocks = nn.ModuleList(blocks)
        self.proj = nn.Linear(2 * e, e)  # P: into the LM head's input space
        self._logits_kernel: Callable[[torch.Tensor], torch.Tensor] | None = None

    def use_logits_kernel(self, kernel: Callable[[torch.Tensor], torch.Tensor] | None) -> ReDrafterHead:
        """Drafting computes ``x @ lm_head.T`` with ``kernel`` (``[B, E] -> [B, V']``, over this head's
        ``lm_head``), e.g. a CPU kernel that beats torch's matmul for a few beams; with autograd on
        (training) the plain matmul runs. None: always the matmul."""
        self._logits_kernel = kernel
        return self

    def initial_state(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, self.config.hidden, dtype=self.w.weight.dtype, device=self.w.weight.device)

    def step(
        self,
        hidden: torch.Tensor,  # [B, E] the target's last hidden state per beam
        state: torch.Tensor,  # [B, E] s_{j-1}
        token: torch.Tensor,  # [B] g_{j-1}
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One draft step: (logits over the head's vocabulary ``[B, V or V']``, s_j ``[B, E]``)."""
        state = F.silu(self.w(self.embedding[token]) + self.u(state))  # [B, E]
        x = torch.cat([hidden, state], dim=-1)  # [B, 2E]
        for block in self.blocks:
            x = x + F.silu(block(x))  # [B, 2E]
        z = self.proj(x)  # [B, E]
        kernel = self._logits_kernel
        logits = kernel(z) if kernel is not None and not torch.is_grad_enabled() else z @ self.lm_head.T  # [B, V']
        return logits, state

    def to_token_ids(self, index: torch.Tensor) -> torch.Tensor:
        """Map indices of the head's vocabulary to the target's token ids."""
        return self.vocab_ids[index] if self.config.vocab_ids else index

    def forward(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits for training: ``hidden [B, E]``, ``tokens [B, L+1]`` (g_0..g_L).

        Returns ``[B, L, V']``: step ``j`` predicts ``tokens[:, j + 1]`` from ``tokens[:, j]``.
        """
        state = self.initial_state(hidden.shape[0])
        out = []
        for j in range(tokens.shape[1] - 1):
            logits, state = self.step(hidden, state, tokens[:, j])
            out.append(logits)
        return torch.stack(out, dim=1)


@dataclass(frozen=True)
class Beams:
    tokens: tuple[tuple[int, ...], ...]  # width beams of length tokens, best first
    scores: tuple[float, ...]  # summed warped log-probabilities


def beam_shape(width: int, length: int, max_nodes: int) -> tuple[int, int]:
    """The beam shape worth searching when the packed tree may hold only ``max_nodes`` nodes.

    The first beam takes ``length`` nodes (at most ``max_nodes``) and every further one at least
    one more, so no more than ``max_nodes - length + 1`` beams can reach the tree. ``(0, 0)``: none.

    Example:
        >>> beam_shape(10, 4, 64), beam_shape(10, 4, 5), beam_shape(10, 4, 2), beam_shape(10, 4, 0)
        ((10, 4), (2, 4), (1, 2), (0, 0))
    """
    length = min(length, max_nodes)
    if length <= 0:
        return 0, 0
    return min(width, max_nodes - length + 1), length


@dataclass(frozen=True)
class _Candidates:
    """Every child a beam search scored, depth by depth (tensors on the head's device)."""

    score: torch.Tensor  # [M] summed top-k warped log-probabilities of each candidate's path
    parent: torch.Tensor  # [M] candidate index of its parent (-1: the pending token)
    token: torch.Tensor  # [M] target token ids
    beams: torch.Tensor  # [W'] candidate indices of the last depth's beams, best first


@torch.inference_mode()  # drafting only: no autograd graph (callers on the model thread may not disable it)
def _search(
    head: ReDrafterHead, hidden: torch.Tensor, last_token: int, width: int, length: int, top_k: int, per_beam: int
) -> _Candidates:
    """Beam search over the head, keeping the best ``min(top_k, per_beam)`` children of each beam at
    each depth as candidates; each depth's ``width`` beams are the best of them. With ``per_beam >=
    width`` those are beam search's own beams: no beam can put more than ``width`` children into the
    next depth."""
    if width < 1 or length < 1 or top_k < 1:
        raise ValueError(f"beam shape ({width}, {length}) and top_k {top_k} must be positive")
    dev = head.w.weight.device
    h = hidden.to(dev, head.w.weight.dtype)[None]  # [1, E]
    state = head.initial_state(1)  # [1, E]
    prev = torch.tensor([last_token], device=dev)  # [B]
    scores = torch.zeros(1, device=dev)  # [B] summed log-probabilities of the beams
    ids = torch.full((1,), -1, dtype=torch.long, device=dev)  # [B] each beam's candidate index (-1: root)
    cand_scores, cand_parents, cand_tokens = [], [], []
    count = 0
    for _ in range(length):
        logits, state = head.step(h.expand(ids.shape[0], -1), state, prev)  # [B, V'], [B, E]
        k = min(top_k, logits.shape[-1])
        top_logits, top_index = logits.topk(k, dim=-1)  # [B, k] sorted
        c = min(k, per_beam)
        logp = torch.log_softmax(top_logits.float(), dim=-1)[:, :c]  # [B, c] top-k warping: renormalised over k
        total = (scores[:, None] + logp).reshape(-1)  # [B c]
        token = head.to_token_ids(top_index[:, :c]).reshape(-1)  # [B c]
        cand_scores.append(total)
        cand_parents.append(ids.repeat_interleave(c))
        cand_tokens.append(token)
        keep = total.topk(min(width, total.shape[0])).indices  # [B'] the next depth's beams, best first
        ids, scores, state, prev = count + keep, total[keep], state[keep // c], token[keep]
        count += total.shape[0]
    return _Candidates(torch.cat(cand_scores), torch.cat(cand_parents), torch.cat(cand_tokens), ids)


def beam_search(
    head: ReDrafterHead,
    hidden: torch.Tensor,  # [E] the target's hidden state after the last accepted token
    last_token: int,
    width: int = DEFAULT_WIDTH,
    length: int = DEFAULT_LENGTH,
    top_k: int = DEFAULT_TOP_K,
) -> Beams:
    """The ``width`` best beams of ``length`` tokens under the head (top-k warped log-probs)."""
    found = _search(head, hidden, last_token, width, length, top_k, per_beam=width)
    parent, token = found.parent.tolist(), found.token.tolist()
    rows = []
    for i in found.beams.tolist():  # each beam back to the root: at most width x length steps
        row = []
        while i >= 0:
            row.append(token[i])
            i = parent[i]
        rows.append(tuple(reversed(row)))
    return Beams(tuple(rows), tuple(float(x) for x in found.score[found.beams].tolist()))


def pack_beams(beams: Beams, max_nodes: int) -> DraftTree:
    """Merge the beams' shared prefixes into one tree (best beams first, within ``max_nodes``)."""
    paths: list[list[int]] = []
    nodes: set[tuple[int, ...]] = set()
    for beam in beams.tokens:
        prefixes = [beam[: i + 1] for i in range(len(beam))]
        new = [p for p in prefixes if p not in nodes]
        if len(nodes) + len(new) > max_nodes:
            room = max_nodes - len(nodes)
            if room <= 0:
                break
            keep = len(beam) - len(new) + room  # the beam cut where the budget ends
            beam, new = beam[:keep], new[:room]
        nodes.update(new)
        paths.append(list(beam))
    return merge_paths(paths)


def best_nodes_tree(
    head: ReDrafterHead,
    hidden: torch.Tensor,  # [E] the target's hidden state after the last accepted token
    last_token: int,
    width: int,
    length: int,
    max_nodes: int,
    top_k: int = DEFAULT_TOP_K,
) -> DraftTree:
    """The ``max_nodes`` most probable nodes that a ``(width, length)`` beam search scores.

    The search is :func:`beam_search`'s (each depth keeps the ``width`` best children by summed
    top-k warped log-probability), but every child it scored stays a candidate: the best
    ``min(top_k, max_nodes)`` children of each beam at each depth (no node can keep more). The
    tree keeps the ``max_nodes`` candidates with the highest summed log-probability, ties to the
    shallower and earlier one. A child's score is its parent's plus a log-probability <= 0 (and
    float addition is monotonic), so the parent ranks first: the kept nodes are a tree, listed
    best first, parents before children, and cutting it to its first ``n`` nodes leaves the best
    ``n``-node tree of the candidates.
    """
    if max_nodes <= 0:
        _search(head, hidden, last_token, width, length, top_k, per_beam=1)  # the same ValueErrors
        return DraftTree()
    found = _search(head, hidden, last_token, width, length, top_k, per_beam=max(width, max_nodes))
    dev = found.score.device
    order = torch.sort(-found.score, stable=True).indices[:max_nodes]  # [N] best first; ties: shallower, earlier
    node_of = torch.full_like(found.parent, -1)  # [M] candidate -> tree node
    node_of[order] = torch.arange(order.shape[0], device=dev)
    chosen_parent = found.parent[order]  # [N]
    parents = torch.where(chosen_parent < 0, chosen_parent, node_of[chosen_parent.clamp(min=0)])  # [N]
    if bool((parents >= torch.arange(order.shape[0], device=dev)).any()):
        raise AssertionError("best_nodes_tree: a kept node ranks before its parent")  # the docstring's invariant
    return DraftTree(tuple(found.token[order].tolist()), tuple(parents.tolist()))


def head_tree(
    mode: str,
    head: ReDrafterHead,
    hidden: torch.Tensor,  # [E]
    last_token: int,
    width: int,
    length: int,
    max_nodes: int,
    top_k: int = DEFAULT_TOP_K,
) -> DraftTree:
    """The head's draft tree in ``mode`` (``HEAD_TREES``; "" = "nodes") within ``max_nodes``, from a
    ``(width, length)`` search cut to what the budget can hold (:func:`beam_shape`)."""
    if mode not in ("", *HEAD_TREES):
        raise ValueError(f"head tree {mode!r} is not one of {', '.join(HEAD_TREES)}")
    # the best-node tree holds as many nodes as the beams have tokens; both run the same search
    nodes = max_nodes if mode == "beams" else min(max_nodes, width * length)
    width, length = beam_shape(width, length, nodes)
    if length <= 0:
        return DraftTree()
    if mode == "beams":
        return pack_beams(beam_search(head, hidden, last_token, width, length, top_k), nodes)
    return best_nodes_tree(head, hidden, last_token, width, length, nodes, top_k)
