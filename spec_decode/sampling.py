"""Turning logits into probabilities and tokens (temperature, top-k, top-p).

The same warping is applied to the target's p and the draft's q; acceptance rules then
see already-warped distributions.
"""

from __future__ import annotations

import torch

from spec_decode.types import SamplingParams, SparseProbs


def warp_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Probabilities after temperature, top-k and top-p.

    Args:
        logits: ``[..., V]`` any float dtype.
        params: must not be greedy (temperature > 0).

    Returns:
        ``[..., V]`` float32 probabilities; rows sum to 1.
    """
    if params.greedy:
        raise ValueError("warp_probs needs temperature > 0; greedy decoding uses argmax")
    scores = logits.to(torch.float32) / params.temperature
    vocab = scores.shape[-1]
    if 0 < params.top_k < vocab:
        kth = torch.topk(scores, params.top_k, dim=-1).values[..., -1:]  # [..., 1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
        sorted_probs = torch.softmax(sorted_scores, dim=-1)
        # Drop a token when the tokens ranked strictly before it already reach top_p.
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        drop_sorted = before >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        scores = scores.masked_fill(drop, float("-inf"))
    return torch.softmax(scores, dim=-1)


def truncate_top_k(probs: torch.Tensor, k: int) -> SparseProbs:
    """The top-``k`` part of ``probs`` (``[V]``), renormalised: a draft samples from this."""
    k = min(k, probs.shape[-1])
    values, ids = torch.topk(probs, k)
    keep = values > 0
    values, ids = values[keep], ids[keep]
    values = values / values.sum()
    return SparseProbs(tuple(int(i) for i in ids.tolist()), tuple(float(v) for v in values.tolist()))


def sample_sparse(q: SparseProbs, generator: torch.Generator | None) -> int:
    """One token drawn from a sparse distribution."""
    probs = torch.tensor(q.probs, dtype=torch.float64)
    idx = int(torch.multinomial(probs, 1, generator=generator).item())
    return q.ids[idx]


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> int:
    """One token drawn from ``probs`` (``[V]``)."""
    return int(torch.multinomial(probs, 1, generator=generator).item())


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded with ``seed``, or from fresh entropy when ``seed`` is None."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(seed)
    return gen
