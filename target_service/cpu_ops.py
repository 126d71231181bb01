"""The small per-layer operations of a CPU float32 pass as single C calls (``csrc/cpu_ops.c``).

A 16-row pass of SmolLM2 runs about 45 torch ops per layer besides its matmuls; each costs a
few microseconds of dispatch whatever its size, which adds up to a quarter of the step. RMSNorm
and RoPE here are one call each, and :meth:`target_service.q8.Q8Linear.add_to` folds the
residual add into the matmul. Used by :class:`target_service.llama_engine.NativeEngine` on a CPU
in float32 when the kernel library builds; CUDA and other dtypes keep the torch ops.

Every operation is per row, so a tree pass still gives each row what decoding it alone gives.
RoPE is bit-identical to the torch ops; RMSNorm agrees with them to float32 rounding (the
mean's summation order), well inside the engine's stated tolerance. (SiLU stays torch's: its
vectorized exp beats a scalar ``expf`` tenfold.)
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch

from target_service.q8 import load_library


@dataclass(frozen=True)
class CpuOps:
    lib: ctypes.CDLL

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """transformers' RMSNorm over the last dim of a contiguous ``[T, E]``: a new ``[T, E]``."""
        x = x.contiguous()
        y = torch.empty_like(x)
        self.lib.cpu_rms_norm(x.data_ptr(), x.shape[0], x.shape[1], weight.data_ptr(), eps, y.data_ptr())
        return y

    def rope_(self, rows: torch.Tensor, heads: int, head_dim: int, cos: torch.Tensor, sin: torch.Tensor) -> None:
        """Rotate, in place, the first ``heads`` heads of every row of ``rows`` ``[T, C]`` (contiguous);
        ``cos``/``sin``: ``[T, 1, D/2]``, as :meth:`NativeEngine._rope` gives them."""
        assert rows.is_contiguous() and rows.shape[1] >= heads * head_dim and cos.shape[-1] * 2 == head_dim
        cos, sin = cos.contiguous(), sin.contiguous()  # no-ops for the engine's gathered tables
        t, width = rows.shape
        self.lib.cpu_rope(rows.data_ptr(), t, width, heads, head_dim, cos.data_ptr(), sin.data_ptr())


def cpu_ops_for(device: torch.device, dtype: torch.dtype) -> CpuOps | None:
    """The C ops where they apply (a CPU, float32, the library built), else None (torch ops)."""
    if device.type != "cpu" or dtype != torch.float32:
        return None
    lib = load_library()
    return None if lib is None else CpuOps(lib)
