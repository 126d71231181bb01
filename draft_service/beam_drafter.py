"""Draft beams for DSBD: from a draft LM (one batched KV cache row per session beam) or a ReDrafter head.

The beams of a beam session always have the same length (every step extends each by the same
number of tokens), so the draft keeps them as one batch: ``cache`` holds ``n`` rows, row ``b``
being session beam ``b``'s whole context (its pending token included), and ``logits`` ``[n, V]``
the draft's next-token logits after each. A step's :class:`~spec_decode.beam_api.BeamUpdate`s
(the target's answer) pick rows (``index_select`` on the batch dimension: the cheap reorder)
and feed the new tokens as one ``[k, t]`` batch.

Drafting runs draft beam sampling for ``depth`` layers (:func:`spec_decode.forest.draft_forest`);
each layer below the first is one forward pass over the kept beams, on reordered copies, so the
session's cache is never touched by drafting. Each layer sends the sparse top-k q of every input
beam (never a vocabulary-sized vector).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache

from spec_decode.beam_api import BeamUpdate
from spec_decode.errors import InvalidArgument
from spec_decode.forest import BeamForest, draft_forest
from spec_decode.hidden import hidden_from_bytes
from spec_decode.redrafter_head import ReDrafterHead
from spec_decode.sampling import truncate_top_k, warp_probs
from spec_decode.types import SamplingParams, SparseProbs


class LMBeamDrafter:
    """One session's draft beams over a transformers causal LM (eval mode)."""

    def __init__(self, model: Any, device: torch.device, generator: torch.Generator) -> None:
        self.model = model
        self.device = device
        self.generator = generator
        self.cache: DynamicCache | None = None  # n rows: each session beam's whole context
        self.logits: torch.Tensor | None = None  # [n, V] draft logits after each beam
        self.length = 0  # tokens per row

    @property
    def num_beams(self) -> int:
        return 0 if self.logits is None else int(self.logits.shape[0])

    def restart(self, contexts: Sequence[Sequence[int]]) -> None:
        """Start over from the beams' whole contexts (all of one length)."""
        lengths = {len(c) for c in contexts}
        if not contexts or len(lengths) != 1 or 0 in lengths:
            raise InvalidArgument(f"beam contexts must be non-empty and of one length, got lengths {sorted(lengths)}")
        self.cache = DynamicCache()
        self.length = 0
        self.logits = self._feed(self.cache, [list(c) for c in contexts])

    def advance(self, updates: Sequence[BeamUpdate]) -> None:
        """Move to the target's new beams: row ``u.parent`` extended by ``u.tokens`` for each update."""
        if self.cache is None or self.logits is None:
            raise InvalidArgument("this draft beam session has not started (send the beam contexts)")
        if not updates:
            raise InvalidArgument("a beam step left no running beam to draft from")
        steps = {len(u.tokens) for u in updates}
        if len(steps) != 1 or 0 in steps:
            raise InvalidArgument(f"beam updates must add one non-zero number of tokens each, got {sorted(steps)}")
        parents = [u.parent for u in updates]
        if not all(0 <= p < self.num_beams for p in parents):
            raise InvalidArgument(f"beam update parents {parents} are not all in [0, {self.num_beams})")
        cache = _select_rows(self.cache, parents)
        self.logits = self._feed(cache, [list(u.tokens) for u in updates])
        self.cache = cache

    def draft(
        self,
        beam_scores: Sequence[float],
        depth: int,
        width: int,
        max_nodes: int,
        sampling: SamplingParams,
        top_k: int,
        eos_token_ids: Sequence[int],
    ) -> BeamForest:
        """A forest of ``depth`` layers of draft beam sampling from the session beams."""
        if self.cache is None or self.logits is None:
            raise InvalidArgument("this draft beam session has not started (send the beam contexts)")
        if len(beam_scores) != self.num_beams:
            raise InvalidArgument(f"got {len(beam_scores)} beam scores for {self.num_beams} beams")
        layer = _Layer(self, sampling, top_k)
        return draft_forest(beam_scores, layer.next_q, depth, width, eos_token_ids, self.generator, max_nodes)

    def _feed(self, cache: DynamicCache, rows: list[list[int]]) -> torch.Tensor:
        """Feed ``[k, t]`` tokens after the cached ones; ``[k, V]`` float32 logits at the last."""
        ids = torch.tensor(rows, dtype=torch.long, device=self.device)  # [k, t]
        with torch.inference_mode():
            out = self.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        self.length = cache.get_seq_length()
        return out.logits[:, -1].to(torch.float32)  # [k, V]


class _Layer:
    """The draft's state while it drafts one forest: the cache rows of the current layer's beams."""

    def __init__(self, drafter: LMBeamDrafter, sampling: SamplingParams, top_k: int) -> None:
        assert drafter.cache is not None and drafter.logits is not None
        self._drafter = drafter
        self._sampling = sampling
        self._top_k = top_k
        self._cache: DynamicCache = drafter.cache
        self._logits: torch.Tensor = drafter.logits  # [rows, V]
        self._row: dict[int, int] = {-1 - b: b for b in range(drafter.num_beams)}  # node ref -> cache row

    def next_q(self, refs: list[int], forest: BeamForest) -> list[SparseProbs]:
        if any(ref not in self._row for ref in refs):  # a deeper layer: feed the kept nodes' tokens
            parents = [self._row[forest.parents[ref]] for ref in refs]
            cache = _select_rows(self._cache, parents)  # a copy: the session's cache stays as it is
            ids = torch.tensor([[forest.tokens[ref]] for ref in refs], device=self._drafter.device)  # [k, 1]
            with torch.inference_mode():
                out = self._drafter.model(input_ids=ids, past_key_values=cache, use_cache=True)
            self._cache, self._logits = cache, out.logits[:, -1].to(torch.float32)  # [k, V]
            self._row = {ref: i for i, ref in enumerate(refs)}
        rows = self._logits[[self._row[ref] for ref in refs]]  # [k, V]
        probs = warp_probs(rows, self._sampling)  # [k, V]
        return [truncate_top_k(probs[i], self._top_k) for i in range(len(refs))]


def _select_rows(cache: DynamicCache, rows: list[int]) -> DynamicCache:
    """A new cache whose batch row ``i`` is ``cache``'s row ``rows[i]`` (beam reordering)."""
    out = DynamicCache()
    with torch.inference_mode():
        for index, layer in enumerate(cache.layers):
            keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
            if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor) or keys.dim() != 4:
                continue
            idx = torch.tensor(rows, dtype=torch.long, device=keys.device)
            out.update(keys.index_select(0, idx), values.index_select(0, idx), index)  # [k, H, L, D] each
    return out


class HeadBeamDrafter:
    """One session's draft beams from a ReDrafter head (:mod:`spec_decode.redrafter_head`).

    The head drafts from the target's hidden state at the row that predicted a beam's pending token
    (sent with every call, one per session beam) and a recurrent state started at zero, so the only
    state kept between calls is each beam's pending token. Every draft layer is one batched
    ``head.step`` over the layer's input beams; q is the request's warping of the head's logits,
    truncated to the top k and mapped to target token ids.
    """

    def __init__(self, head: ReDrafterHead, generator: torch.Generator) -> None:
        self.head = head
        self.generator = generator
        self.pending: list[int] = []  # each session beam's pending token

    @property
    def num_beams(self) -> int:
        return len(self.pending)

    def restart(self, contexts: Sequence[Sequence[int]]) -> None:
        if not contexts or any(not c for c in contexts):
            raise InvalidArgument("beam contexts must be non-empty")
        self.pending = [int(c[-1]) for c in contexts]

    def advance(self, updates: Sequence[BeamUpdate]) -> None:
        if not updates or any(not u.tokens for u in updates):
            raise InvalidArgument("a beam step left no running beam to draft from")
        self.pending = [int(u.tokens[-1]) for u in updates]

    def draft(
        self,
        hidden_states: Sequence[bytes],
        beam_scores: Sequence[float],
        depth: int,
        width: int,
        max_nodes: int,
        sampling: SamplingParams,
        top_k: int,
        eos_token_ids: Sequence[int],
    ) -> BeamForest:
        if len(hidden_states) != self.num_beams or len(beam_scores) != self.num_beams:
            raise InvalidArgument(
                f"got {len(hidden_states)} hidden states and {len(beam_scores)} scores for {self.num_beams} beams"
            )
        if any(not h for h in hidden_states):
            return BeamForest()  # no hidden state yet (e.g. a one-token prompt): this step is target-only
        weight = self.head.w.weight
        hidden = torch.stack([hidden_from_bytes(h) for h in hidden_states]).to(weight.device, weight.dtype)  # [n, E]
        if hidden.shape[1] != self.head.config.hidden:
            need = self.head.config.hidden
            raise InvalidArgument(f"hidden states have {hidden.shape[1]} values; the head needs {need}")
        layer = _HeadLayer(self, hidden, sampling, top_k)
        return draft_forest(beam_scores, layer.next_q, depth, width, eos_token_ids, self.generator, max_nodes)


class _HeadLayer:
    """The head's per-beam inputs while it drafts one forest: (root beam, recurrent state) per ref."""

    def __init__(self, drafter: HeadBeamDrafter, hidden: torch.Tensor, sampling: SamplingParams, top_k: int) -> None:
        self._head = drafter.head
        self._hidden = hidden  # [n, E]
        self._pending = drafter.pending
        self._sampling = sampling
        self._top_k = top_k
        self._state: dict[int, tuple[int, torch.Tensor]] = {}  # ref -> (session beam, s after the ref's token)

    def next_q(self, refs: list[int], forest: BeamForest) -> list[SparseProbs]:
        roots, states, tokens = [], [], []
        for ref in refs:
            if ref < 0:
                root, state, token = -1 - ref, self._head.initial_state(1)[0], self._pending[-1 - ref]
            else:
                root, state = self._state[forest.parents[ref]]
                token = forest.tokens[ref]
            roots.append(root)
            states.append(state)
            tokens.append(token)
        device = self._hidden.device
        with torch.inference_mode():
            logits, new = self._head.step(
                self._hidden[roots], torch.stack(states), torch.tensor(tokens, device=device)
            )  # [k, V'], [k, E]
        self._state = {ref: (root, new[i]) for i, (ref, root) in enumerate(zip(refs, roots, strict=True))}
        probs = warp_probs(logits.float(), self._sampling)  # [k, V'] over the head's vocabulary
        out = []
        for i in range(len(refs)):
            q = truncate_top_k(probs[i], self._top_k)
            ids = self._head.to_token_ids(torch.tensor(q.ids, dtype=torch.long, device=device)).tolist()
            out.append(SparseProbs(tuple(int(t) for t in ids), q.probs))
        return out
