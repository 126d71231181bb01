"""specd's own forward engine for Llama-family models (Llama, Mistral, Qwen2, Qwen3).

Why not ``model(...)``: a transformers forward re-dispatches through generic layers, builds
masks per call, keeps a ``DynamicCache`` that grows by concatenation, and calls ``F.linear``
on weights that MKL repacks on every call. Here the weights are taken out of the HF model once
and frozen into the fastest layout for the device (:mod:`specd_kernels.linear`), QKV and
gate/up are fused into one matmul each, the KV cache is a preallocated tensor per session
that is written in place, and the tree mask is built once per pass (not per layer).

One pass feeds ``T`` new tokens of one or more sessions (a *batch of passes*; row-stacked,
``[T, E]`` through every linear layer, attention per session). Conventions match
:mod:`target_service.engine`: a session's cache holds ``prefix_len`` committed tokens, a tree
pass feeds ``[pending] + tree`` at depth-based positions and leaves ``prefix_len + 1 + N``
entries in row order, :meth:`NativeEngine.commit` moves the kept rows down in place.

Numerics: float32 matches transformers' logits to about 1e-4 (different but equally exact
summation order; ``dense`` format with float64 weights matches to 1e-9). RMSNorm and RoPE
follow transformers exactly (the norm's statistics in float32, RoPE tables from the model's
own rotary module), so the same weights give the same greedy tokens.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from spec_decode.tree import tree_pass_inputs
from specd_kernels.cpu_ops import CpuOps, cpu_ops_for
from specd_kernels.linear import LinearKernel, WeightFormat, make_linear, resolve_format
from specd_kernels.q8 import Q8A8Linear, Q8ArgmaxScreen, Q8Linear, argmax_screen
from target_service.static_pass import DEFAULT_STATIC_CONTEXT, StaticPasses

STATIC_MODES = ("auto", "graphs", "eager", "off")

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
_STATIC_ROPE = ("default", "linear", "llama3", "yarn", None)
_ALIGN = 64  # KV capacity grows in multiples of this many positions


class UnsupportedModel(ValueError):
    """The native engine cannot run this checkpoint (the HF engine still can)."""


# ---- weights --------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerWeights:
    attn_norm: torch.Tensor  # [E]
    qkv: LinearKernel  # [E] -> [(H + 2 Hkv) D]
    q_norm: torch.Tensor | None  # [D] (Qwen3) or None
    k_norm: torch.Tensor | None  # [D]
    o: LinearKernel  # [H D] -> [E]
    mlp_norm: torch.Tensor  # [E]
    gate_up: LinearKernel  # [E] -> [2 F]
    down: LinearKernel  # [F] -> [E]


# The argmax screen from this many rows of a pass: below, the full q8 LM head is as fast or faster
# (it reads fewer bytes, and one or a few rows are bound by reading; `specd bench-verify --prompts`
# in docs/BENCHMARKS.md: from 16 rows a greedy pass is cheaper, at 8 the two are even).
SCREEN_MIN_ROWS = 8


@dataclass
class ScreenCounts:
    """What the argmax screen did (mutable; updated under the engine's lock, read by metrics)."""

    rows: int = 0  # rows whose argmax came from the screen
    candidates: int = 0  # outputs rescored exactly (the screen's work beyond the int8 product)
    fallbacks: int = 0  # rows that got the full exact product instead (too many candidates)


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int  # E
    heads: int  # H
    kv_heads: int  # Hkv
    head_dim: int  # D
    intermediate: int  # F
    vocab: int  # V
    eps: float
    max_positions: int


@dataclass(frozen=True)
class NativeWeights:
    shape: ModelShape
    embed: torch.Tensor  # [V, E]
    layers: tuple[LayerWeights, ...]
    final_norm: torch.Tensor  # [E]
    lm_head: LinearKernel  # [E] -> [V]
    fmt: WeightFormat

    def nbytes(self) -> int:
        """Weight bytes one decode step reads (embedding rows excluded)."""
        total = self.lm_head.nbytes()
        for layer in self.layers:
            total += layer.qkv.nbytes() + layer.o.nbytes() + layer.gate_up.nbytes() + layer.down.nbytes()
        return total


def check_supported(model: Any) -> None:
    """Raise :class:`UnsupportedModel` unless the native engine can run ``model`` exactly."""
    config = model.config.get_text_config()
    kind = getattr(config, "model_type", None)
    if kind not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModel(f"model_type {kind!r} is not one of {SUPPORTED_MODEL_TYPES}")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise UnsupportedModel(f"activation {config.hidden_act!r} is not silu")
    rope = getattr(config, "rope_scaling", None) or getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", rope.get("type")) not in _STATIC_ROPE:
        raise UnsupportedModel(f"rope type {rope.get('rope_type')!r} changes with sequence length")
    inner = getattr(model, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
        raise UnsupportedModel("not a *ForCausalLM with .model.layers and .model.rotary_emb")


def extract_weights(model: Any, fmt: WeightFormat, max_positions: int) -> NativeWeights:
    """Copy the HF model's weights into fused, frozen kernels of format ``fmt``."""
    check_supported(model)
    config = model.config.get_text_config()
    inner = model.model
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    first = inner.layers[0]
    shape = ModelShape(
        layers=len(inner.layers),
        hidden=int(config.hidden_size),
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate=int(first.mlp.gate_proj.weight.shape[0]),
        vocab=int(model.get_output_embeddings().weight.shape[0]),
        eps=float(config.rms_norm_eps),
        max_positions=max_positions,
    )
    layers = []
    with torch.no_grad():
        for layer in inner.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv_w = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])  # [(H+2Hkv)D, E]
            qkv_b = None
            if attn.q_proj.bias is not None:
                qkv_b = torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias])  # [(H+2Hkv)D]
            gate_up_b = None
            if mlp.gate_proj.bias is not None:
                gate_up_b = torch.cat([mlp.gate_proj.bias, mlp.up_proj.bias])  # [2F]
            layers.append(
                LayerWeights(
                    attn_norm=layer.input_layernorm.weight.detach(),
                    qkv=make_linear(qkv_w, qkv_b, fmt),
                    q_norm=_norm_weight(getattr(attn, "q_norm", None)),
                    k_norm=_norm_weight(getattr(attn, "k_norm", None)),
                    o=make_linear(attn.o_proj.weight, attn.o_proj.bias, fmt),
                    mlp_norm=layer.post_attention_layernorm.weight.detach(),
                    gate_up=make_linear(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), gate_up_b, fmt),
                    down=make_linear(mlp.down_proj.weight, mlp.down_proj.bias, fmt),
                )
            )
        head = model.get_output_embeddings()
        return NativeWeights(
            shape=shape,
            embed=inner.embed_tokens.weight.detach(),
            layers=tuple(layers),
            final_norm=inner.norm.weight.detach(),
            lm_head=make_linear(head.weight, getattr(head, "bias", None), fmt),
            fmt=fmt,
        )


def _norm_weight(module: Any) -> torch.Tensor | None:
    return None if module is None else module.weight.detach()


# ---- KV cache ---------------------------------------------------------------------------


class KVCache:
    """One session's keys and values: ``data[layer, 0=k/1=v, kv_head, position, head_dim]``.

    ``length`` positions are valid; the rest is scratch that the next pass overwrites.
    Capacity grows geometrically (a copy per doubling, so O(1) amortized per token) and never
    beyond the engine's context limit.
    """

    __slots__ = ("__weakref__", "data", "hidden", "length", "slot")

    def __init__(self, data: torch.Tensor) -> None:
        self.data = data  # [L, 2, Hkv, cap, D]
        self.length = 0
        self.hidden: torch.Tensor | None = None  # [Q, E] final normed hidden states of the last pass
        self.slot: int | None = None  # static KV slot (target_service.static_pass), None = eager buffer

    @property
    def capacity(self) -> int:
        return int(self.data.shape[3])

    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()


# ---- the engine -------------------------------------------------------------------------


@dataclass(frozen=True)
class PassInput:
    """New tokens of one session for one forward pass.

    Every new row sees the whole cached prefix; ``block`` says which new rows it sees besides
    (a tree: its ancestors and itself; a prefill: the causal triangle). Only this ``[Q, Q]``
    block is ever built, so a step costs nothing in mask work that grows with the context.
    ``positions`` is the rotary position per new token.
    """

    cache: KVCache
    tokens: torch.Tensor  # [Q] long
    positions: torch.Tensor  # [Q] long
    block: torch.Tensor  # [Q, Q] bool, new row -> new column
    want_logits: bool
    argmax_only: bool = False  # with want_logits: the rows' argmax [Q] instead of logits [Q, V]


class NativeEngine:
    """Implements the target engine interface (see :class:`target_service.engine.TreeEngine`)."""

    kind = "native"

    def __init__(
        self,
        model: Any,
        weight_format: str | None = None,
        max_context: int | None = None,
        *,
        static: str = "auto",
        static_context: int | None = None,
        screen: bool = True,
    ) -> None:
        """``static``: ``auto`` (CUDA graphs on a CUDA device, off elsewhere), ``graphs``, ``eager``
        (the static-shape path run without capture; for tests) or ``off``. ``static_context`` is
        the capacity of a static KV slot (default :data:`static_pass.DEFAULT_STATIC_CONTEXT`).
        ``screen``: greedy rows get their exact argmax from the int8 screen
        (:class:`specd_kernels.q8.Q8ArgmaxScreen`) where the LM head is a ``q8`` kernel.
        """
        check_supported(model)
        param = next(model.parameters())
        self.device: torch.device = param.device
        self.dtype: torch.dtype = param.dtype
        from target_service.engine import _max_positions  # the same context rule as the HF engine

        limit = _max_positions(model.config)
        self.max_positions: int = min(limit, max_context) if max_context else limit
        self.weight_format: WeightFormat = resolve_format(weight_format, self.device, self.dtype)
        self.weights = extract_weights(model, self.weight_format, self.max_positions)
        self.shape = self.weights.shape
        self.vocab_size: int = self.shape.vocab
        self._rotary = model.model.rotary_emb
        self._cos = torch.empty(0, self.shape.head_dim // 2, dtype=self.dtype, device=self.device)  # [P, D/2]
        self._sin = torch.empty(0, self.shape.head_dim // 2, dtype=self.dtype, device=self.device)  # [P, D/2]
        self._scale = self.shape.head_dim**-0.5
        self._lock = threading.Lock()
        self._ops: CpuOps | None = cpu_ops_for(self.device, self.dtype)  # C per-layer ops on a CPU in fp32
        # exact greedy argmax without the full LM head (a q8 LM head only)
        self.screen: Q8ArgmaxScreen | None = argmax_screen(self.weights.lm_head) if screen else None
        self.screen_counts = ScreenCounts()
        self.static: StaticPasses | None = None
        if static not in STATIC_MODES:
            raise ValueError(f"unknown static mode {static!r}; use one of {', '.join(STATIC_MODES)}")
        if static == "auto":
            static = "graphs" if self.device.type == "cuda" else "off"
        if static != "off":
            self.static = StaticPasses(
                self,
                capture=static == "graphs",
                context=static_context or DEFAULT_STATIC_CONTEXT,
            )

    @property
    def attn_scale(self) -> float:
        return self._scale

    # ---- caches -------------------------------------------------------------------

    def new_cache(self) -> KVCache:
        if self.static is not None:
            return self.static.new_cache()
        return KVCache(self._alloc(0))

    def copy_cache(self, cache: KVCache) -> KVCache:
        """An independent copy of ``cache`` (a forked beam): the valid rows copied, room to grow."""
        copy = self.new_cache()
        if copy.capacity < cache.length:
            self._reserve(copy, cache.capacity)
        with torch.inference_mode():
            copy.data[:, :, :, : cache.length] = cache.data[:, :, :, : cache.length]
        copy.length = cache.length
        copy.hidden = cache.hidden
        return copy

    def _alloc(self, capacity: int) -> torch.Tensor:
        s = self.shape
        return torch.empty(s.layers, 2, s.kv_heads, capacity, s.head_dim, dtype=self.dtype, device=self.device)

    def _reserve(self, cache: KVCache, needed: int) -> None:
        if needed <= cache.capacity:
            return
        if needed > self.max_positions:
            raise ValueError(f"{needed} positions exceed the engine's limit of {self.max_positions}")
        grown = max(needed, 2 * cache.capacity)
        grown = min(-(-grown // _ALIGN) * _ALIGN, max(self.max_positions, needed))
        data = self._alloc(grown)  # [L, 2, Hkv, grown, D]
        if cache.length:
            data[:, :, :, : cache.length] = cache.data[:, :, :, : cache.length]
        if self.static is not None:  # outgrew its static slot: continue eagerly, free the slot
            self.static.leave_slot(cache)
        cache.data = data

    def kv_rows(self, cache: KVCache, lo: int, hi: int) -> torch.Tensor:
        """A copy of the keys and values of positions ``lo..hi-1``: ``[L, 2, Hkv, hi - lo, D]``."""
        if not 0 <= lo <= hi <= cache.length:
            raise ValueError(f"rows {lo}..{hi} outside the {cache.length} cached positions")
        with torch.inference_mode():
            return cache.data[:, :, :, lo:hi].clone()

    def append_kv_rows(self, cache: KVCache, blocks: Sequence[torch.Tensor]) -> None:
        """Append positions given as ``[L, 2, Hkv, n, D]`` blocks (from :meth:`kv_rows`) to ``cache``."""
        n = sum(int(b.shape[3]) for b in blocks)
        self._reserve(cache, cache.length + n)
        with torch.inference_mode():
            at = cache.length
            for b in blocks:
                cache.data[:, :, :, at : at + b.shape[3]] = b
                at += int(b.shape[3])
        cache.length += n
        cache.hidden = None

    @staticmethod
    def cache_len(cache: KVCache) -> int:
        return cache.length

    @staticmethod
    def kv_bytes(cache: KVCache) -> int:
        """Bytes the session's cache holds allocated (capacity, not just the valid part)."""
        return cache.nbytes()

    @staticmethod
    def hidden_rows(cache: KVCache) -> torch.Tensor | None:
        """Final normed hidden states of the cache's last pass: ``[Q, E]`` (prefill: its last row)."""
        return cache.hidden

    @staticmethod
    def truncate(cache: KVCache, length: int) -> None:
        """Forget every position ``>= length`` (O(1): the rows become scratch)."""
        cache.length = min(cache.length, max(0, length))

    # ---- passes -------------------------------------------------------------------

    def prefill(self, cache: KVCache, tokens: Sequence[int]) -> int:
        """Feed ``tokens[:-1]`` into an empty ``cache``; return ``tokens[-1]``, the pending token."""
        if not tokens:
            raise ValueError("prefill needs at least one token")
        if cache.length:
            raise ValueError("prefill needs an empty cache")
        cache.hidden = None
        self.score_trees_and_feed((), [(cache, tokens[:-1])])
        return int(tokens[-1])

    def score_tree(
        self,
        cache: KVCache,
        pending_token: int,
        parents: torch.Tensor,  # [N] long, -1 = child of the pending token
        tokens: Sequence[int],  # [N]
    ) -> torch.Tensor:
        """One pass over ``[pending] + tree``; logits ``[1 + N, V]`` (row i+1 scores node i's children)."""
        return self.score_trees([(cache, pending_token, parents, tokens)])[0]

    def score_trees(
        self, items: Sequence[tuple[KVCache, int, torch.Tensor, Sequence[int]]], argmax_only: Sequence[bool] = ()
    ) -> list[torch.Tensor]:
        """Score the trees of several sessions in ONE forward pass (each as :meth:`score_tree`)."""
        return self.score_trees_and_feed(items, (), argmax_only)

    def score_trees_and_feed(
        self,
        items: Sequence[tuple[KVCache, int, torch.Tensor, Sequence[int]]],
        prompts: Sequence[tuple[KVCache, Sequence[int]]],  # (cache, the next tokens of its prompt)
        argmax_only: Sequence[bool] = (),  # per item: its rows' argmax ``[1 + N]`` instead of logits
    ) -> list[torch.Tensor]:
        """:meth:`score_trees` and, in the same pass, each prompt chunk fed after its cache's
        positions (causal, no logits; ``cache.hidden`` becomes the chunk's last normed row).

        Feeding a prompt in chunks of any size gives what one :meth:`prefill` gives (every row sees
        the cached prefix and the chunk's rows before it); with the CPU's row-exact kernels, the same
        bits, whatever shares the pass.

        An item flagged in ``argmax_only`` (greedy verification needs nothing else) gets
        ``logits.argmax(-1)`` ``[1 + N]`` long, the same ids, from the argmax screen where the
        engine has one (:attr:`screen`), else from its logits.
        """
        if argmax_only and len(argmax_only) != len(items):
            raise ValueError(f"argmax_only has {len(argmax_only)} flags for {len(items)} trees")
        passes = []
        for index, (cache, pending_token, parents, tokens) in enumerate(items):
            n = len(tokens)
            if parents.shape != (n,):
                raise ValueError(f"parents has shape {tuple(parents.shape)}; expected ({n},)")
            ids = torch.tensor([pending_token, *tokens], dtype=torch.long, device=self.device)  # [1+N]
            block, depth = tree_pass_inputs(parents.to(self.device), 0)  # [1+N, 1+N], [1+N] (no prefix)
            only = bool(argmax_only[index]) if argmax_only else False
            passes.append(PassInput(cache, ids, depth + cache.length, block, want_logits=True, argmax_only=only))
        for cache, chunk in prompts:
            n = len(chunk)
            if not n:
                continue
            ids = torch.tensor(list(chunk), dtype=torch.long, device=self.device)  # [n]
            positions = torch.arange(cache.length, cache.length + n, device=self.device)  # [n]
            causal = torch.ones(n, n, dtype=torch.bool, device=self.device).tril_()  # [n, n]
            passes.append(PassInput(cache, ids, positions, causal, want_logits=False))
        return self.forward(passes) if passes else []

    def commit(self, cache: KVCache, prefix_len: int, keep_rows: Sequence[int]) -> None:
        """Keep the prefix and pass rows ``keep_rows`` (increasing); move them down in place."""
        total = cache.length
        rows = list(keep_rows)
        if any(b <= a for a, b in itertools.pairwise(rows)):
            raise ValueError(f"keep_rows must increase, got {rows}")
        if rows and not (rows[0] >= 0 and prefix_len + rows[-1] < total):
            raise ValueError(f"keep_rows {rows} out of range for {total - prefix_len} pass rows")
        if rows != list(range(len(rows))):  # rows to move: gather them, then write them at the prefix end
            src = torch.tensor(rows, dtype=torch.long, device=self.device) + prefix_len  # [K]
            with torch.inference_mode():
                moved = cache.data.index_select(3, src)  # [L, 2, Hkv, K, D]
                cache.data[:, :, :, prefix_len : prefix_len + len(rows)] = moved
        cache.length = prefix_len + len(rows)

    # ---- the forward pass -----------------------------------------------------------

    def forward(self, passes: Sequence[PassInput]) -> list[torch.Tensor]:
        """Run the passes as one batch; returns logits ``[Q_i, V]`` per pass that wants them.

        Each pass's cache gains its ``Q_i`` new rows (``cache.length += Q_i``) only when the
        whole forward succeeds; on an error every cache keeps its old length.
        """
        with self._lock, torch.inference_mode():
            bucket = self.static.bucket_for(passes) if self.static is not None else None
            if bucket is not None and self.static is not None:  # one session, a common size: static shapes
                logits = self.static.run(passes[0], bucket)  # [Q, V]
                passes[0].cache.length += int(passes[0].tokens.shape[0])
                return [logits.argmax(dim=-1) if passes[0].argmax_only else logits]
            for p in passes:
                self._reserve(p.cache, p.cache.length + int(p.tokens.shape[0]))
            hidden = self._run_layers(passes)  # [T, E]
            outputs = self._logits(passes, hidden)
            for p in passes:
                p.cache.length += int(p.tokens.shape[0])
            return outputs

    def _logits(self, passes: Sequence[PassInput], hidden: torch.Tensor) -> list[torch.Tensor]:
        """The final norm and ONE LM-head call over the rows of every pass that wants logits (a
        call per session cost a whole LM-head read each: 16 one-row sessions spent 34 ms there
        instead of 10); each pass's normed rows go to its ``cache.hidden`` (a prefill: its last)."""
        rows: list[torch.Tensor] = []  # the normed rows of each pass wanting logits
        start = 0
        for p in passes:
            q = int(p.tokens.shape[0])
            if p.want_logits:
                p.cache.hidden = self.final_norm(hidden[start : start + q])  # [Q, E]
                rows.append(p.cache.hidden)
            else:  # a prefill: only the last row's state is kept (a draft head may want it)
                p.cache.hidden = self.final_norm(hidden[start + q - 1 : start + q])  # [1, E]
            start += q
        if not rows:
            return []
        wanting = [p for p in passes if p.want_logits]
        greedy = [p.argmax_only for p in wanting]
        total = sum(int(r.shape[0]) for r in rows)
        if all(greedy) and self.screen is not None and total >= SCREEN_MIN_ROWS:  # greedy: no full LM head
            ids = self._screened_argmax(rows[0] if len(rows) == 1 else torch.cat(rows))  # [sum Q]
            return list(ids.split([r.shape[0] for r in rows]))  # [Q_i] per pass
        logits = self.weights.lm_head(rows[0] if len(rows) == 1 else torch.cat(rows))  # [sum Q, V]
        out = list(logits.split([r.shape[0] for r in rows]))  # [Q_i, V] per pass wanting logits
        return [o.argmax(dim=-1) if only else o for o, only in zip(out, greedy, strict=True)]

    def _screened_argmax(self, rows: torch.Tensor) -> torch.Tensor:
        """``lm_head(rows).argmax(-1)`` ``[M]``, the same ids, from the int8 screen."""
        assert self.screen is not None
        ids, candidates, fallbacks = self.screen.argmax(rows)
        counts = self.screen_counts
        counts.rows += int(rows.shape[0])
        counts.candidates += candidates
        counts.fallbacks += fallbacks
        return ids

    def _run_layers(self, passes: Sequence[PassInput]) -> torch.Tensor:
        s = self.shape
        ids = torch.cat([p.tokens for p in passes]) if len(passes) > 1 else passes[0].tokens  # [T]
        positions = torch.cat([p.positions for p in passes]) if len(passes) > 1 else passes[0].positions  # [T]
        cos, sin = self._rope(positions)  # [T, 1, D/2] each
        if self._ops is not None:  # one C call per layer for every session's attention (no masks to build)
            plan = self._ops.plan([(p.cache.data, p.cache.length, int(p.tokens.shape[0]), p.block) for p in passes])
            if plan is not None:
                ops, scale = self._ops, self._scale
                return self.run_layers(ids, cos, sin, lambda i, q, k, v: ops.attention(plan, i, q, k, v, scale))
        groups = s.heads // s.kv_heads
        # Additive masks over the new rows, repeated for the query heads sharing a KV head: [g Q, Q].
        masks = [self._bias(p.block, groups) for p in passes]
        spans = list(itertools.accumulate((int(p.tokens.shape[0]) for p in passes), initial=0))

        def attend(index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            outs = []
            for p, mask, lo, hi in zip(passes, masks, spans, spans[1:], strict=False):
                outs.append(self._attend(index, p.cache, q[lo:hi], k[lo:hi], v[lo:hi], mask, groups))
            return torch.cat(outs) if len(outs) > 1 else outs[0]  # [T, H D]

        return self.run_layers(ids, cos, sin, attend)

    def run_layers(
        self,
        ids: torch.Tensor,  # [T] long
        cos: torch.Tensor,  # [T, 1, D/2]
        sin: torch.Tensor,  # [T, 1, D/2]
        attend: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """Every decoder layer over ``T`` rows; ``attend(layer, q [T,H,D], k [T,Hkv,D], v)`` -> ``[T, H D]``
        stores the keys/values and does the attention (eager per session, or static for a graph).

        Returns the last layer's output ``[T, E]`` (before the final norm). No host syncs: the
        static path captures this into a CUDA graph.
        """
        s, w, ops = self.shape, self.weights, self._ops
        x = F.embedding(ids, w.embed)  # [T, E]
        n_q, n_kv = s.heads * s.head_dim, s.kv_heads * s.head_dim
        for index, layer in enumerate(w.layers):
            h = ops.rms_norm(x, layer.attn_norm, s.eps) if ops else _rms_norm(x, layer.attn_norm, s.eps)  # [T, E]
            qkv = layer.qkv(h)  # [T, (H + 2 Hkv) D]
            rope_in_c = ops is not None and layer.q_norm is None  # Qwen3 norms q and k first: torch path
            if rope_in_c and ops is not None:  # rotate q and k in place, one call
                ops.rope_(qkv, s.heads + s.kv_heads, s.head_dim, cos, sin)
            q = qkv[:, :n_q].view(-1, s.heads, s.head_dim)  # [T, H, D]
            k = qkv[:, n_q : n_q + n_kv].view(-1, s.kv_heads, s.head_dim)  # [T, Hkv, D]
            v = qkv[:, n_q + n_kv :].view(-1, s.kv_heads, s.head_dim)  # [T, Hkv, D]
            if layer.q_norm is not None and layer.k_norm is not None:
                q = _rms_norm(q, layer.q_norm, s.eps)
                k = _rms_norm(k, layer.k_norm, s.eps)
            if not rope_in_c:
                q = _apply_rope(q, cos, sin)  # [T, H, D]
                k = _apply_rope(k, cos, sin)  # [T, Hkv, D]
            attn = attend(index, q, k, v)  # [T, H D]
            x = _residual(x, layer.o, attn)  # x + o(attn)  [T, E]
            h = ops.rms_norm(x, layer.mlp_norm, s.eps) if ops else _rms_norm(x, layer.mlp_norm, s.eps)  # [T, E]
            gate_up = layer.gate_up(h)  # [T, 2F]
            act = F.silu(gate_up[:, : s.intermediate]) * gate_up[:, s.intermediate :]  # [T, F]
            x = _residual(x, layer.down, act)  # x + down(act)  [T, E]
        return x

    def _attend(
        self,
        layer: int,
        cache: KVCache,
        q: torch.Tensor,  # [Q, H, D]
        k: torch.Tensor,  # [Q, Hkv, D]
        v: torch.Tensor,  # [Q, Hkv, D]
        bias: torch.Tensor | None,  # [g Q, Q] additive mask over the new rows (0 / -inf), None = all allowed
        groups: int,
    ) -> torch.Tensor:
        """Write this pass's keys/values at the cache end, attend over prefix + new rows."""
        s = self.shape
        n, start = q.shape[0], cache.length
        kv = cache.data[layer]  # [2, Hkv, cap, D]
        kv[0, :, start : start + n] = k.transpose(0, 1)
        kv[1, :, start : start + n] = v.transpose(0, 1)
        keys = kv[0, :, : start + n]  # [Hkv, P+Q, D]
        values = kv[1, :, : start + n]  # [Hkv, P+Q, D]
        # Query head h uses KV head h // g: group the g query heads of a KV head as extra rows.
        qg = q.transpose(0, 1).reshape(s.kv_heads, groups * n, s.head_dim)  # [Hkv, g Q, D]
        scores = torch.bmm(qg, keys.transpose(1, 2)).mul_(self._scale)  # [Hkv, g Q, P+Q]
        if bias is not None:  # the prefix is visible to all: only the new columns get masked
            scores[:, :, start:].add_(bias)  # [Hkv, g Q, Q]
        if scores.dtype in (torch.float16, torch.bfloat16):  # softmax statistics in float32
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)  # [Hkv, g Q, P+Q]
        else:
            probs = torch.softmax(scores, dim=-1)  # [Hkv, g Q, P+Q]
        out = torch.bmm(probs, values)  # [Hkv, g Q, D]
        return out.reshape(s.heads, n, s.head_dim).transpose(0, 1).reshape(n, s.heads * s.head_dim)  # [Q, H D]

    def _bias(self, block: torch.Tensor, groups: int) -> torch.Tensor | None:
        """``block`` ([Q, Q] bool) as an additive float mask for the grouped query rows."""
        if block.shape[0] == 1:  # one new row always sees itself
            return None
        bias = torch.zeros(block.shape, dtype=self.dtype, device=self.device)  # [Q, Q]
        bias.masked_fill_(~block, float("-inf"))
        return bias.repeat(groups, 1)  # [g Q, Q]

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        """The model's final RMSNorm: ``[T, E] -> [T, E]``."""
        if self._ops is not None:
            return self._ops.rms_norm(x, self.weights.final_norm, self.shape.eps)
        return _rms_norm(x, self.weights.final_norm, self.shape.eps)

    def ensure_rope(self, need: int) -> None:
        """Grow the cos/sin tables to cover positions ``< need`` (a no-op when they do)."""
        if need > self._cos.shape[0]:
            size = min(max(need, 2 * self._cos.shape[0], 256), max(self.max_positions, need))
            probe = torch.zeros(1, dtype=self.dtype, device=self.device)
            pos = torch.arange(size, device=self.device)[None]  # [1, P]
            cos, sin = self._rotary(probe, pos)  # [1, P, D] each, halves duplicated
            half = self.shape.head_dim // 2
            self._cos, self._sin = cos[0, :, :half].contiguous(), sin[0, :, :half].contiguous()  # [P, D/2]

    def rope_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The current cos/sin tables ``[P, D/2]`` (replaced, never modified, when they grow)."""
        return self._cos, self._sin

    def _rope(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin rows for ``positions`` from the model's own rotary module, cached as a table."""
        self.ensure_rope(int(positions.max()) + 1 if positions.numel() else 0)
        return self._cos[positions][:, None], self._sin[positions][:, None]  # [T, 1, D/2]


def _residual(x: torch.Tensor, kernel: LinearKernel, rows: torch.Tensor) -> torch.Tensor:
    """``x + kernel(rows)``; in place into ``x`` where the kernel fuses the add (same bits)."""
    if isinstance(kernel, (Q8Linear, Q8A8Linear)) and x.is_contiguous():
        kernel.add_to(x, rows)
        return x
    return x + kernel(rows)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm: statistics in float32, scale in the input dtype."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), weight, eps)
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin`` with half-width tables (the halves of HF's are equal)."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]  # [T, H, D/2]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)  # [T, H, D]
