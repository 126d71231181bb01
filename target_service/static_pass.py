"""Static-shape single-session passes for the native engine, replayed as CUDA graphs on GPUs.

On a GPU a decode step of a small model is launch-bound: the eager forward issues a few hundred
kernels from Python (30 layers of norms, matmuls, rotary, attention) and each costs more to
launch than to run. A CUDA graph records the whole pass once and replays it with one launch,
but only if every shape and every address is fixed. This module makes them fixed:

* **KV slots.** Each session's cache is a *slot*: a zeroed ``[L, 2, Hkv, C, D]`` tensor of the
  static capacity ``C``, allocated once and reused by later sessions (a slot goes back to the
  free list when its cache is dropped). A session that outgrows ``C`` leaves its slot and
  continues on the eager path with a grown cache.
* **Token buckets.** A pass of ``Q`` new tokens is padded to the next bucket ``B`` (1, 2, 4, ...,
  64). Padding rows see only the prefix and themselves, write scratch rows past the new end of
  the cache, and are dropped from the result, so they change nothing.
* **Attention over the whole slot.** Rows attend over all ``C`` positions with an additive mask
  built inside the pass from the session length (a device scalar) and the ``[B, B]`` tree block:
  prefix columns 0, new columns per the tree, the rest ``-inf`` (exactly zero weight; slots start
  zeroed so stale rows are always finite).

One graph is captured per (slot, bucket) the first time that pair runs, and kept for the
engine's lifetime; static input buffers are per bucket, shared by every slot (replays are
serialized by the engine lock). Without CUDA (tests, CPU) the same static body runs eagerly,
which is how its equality with the eager path is tested on every machine.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from target_service.llama_engine import KVCache, NativeEngine, PassInput

DEFAULT_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_STATIC_CONTEXT = 2048  # positions per KV slot (the static capacity C)


@dataclass
class _Slot:
    """One static KV buffer and the graphs captured against its address."""

    index: int
    data: torch.Tensor  # [L, 2, Hkv, C, D]
    graphs: dict[int, _Graph] = field(default_factory=dict)  # bucket -> its captured pass
    in_use: bool = False


@dataclass(frozen=True)
class _Graph:
    """A captured pass and the output tensors its replays write."""

    graph: Any  # torch.cuda.CUDAGraph
    logits: torch.Tensor  # [B, V]
    hidden: torch.Tensor  # [B, E]


@dataclass
class _Bucket:
    """Static inputs and outputs of one bucket size ``B``."""

    size: int
    ids: torch.Tensor  # [B] long
    positions: torch.Tensor  # [B] long, rotary positions
    length: torch.Tensor  # [1] long, committed positions in the cache before the pass
    block: torch.Tensor  # [B, B] bool, new row -> new column


class StaticPasses:
    """Runs one session's pass with static shapes (see the module docstring)."""

    def __init__(
        self,
        engine: NativeEngine,
        *,
        capture: bool,
        context: int = DEFAULT_STATIC_CONTEXT,
        buckets: tuple[int, ...] = DEFAULT_BUCKETS,
    ) -> None:
        if capture and engine.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device")
        self.engine = engine
        self.capture = capture
        self.capacity = min(int(context), engine.max_positions)  # C
        self.buckets = tuple(sorted(b for b in buckets if b <= self.capacity))
        self._slots: list[_Slot] = []
        self._free: list[int] = []
        self._inputs: dict[int, _Bucket] = {}
        self._pool = torch.cuda.graph_pool_handle() if capture else None
        self.stats = {"replays": 0, "captures": 0, "eager_static": 0}
        s, dev = engine.shape, engine.device
        self._columns = torch.arange(self.capacity, device=dev)  # [C]
        self._groups = s.heads // s.kv_heads
        # Graphs read the rotary tables by address: hold our own reference to tables that cover C.
        engine.ensure_rope(self.capacity)
        self._cos, self._sin = engine.rope_tables()  # [P >= C, D/2] each

    # ---- slots --------------------------------------------------------------------

    def new_cache(self) -> KVCache:
        """A cache on a free slot (a new slot when none is free)."""
        from target_service.llama_engine import KVCache

        if self._free:
            slot = self._slots[self._free.pop()]
        else:
            s = self.engine.shape
            data = torch.zeros(  # zeroed: masked columns must hold finite values
                s.layers, 2, s.kv_heads, self.capacity, s.head_dim, dtype=self.engine.dtype, device=self.engine.device
            )
            slot = _Slot(len(self._slots), data)
            self._slots.append(slot)
        slot.in_use = True
        cache = KVCache(slot.data)
        cache.slot = slot.index
        weakref.finalize(cache, self._release, slot.index)
        return cache

    def _release(self, index: int) -> None:
        slot = self._slots[index]
        if slot.in_use:
            slot.in_use = False
            self._free.append(index)

    def leave_slot(self, cache: KVCache) -> None:
        """``cache`` is moving to a larger buffer: its slot is free for the next session."""
        if cache.slot is not None:
            self._release(cache.slot)
            cache.slot = None

    @property
    def slots(self) -> int:
        return len(self._slots)

    # ---- passes -------------------------------------------------------------------

    def bucket_for(self, passes: Sequence[PassInput]) -> int | None:
        """The bucket that runs ``passes`` statically, or None when they need the eager path."""
        if len(passes) != 1:
            return None
        p = passes[0]
        if p.cache.slot is None or not p.want_logits:
            return None
        q = int(p.tokens.shape[0])
        for b in self.buckets:
            if b >= q:
                return b if p.cache.length + b <= self.capacity else None
        return None

    def run(self, p: PassInput, bucket: int) -> torch.Tensor:
        """One pass of ``p`` padded to ``bucket``; returns logits ``[Q, V]`` and sets ``cache.hidden``."""
        cache = p.cache
        assert cache.slot is not None
        slot = self._slots[cache.slot]
        buf = self._buffers(bucket)
        q = int(p.tokens.shape[0])
        self._load(buf, p, q)
        if self.capture:
            captured = slot.graphs.get(bucket)
            if captured is None:
                captured = slot.graphs[bucket] = self._capture(slot, buf)
            captured.graph.replay()
            logits, hidden = captured.logits, captured.hidden  # [B, V], [B, E]
            self.stats["replays"] += 1
        else:
            logits, hidden = self._body(slot.data, buf)
            self.stats["eager_static"] += 1
        # Clone: the next replay (of any graph sharing the pool) may overwrite these buffers.
        cache.hidden = hidden[:q].clone()  # [Q, E]
        return logits[:q].clone()  # [Q, V]

    def _buffers(self, bucket: int) -> _Bucket:
        buf = self._inputs.get(bucket)
        if buf is None:
            dev = self.engine.device
            buf = _Bucket(
                size=bucket,
                ids=torch.zeros(bucket, dtype=torch.long, device=dev),
                positions=torch.zeros(bucket, dtype=torch.long, device=dev),
                length=torch.zeros(1, dtype=torch.long, device=dev),
                block=torch.eye(bucket, dtype=torch.bool, device=dev),
            )
            self._inputs[bucket] = buf
        return buf

    @staticmethod
    def _load(buf: _Bucket, p: PassInput, q: int) -> None:
        """Copy the pass into the bucket's static inputs; padding rows: token 0, position 0, self only."""
        b = buf.size
        buf.ids[:q].copy_(p.tokens)
        buf.positions[:q].copy_(p.positions)
        buf.length.fill_(p.cache.length)
        if q < b:
            buf.ids[q:].zero_()
            buf.positions[q:].zero_()
            buf.block.copy_(torch.eye(b, dtype=torch.bool, device=buf.block.device))
        buf.block[:q, :q].copy_(p.block)

    def _capture(self, slot: _Slot, buf: _Bucket) -> _Graph:
        """Record the static body for (slot, bucket) as a CUDA graph, after warm-up runs on a side stream.

        The warm-ups write only rows at or past the session's length (scratch), so the
        session's committed cache is untouched; the replay that follows does the real pass.
        """
        side = torch.cuda.Stream(self.engine.device)
        side.wait_stream(torch.cuda.current_stream(self.engine.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._body(slot.data, buf)
        torch.cuda.current_stream(self.engine.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            logits, hidden = self._body(slot.data, buf)
        self.stats["captures"] += 1
        return _Graph(graph, logits, hidden)

    def _body(self, kv_all: torch.Tensor, buf: _Bucket) -> tuple[torch.Tensor, torch.Tensor]:
        """The pass with every shape static and no host sync: ``(logits [B, V], hidden [B, E])``."""
        engine, s = self.engine, self.engine.shape
        b, groups = buf.size, self._groups
        write = buf.length + torch.arange(b, device=buf.ids.device)  # [B] cache rows of the new tokens
        # Columns a row may see: the committed prefix, plus its tree block at the new rows.
        allowed = (self._columns[None, :] < buf.length).expand(b, self.capacity).clone()  # [B, C]
        allowed.scatter_(1, write[None, :].expand(b, b), buf.block)  # [B, C]
        bias = torch.zeros(b, self.capacity, dtype=engine.dtype, device=buf.ids.device)  # [B, C]
        bias.masked_fill_(~allowed, float("-inf"))
        bias = bias.repeat(groups, 1)  # [g B, C]
        cos, sin = self._cos[buf.positions][:, None], self._sin[buf.positions][:, None]  # [B, 1, D/2] each

        def attend(index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            kv = kv_all[index]  # [2, Hkv, C, D]
            kv[0].index_copy_(1, write, k.transpose(0, 1))  # [Hkv, B, D] into rows `write`
            kv[1].index_copy_(1, write, v.transpose(0, 1))
            qg = q.transpose(0, 1).reshape(s.kv_heads, groups * b, s.head_dim)  # [Hkv, g B, D]
            scores = torch.baddbmm(bias, qg, kv[0].transpose(1, 2), alpha=engine.attn_scale)  # [Hkv, g B, C]
            if scores.dtype in (torch.float16, torch.bfloat16):
                probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)  # [Hkv, g B, C]
            else:
                probs = torch.softmax(scores, dim=-1)  # [Hkv, g B, C]
            out = torch.bmm(probs, kv[1])  # [Hkv, g B, D]
            return out.reshape(s.heads, b, s.head_dim).transpose(0, 1).reshape(b, s.heads * s.head_dim)  # [B, H D]

        x = engine.run_layers(buf.ids, cos, sin, attend)  # [B, E]
        hidden = engine.final_norm(x)  # [B, E]
        return engine.weights.lm_head(hidden), hidden  # [B, V], [B, E]
