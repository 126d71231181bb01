"""The target model's tree engine: prefill, one forward pass over a draft tree, KV commit.

Conventions (shared with :mod:`spec_decode.tree`): a session's KV cache holds its
*committed* tokens, ``prefix_len`` of them; the last emitted token is *pending* (not in
the cache). A tree pass feeds ``1 + N`` tokens: row 0 is the pending token at position
``prefix_len``, row ``i + 1`` is tree node ``i`` at position ``prefix_len + depth(i)``.
After the pass the cache holds ``prefix_len + 1 + N`` entries in row order;
:meth:`TreeEngine.commit` keeps the prefix plus the chosen rows and drops the rest.

Custom masks: transformers 5.x passes a 4D ``attention_mask`` through unchanged
(``masking_utils._preprocess_mask_arguments``). The eager attention *adds* the mask to
the scores, so a bool mask is silently wrong there; SDPA accepts bool or additive float.
We therefore build an additive float mask in the model's dtype, shape ``[1, 1, Q, KV]``,
0 where attention is allowed and ``finfo(dtype).min`` elsewhere, which both accept.
Flash-attention and flex kernels cannot take such a mask, so the engine switches the
model to SDPA.

The cache is a transformers ``DynamicCache`` built without a config, i.e. full-attention
layers whose tensors are ``[1, kv_heads, seq, head_dim]``. For sliding-window models the
usable context is capped at the window (see :attr:`TreeEngine.max_positions`), so full
attention equals the model's own.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from transformers import DynamicCache

from spec_decode.errors import InvalidArgument
from spec_decode.tree import tree_pass_inputs

log = logging.getLogger(__name__)

_MASKABLE_ATTENTION = ("sdpa", "eager")
ENGINE_KINDS = ("auto", "native", "hf")
CUDA_GRAPH_MODES = ("auto", "on", "off")


class TargetEngine(Protocol):
    """What the verifier needs from an engine; :class:`TreeEngine` and ``NativeEngine`` provide it.

    ``cache`` objects are engine-specific and opaque to callers.
    """

    kind: str
    device: torch.device
    dtype: torch.dtype
    vocab_size: int
    max_positions: int

    def new_cache(self) -> Any: ...
    def copy_cache(self, cache: Any) -> Any: ...
    def cache_len(self, cache: Any) -> int: ...
    def kv_bytes(self, cache: Any) -> int: ...
    def truncate(self, cache: Any, length: int) -> None: ...
    def hidden_rows(self, cache: Any) -> torch.Tensor | None: ...
    def prefill(self, cache: Any, tokens: Sequence[int]) -> int: ...
    def score_tree(
        self, cache: Any, pending_token: int, parents: torch.Tensor, tokens: Sequence[int]
    ) -> torch.Tensor: ...
    def score_trees(
        self, items: Sequence[tuple[Any, int, torch.Tensor, Sequence[int]]], argmax_only: Sequence[bool] = ()
    ) -> list[torch.Tensor]: ...
    def commit(self, cache: Any, prefix_len: int, keep_rows: Sequence[int]) -> None: ...


def build_engine(
    model: Any,
    kind: str | None = "auto",
    weight_format: str | None = None,
    max_context: int | None = None,
    *,
    cuda_graphs: str = "auto",
    argmax_screen: bool = True,
) -> TargetEngine:
    """The engine for ``model``: ``native`` (specd's own Llama-family forward), ``hf`` (transformers
    forward with a tree mask), or ``auto`` (native when the architecture is supported, else hf).

    ``cuda_graphs`` (native engine): ``auto``/``on`` replay one-session passes as CUDA graphs
    when the model is on a CUDA device (:mod:`target_service.static_pass`), ``off`` never.
    ``argmax_screen`` (native engine, ``q8`` LM head): greedy rows' exact argmax from the int8
    screen (:class:`specd_kernels.q8.Q8ArgmaxScreen`) instead of the full LM head.
    """
    if cuda_graphs not in CUDA_GRAPH_MODES:
        raise InvalidArgument(f"cuda_graphs must be one of {', '.join(CUDA_GRAPH_MODES)}, got {cuda_graphs!r}")
    from target_service.llama_engine import NativeEngine, UnsupportedModel, check_supported

    kind = kind or "auto"
    if kind not in ENGINE_KINDS:
        raise InvalidArgument(f"unknown engine {kind!r}; use one of {', '.join(ENGINE_KINDS)}")
    if kind == "hf":
        if weight_format not in (None, "auto", "dense"):
            raise InvalidArgument(f"weight format {weight_format!r} needs the native engine")
        return TreeEngine(model)
    try:
        check_supported(model)
    except UnsupportedModel as exc:
        if kind == "native":
            raise InvalidArgument(f"the native engine cannot run this model: {exc}") from exc
        log.info("native engine unsupported (%s); using the transformers engine", exc)
        return TreeEngine(model)
    on_cuda = next(model.parameters()).device.type == "cuda"
    if cuda_graphs == "on" and not on_cuda:
        raise InvalidArgument("--cuda-graphs on needs the target on a CUDA device")
    static = "graphs" if on_cuda and cuda_graphs != "off" else "off"
    return NativeEngine(model, weight_format, max_context, static=static, screen=argmax_screen)


class TreeEngine:
    """Wraps a Hugging Face causal LM; every forward pass runs under one lock.

    The engine is stateless apart from the model: callers own the caches (one per
    session) and pass them in. Methods never re-run committed tokens.
    """

    kind = "hf"

    def __init__(self, model: Any) -> None:
        self.model = model
        if model.config._attn_implementation not in _MASKABLE_ATTENTION:
            model.set_attn_implementation("sdpa")
        self._lock = threading.Lock()
        param = next(model.parameters())
        self.device: torch.device = param.device
        self.dtype: torch.dtype = param.dtype
        self.vocab_size: int = _logits_size(model)
        self.max_positions: int = _max_positions(model.config)

    # ---- caches -------------------------------------------------------------------

    def new_cache(self) -> DynamicCache:
        """An empty per-session KV cache."""
        return DynamicCache()

    def copy_cache(self, cache: DynamicCache) -> DynamicCache:
        """An independent copy of ``cache`` (a forked beam): same tokens, its own tensors."""
        copy = DynamicCache()
        with torch.inference_mode():
            for index, layer in enumerate(_layers(cache)):
                copy.update(layer.keys.clone(), layer.values.clone(), index)  # [1, H_kv, P, D] each
        hidden = cache.__dict__.get("specd_hidden")
        if hidden is not None:
            copy.__dict__["specd_hidden"] = hidden
        return copy

    @staticmethod
    def cache_len(cache: DynamicCache) -> int:
        """Tokens held in ``cache``."""
        return int(cache.get_seq_length())

    @staticmethod
    def kv_bytes(cache: DynamicCache) -> int:
        """Bytes held by the key and value tensors of every layer."""
        total = 0
        for layer in cache.layers:
            for t in (getattr(layer, "keys", None), getattr(layer, "values", None)):
                if isinstance(t, torch.Tensor):
                    total += t.numel() * t.element_size()
        return total

    @staticmethod
    def hidden_rows(cache: DynamicCache) -> torch.Tensor | None:
        """Final normed hidden states of the cache's last pass: ``[Q, E]`` (prefill: its last row)."""
        hidden: torch.Tensor | None = cache.__dict__.get("specd_hidden")
        return hidden

    def truncate(self, cache: DynamicCache, length: int) -> None:
        """Drop every cache entry at sequence index ``>= length`` (undo of a failed pass)."""
        with torch.inference_mode():
            for layer in _layers(cache):
                if layer.keys.shape[-2] > length:
                    layer.keys = layer.keys[..., :length, :]  # [1, H_kv, length, D]
                    layer.values = layer.values[..., :length, :]  # [1, H_kv, length, D]

    # ---- passes -------------------------------------------------------------------

    def prefill(self, cache: DynamicCache, tokens: Sequence[int]) -> int:
        """Feed ``tokens[:-1]`` into an empty ``cache``; return ``tokens[-1]``, the pending token.

        A one-token prompt feeds nothing (the cache stays empty).
        """
        if not tokens:
            raise ValueError("prefill needs at least one token")
        if self.cache_len(cache):
            raise ValueError("prefill needs an empty cache")
        if len(tokens) > 1:
            ids = torch.tensor([list(tokens[:-1])], dtype=torch.long, device=self.device)  # [1, L-1]
            with self._lock, torch.inference_mode():
                try:
                    out = self.model(
                        input_ids=ids,
                        past_key_values=cache,
                        use_cache=True,
                        logits_to_keep=1,
                        output_hidden_states=True,
                    )
                except BaseException:
                    self.truncate(cache, 0)
                    raise
                cache.__dict__["specd_hidden"] = out.hidden_states[-1][0, -1:]  # [1, E] final normed state
        return int(tokens[-1])

    def score_tree(
        self,
        cache: DynamicCache,
        pending_token: int,
        parents: torch.Tensor,  # [N] long, parent node per node, -1 = the pending token
        tokens: Sequence[int],  # [N] token per tree node
    ) -> torch.Tensor:
        """One forward pass over ``[pending] + tree``; returns logits ``[1 + N, V]``.

        Row 0 holds the logits after the pending token, row ``i + 1`` those after node
        ``i`` (i.e. the target's scores for node ``i``'s children). On return the cache
        holds ``prefix_len + 1 + N`` entries, in row order; follow with :meth:`commit`.
        If the pass fails the cache is restored to ``prefix_len`` entries.
        """
        prefix_len = self.cache_len(cache)
        n = len(tokens)
        if parents.shape != (n,):
            raise ValueError(f"parents has shape {tuple(parents.shape)}; expected ({n},)")
        ids = torch.tensor([[pending_token, *tokens]], dtype=torch.long, device=self.device)  # [1, 1+N]
        allowed, positions = tree_pass_inputs(parents.to(self.device), prefix_len)  # [1+N, P+1+N], [1+N]
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=self.device)  # [1+N, P+1+N]
        mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        with self._lock, torch.inference_mode():
            try:
                out = self.model(
                    input_ids=ids,
                    attention_mask=mask[None, None],  # [1, 1, 1+N, P+1+N] additive
                    position_ids=positions[None],  # [1, 1+N]
                    past_key_values=cache,
                    use_cache=True,
                    output_hidden_states=True,
                )
            except BaseException:
                self.truncate(cache, prefix_len)
                raise
        cache.__dict__["specd_hidden"] = out.hidden_states[-1][0]  # [1+N, E] final normed states
        logits: torch.Tensor = out.logits[0]  # [1+N, V]
        return logits

    def score_trees(
        self, items: Sequence[tuple[DynamicCache, int, torch.Tensor, Sequence[int]]], argmax_only: Sequence[bool] = ()
    ) -> list[torch.Tensor]:
        """Several sessions' trees, one after another (this engine does not batch sessions); an item
        flagged in ``argmax_only`` gets its rows' argmax ``[1 + N]`` instead of logits ``[1 + N, V]``."""
        if argmax_only and len(argmax_only) != len(items):
            raise ValueError(f"argmax_only has {len(argmax_only)} flags for {len(items)} trees")
        out = [self.score_tree(*item) for item in items]
        return [o.argmax(dim=-1) if argmax_only and argmax_only[i] else o for i, o in enumerate(out)]

    def commit(self, cache: DynamicCache, prefix_len: int, keep_rows: Sequence[int]) -> None:
        """Keep the prefix and the pass rows ``keep_rows`` (increasing), drop every other row.

        ``keep_rows`` indexes the rows of the last :meth:`score_tree` pass (0 = pending,
        ``i + 1`` = node ``i``): for an accepted path ``[a, b, ...]`` pass
        ``[0, a + 1, b + 1, ...]``. Afterwards the cache equals the cache of feeding the
        prefix, the pending token and the path's tokens one by one: the kept rows were
        computed at their own positions attending to exactly their ancestors.
        """
        total = self.cache_len(cache)
        rows = list(keep_rows)
        if any(b <= a for a, b in itertools.pairwise(rows)):
            raise ValueError(f"keep_rows must increase, got {rows}")
        if rows and not (rows[0] >= 0 and prefix_len + rows[-1] < total):
            raise ValueError(f"keep_rows {rows} out of range for {total - prefix_len} pass rows")
        new_len = prefix_len + len(rows)
        with torch.inference_mode():
            if rows == list(range(len(rows))):  # a plain chain (or nothing): slicing suffices
                self.truncate(cache, new_len)
                return
            keep = torch.tensor(rows, dtype=torch.long, device=self.device) + prefix_len  # [K]
            index = torch.cat([torch.arange(prefix_len, device=self.device), keep])  # [P+K]
            for layer in _layers(cache):
                idx = index.to(layer.keys.device)  # [P+K]
                layer.keys = layer.keys.index_select(-2, idx)  # [1, H_kv, P+K, D]
                layer.values = layer.values.index_select(-2, idx)  # [1, H_kv, P+K, D]


def _layers(cache: DynamicCache) -> list[Any]:
    """The cache layers that hold tensors (uninitialized layers are skipped)."""
    layers = []
    for layer in cache.layers:
        keys = getattr(layer, "keys", None)
        if isinstance(keys, torch.Tensor) and keys.dim() == 4:
            layers.append(layer)
    return layers


def _logits_size(model: Any) -> int:
    head = model.get_output_embeddings()
    if head is not None and hasattr(head, "weight"):
        return int(head.weight.shape[0])
    return int(model.config.get_text_config().vocab_size)


def _max_positions(config: Any) -> int:
    """Positions the model can attend over with full attention (a sliding window caps it)."""
    text = config.get_text_config()
    limit = int(getattr(text, "max_position_embeddings", 0) or 2**31 - 1)
    window = getattr(text, "sliding_window", None)
    layer_types = getattr(text, "layer_types", None)
    sliding = "sliding_attention" in layer_types if layer_types else window is not None
    if sliding and window:
        limit = min(limit, int(window))
    return limit
