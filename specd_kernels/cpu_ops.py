"""The per-layer operations of a CPU float32 pass as single C calls (``csrc/cpu_ops.c``).

A 16-row pass of SmolLM2 runs about 45 torch ops per layer besides its matmuls; each costs a
few microseconds of dispatch whatever its size, which adds up to a quarter of the step. RMSNorm,
RoPE and attention (every session of the pass in one call per layer: its keys/values written
into its cache, then each (row, head) over the prefix and the new rows its block lets it see)
are one call each here, and :meth:`specd_kernels.q8.Q8Linear.add_to` folds the
residual add into the matmul. Used by :class:`target_service.llama_engine.NativeEngine` on a CPU
in float32 when the kernel library builds; CUDA and other dtypes keep the torch ops.

Every operation is per row and sums in a fixed order of its own, so with the ``q8`` matmuls a
tree pass, a batched pass or a prompt gives each row exactly the bits that decoding it alone
gives (tested). RoPE is bit-identical to the torch ops; RMSNorm and attention agree with them to
float32 rounding (summation order; attention's exp is a polynomial within 2 ulp of ``expf``),
well inside the engine's stated tolerance against transformers. (SiLU stays torch's: its
vectorized exp beats a scalar ``expf`` tenfold.)
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from specd_kernels.q8 import load_library


@dataclass(frozen=True)
class CpuOps:
    lib: ctypes.CDLL

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """transformers' RMSNorm over the last dim of a contiguous ``[T, E]``: a new ``[T, E]``."""
        x = x.contiguous()
        y = torch.empty_like(x)
        self.lib.cpu_rms_norm(x.data_ptr(), x.shape[0], x.shape[1], weight.data_ptr(), eps, y.data_ptr())
        return y

    def plan(self, sessions: Sequence[tuple[torch.Tensor, int, int, torch.Tensor]]) -> AttentionPlan | None:
        """A plan for sessions given as (cache data ``[L, 2, Hkv, cap, D]``, committed length, new
        rows, ``[Q, Q]`` bool block); None where a cache is not one plain float32 block."""
        if any(not data.is_contiguous() or data.dtype != torch.float32 for data, _, _, _ in sessions):
            return None
        blocks = tuple(block.contiguous() for _, _, _, block in sessions)
        spans = [0]
        for _, _, rows, _ in sessions:
            spans.append(spans[-1] + rows)
        return AttentionPlan(
            caches=_int64s([data.data_ptr() for data, _, _, _ in sessions]),
            layer_step=tuple(data.stride(0) * data.element_size() for data, _, _, _ in sessions),
            caps=_int64s([int(data.shape[3]) for data, _, _, _ in sessions]),
            lens=_int64s([length for _, length, _, _ in sessions]),
            spans=_int64s(spans),
            blocks=_int64s([0 if s[2] == 1 else b.data_ptr() for s, b in zip(sessions, blocks, strict=True)]),
            keep=blocks,
        )

    def attention(
        self,
        plan: AttentionPlan,
        layer: int,
        q: torch.Tensor,  # [T, H, D] (rows may be strided: views of the fused qkv, or tensors of their own)
        k: torch.Tensor,  # [T, Hkv, D]
        v: torch.Tensor,  # [T, Hkv, D]
        scale: float,
    ) -> torch.Tensor:
        """Write the new rows' keys/values into every session's cache and attend: ``[T, H D]``."""
        rows, heads, dim = q.shape
        kv_heads = k.shape[1]
        for t in (q, k, v):  # heads and dims contiguous within a row
            assert t.dtype == torch.float32 and t.stride(1) == dim and t.stride(2) == 1
        out = torch.empty(rows, heads * dim, dtype=torch.float32)
        sessions = len(plan.layer_step)
        caches = _int64s([plan.caches[i] + layer * plan.layer_step[i] for i in range(sessions)])
        status = self.lib.cpu_attention(
            q.data_ptr(), q.stride(0), k.data_ptr(), k.stride(0), v.data_ptr(), v.stride(0), heads, kv_heads, dim,
            sessions, caches, plan.caps, plan.lens, plan.spans, plan.blocks, scale, out.data_ptr(),
            torch.get_num_threads(),
        )  # fmt: skip
        if status != 0:  # the caller rolls the sessions back (the keys/values were written already)
            raise MemoryError(f"attention: no memory for the scratch rows of a {rows}-row pass")
        return out

    def rope_(self, rows: torch.Tensor, heads: int, head_dim: int, cos: torch.Tensor, sin: torch.Tensor) -> None:
        """Rotate, in place, the first ``heads`` heads of every row of ``rows`` ``[T, C]`` (contiguous);
        ``cos``/``sin``: ``[T, 1, D/2]``, as :meth:`NativeEngine._rope` gives them."""
        assert rows.is_contiguous() and rows.shape[1] >= heads * head_dim and cos.shape[-1] * 2 == head_dim
        cos, sin = cos.contiguous(), sin.contiguous()  # no-ops for the engine's gathered tables
        t, width = rows.shape
        self.lib.cpu_rope(rows.data_ptr(), t, width, heads, head_dim, cos.data_ptr(), sin.data_ptr())


@dataclass(frozen=True)
class AttentionPlan:
    """What :meth:`CpuOps.attention` needs about a pass's sessions, built once per forward."""

    caches: ctypes.Array[ctypes.c_int64]  # per session: address of layer 0's [2, Hkv, cap, D] block
    layer_step: tuple[int, ...]  # per session: bytes from one layer's block to the next
    caps: ctypes.Array[ctypes.c_int64]  # per session: cache capacity (positions)
    lens: ctypes.Array[ctypes.c_int64]  # per session: committed positions before this pass
    spans: ctypes.Array[ctypes.c_int64]  # S + 1 row offsets into the stacked new rows
    blocks: ctypes.Array[ctypes.c_int64]  # per session: address of its [Q, Q] bool block, 0 for one row
    keep: tuple[torch.Tensor, ...]  # the block tensors, alive while the plan is


def _int64s(values: Sequence[int]) -> ctypes.Array[ctypes.c_int64]:
    return (ctypes.c_int64 * len(values))(*values)


def cpu_ops_for(device: torch.device, dtype: torch.dtype) -> CpuOps | None:
    """The C ops where they apply (a CPU, float32, the library built), else None (torch ops).

    ``SPECD_CPU_OPS=0`` in the environment keeps the torch ops (to compare, or to rule them out).
    """
    if device.type != "cpu" or dtype != torch.float32 or os.environ.get("SPECD_CPU_OPS") == "0":
        return None
    lib = load_library()
    return None if lib is None else CpuOps(lib)
