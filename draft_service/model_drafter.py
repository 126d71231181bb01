"""A draft language model with its own KV cache per session, drafting one chain.

Each propose call reconciles the cache with the new context: the cache holds the tokens
of ``self.cached``; the longest common prefix with the new context is kept (the cache is
cropped to it: rejected draft tokens go), the rest of the context is fed in one forward
pass, then the chain is drafted one token per forward pass. Greedy drafts take the argmax;
sampled drafts draw from q = warp(logits) truncated to its top ``draft_top_k`` tokens and
attach that sparse q to the node (see docs/ALGORITHMS.md and PAPERS.md §0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache

from spec_decode.errors import InvalidArgument
from spec_decode.sampling import sample_sparse, truncate_top_k, warp_probs
from spec_decode.tokens import common_prefix_len
from spec_decode.types import EMPTY_TREE, DraftOptions, DraftTree, SamplingParams, SparseProbs

DEFAULT_DRAFT_TOP_K = 16
MAX_DRAFT_TOP_K = 1024


class ModelDrafter:
    """Drafts a chain with a causal LM (a transformers ``PreTrainedModel`` in eval mode)."""

    def __init__(self, model: Any, device: torch.device, default_top_k: int = DEFAULT_DRAFT_TOP_K) -> None:
        self.model = model
        self.device = device
        self.default_top_k = default_top_k
        self.draft_top_k = default_top_k
        self.cached: list[int] = []  # the tokens whose keys/values the cache holds
        self._cache: DynamicCache | None = None

    def configure(self, options: DraftOptions) -> None:
        top_k = options.draft_top_k or self.default_top_k
        if not 1 <= top_k <= MAX_DRAFT_TOP_K:
            raise InvalidArgument(f"draft_top_k must be in [0, {MAX_DRAFT_TOP_K}] (0 = default), got {top_k}")
        self.draft_top_k = top_k

    def reset(self) -> None:
        """Forget the KV cache (frees its memory)."""
        self.cached = []
        self._cache = None

    def propose(
        self,
        context: Sequence[int],
        max_tokens: int,
        max_nodes: int,
        sampling: SamplingParams,
        generator: torch.Generator | None,
    ) -> DraftTree:
        """A chain of ``min(max_tokens, max_nodes)`` draft tokens continuing ``context``."""
        length = min(max_tokens, max_nodes)
        if length <= 0 or not context:
            return EMPTY_TREE
        with torch.inference_mode():
            if sampling.greedy:
                return DraftTree.chain(self._draft_greedy(context, length))
            tokens, qs = self._draft_sampled(context, length, sampling, generator)
            return DraftTree.chain(tokens, qs)

    def observe(self, num_draft: int, num_accepted: int, target_tokens: Sequence[int] = ()) -> None:
        """Nothing to adapt: the next context tells the cache what was accepted."""

    def _draft_greedy(self, context: Sequence[int], length: int) -> list[int]:
        logits = self._catch_up(context)  # [V]
        tokens: list[int] = []
        for i in range(length):
            tokens.append(int(torch.argmax(logits)))
            if i + 1 < length:  # the last draft token need not enter the cache
                logits = self._forward([tokens[-1]])
        return tokens

    def _draft_sampled(
        self, context: Sequence[int], length: int, sampling: SamplingParams, generator: torch.Generator | None
    ) -> tuple[list[int], tuple[SparseProbs, ...]]:
        logits = self._catch_up(context)  # [V]
        tokens: list[int] = []
        qs: list[SparseProbs] = []
        for i in range(length):
            q = truncate_top_k(warp_probs(logits, sampling), self.draft_top_k)  # k ids and probs
            tokens.append(sample_sparse(q, generator))
            qs.append(q)
            if i + 1 < length:
                logits = self._forward([tokens[-1]])
        return tokens, tuple(qs)

    def _catch_up(self, context: Sequence[int]) -> torch.Tensor:
        """Crop the cache to its common prefix with ``context``, feed the rest: ``[V]`` logits.

        At least the context's last token is fed, since its logits predict the first draft.
        """
        keep = min(common_prefix_len(self.cached, context), len(context) - 1)
        self._crop(keep)
        return self._forward(context[self.cache_len :])

    @property
    def cache_len(self) -> int:
        return len(self.cached)

    def _crop(self, keep: int) -> None:
        drop = len(self.cached) - keep
        if drop <= 0:
            return
        if keep == 0 or self._cache is None:
            self.reset()
            return
        try:
            self._cache.crop(-drop)  # transformers 5: a negative count removes that many tokens
        except (RuntimeError, ValueError):  # e.g. a sliding-window layer that cannot roll back
            self.reset()
            return
        if self._cache.get_seq_length() != keep:
            self.reset()
            return
        del self.cached[keep:]

    def _forward(self, tokens: Sequence[int]) -> torch.Tensor:
        """Feed ``tokens`` after the cached ones; ``[V]`` float32 logits at the last one."""
        if self._cache is None:
            self._cache = DynamicCache(config=self.model.config)
        input_ids = torch.tensor([list(tokens)], dtype=torch.long, device=self.device)  # [1, T]
        try:
            cache = self._cache
            out = self.model(input_ids=input_ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        except BaseException:
            self.reset()  # the cache may hold part of this pass
            raise
        self.cached.extend(int(t) for t in tokens)
        return out.logits[0, -1].to(torch.float32)  # [V]
