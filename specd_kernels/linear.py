"""Linear-layer kernels for the native engine: the same ``y = x W^T + b`` in three weight layouts.

A decode step of a small model is a chain of skinny matmuls (1 to 64 rows against a frozen
weight), so what matters is how the weight sits in memory, not FLOPs. What each layout gives a
whole pass is measured by ``specd bench-verify --weight-format F`` (docs/BENCHMARKS.md).

* ``dense`` -- plain ``F.linear`` on the model's own weights (fp32, fp64, bf16 on CUDA).
  Used on GPUs, for float64 tests, and whenever nothing better applies.
* ``q8`` -- exact int8 (:mod:`specd_kernels.q8`): for checkpoints that were group-quantized
  (GGUF Q4_0/Q4_1/Q8_0, like the default SmolLM2), the 1-byte codes rebuild every fp32 weight bit
  for bit, so the model is unchanged and a decode step reads a quarter of the bytes. The default
  on CPU when the kernel has vector code for it (AVX-512, or AVX2 + FMA); weights that are not
  such codes stay ``packed``.
* ``q8a8`` -- opt-in, never chosen by ``auto``: the same exact int8 weights, times activations
  quantized to int8 per row and per group of 32 (as llama.cpp's CPU dot products do), summed in
  integers with AVX-512 VNNI (four times the multiply-adds per instruction of fp32) or AVX2's byte
  multiplies (the same bits). It CHANGES
  the outputs against fp32 (the activations are rounded), so greedy text can differ from
  ``hf-generate``'s; but every row is still computed alone in a fixed order, so speculative
  decoding on it stays lossless against the same engine's own greedy decoding.
* ``packed`` -- fp32 weights reordered once into MKL's packed GEMM layout
  (``torch.ops.mkl._mkl_reorder_linear_weight``, what inductor's freezing pass emits). The
  reorder happens at load time instead of inside every call, which is what made 2-8 row
  matmuls cost twice a 1-row one. Results equal ``dense`` to fp32 rounding (about 1e-4
  absolute on logits).

Not offered: fbgemm's dynamic int8 linear. It is 5-8x faster here, but it quantizes the
activations per call with one scale for all rows, so a row's output depends on the other rows
in the batch: a tree pass would no longer equal sequential decoding, and on SmolLM2 the logits
moved by up to 8 (argmax changed) against fp32.

Every kernel is a frozen dataclass built once (:func:`make_linear`) and called as
``kernel(x)`` with ``x`` of shape ``[M, in_features]``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
import torch.nn.functional as F

from spec_decode.errors import InvalidArgument

log = logging.getLogger(__name__)

WeightFormat = Literal["dense", "packed", "q8", "q8a8"]
WEIGHT_FORMATS: tuple[str, ...] = ("auto", "dense", "packed", "q8", "q8a8")


class LinearKernel(Protocol):
    @property
    def out_features(self) -> int: ...

    @property
    def in_features(self) -> int: ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # [M, in] -> [M, out]
        ...

    def nbytes(self) -> int:
        """Bytes of weight memory the kernel reads per call."""
        ...


@dataclass(frozen=True)
class DenseLinear:
    weight: torch.Tensor  # [out, in]
    bias: torch.Tensor | None  # [out]
    out_features: int
    in_features: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def nbytes(self) -> int:
        return self.weight.numel() * self.weight.element_size()


@dataclass(frozen=True)
class PackedLinear:
    """fp32 weight in MKL's packed-GEMM layout; ``weight`` is kept for the op's shape checks."""

    packed: torch.Tensor  # opaque MKL buffer
    weight: torch.Tensor  # [out, in] fp32
    bias: torch.Tensor | None  # [out]
    out_features: int
    in_features: int

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkl._mkl_linear(x, self.packed, self.weight, self.bias, x.shape[0])

    def nbytes(self) -> int:
        return self.weight.numel() * self.weight.element_size()


def resolve_format(requested: str | None, device: torch.device, dtype: torch.dtype) -> WeightFormat:
    """Pick the weight format: ``auto`` means ``q8`` (else ``packed``) for fp32 on CPU, ``dense`` otherwise.

    Raises InvalidArgument for a format the device/dtype cannot run.
    """
    name = requested or "auto"
    if name not in WEIGHT_FORMATS:
        raise InvalidArgument(f"unknown weight format {name!r}; use one of {', '.join(WEIGHT_FORMATS)}")
    cpu_fp32 = device.type == "cpu" and dtype == torch.float32
    if name == "auto":  # q8 where the kernel builds (it keeps fp32 for weights it cannot reproduce)
        if not (cpu_fp32 and _mkl_packing_available()):
            return "dense"
        from specd_kernels.q8 import library_error, simd_width

        return "q8" if library_error() is None and simd_width() > 0 else "packed"
    if name == "packed" and not (cpu_fp32 and _mkl_packing_available()):
        raise InvalidArgument(f"weight format 'packed' needs float32 on a CPU with MKL (got {dtype} on {device})")
    if name in ("q8", "q8a8"):
        if not (cpu_fp32 and _mkl_packing_available()):
            raise InvalidArgument(f"weight format {name!r} needs float32 on a CPU (got {dtype} on {device})")
        from specd_kernels.q8 import library_error

        error = library_error()
        if error is not None:
            raise InvalidArgument(f"weight format {name!r} needs its C kernel, which could not be built: {error}")
        _warn_if_slow(name)
    return name  # type: ignore[return-value]


def _warn_if_slow(name: str) -> None:
    """Say so when a format asked for by name runs element by element on this CPU (same bits, slow)."""
    from specd_kernels.q8 import a8_path, simd_width

    if name == "q8" and simd_width() == 0:
        log.warning("weight format 'q8': this CPU has neither AVX-512 nor AVX2+FMA; the kernel runs element by element")
    if name == "q8a8" and a8_path() == 0:
        log.warning("weight format 'q8a8': this CPU has neither AVX-512 VNNI nor AVX2; its sums run element by element")


def _mkl_packing_available() -> bool:
    return torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_reorder_linear_weight")


def logits_kernel(weight: torch.Tensor) -> LinearKernel | None:
    """A kernel for ``x @ weight.T`` over a frozen ``[V, E]`` LM head, where one beats torch's matmul:
    on a CPU in fp32 (``auto``: exact int8 codes for a group-quantized head, else MKL-packed). None
    elsewhere (GPUs, other dtypes: torch's matmul is the fast path there). A ReDrafter head drafts a
    few beams at a time; on 2 cores torch's matmul takes about 20 ms for 4 rows of SmolLM2's LM
    head, the ``q8`` kernel about 4 ms (docs/BENCHMARKS.md)."""
    fmt = resolve_format(None, weight.device, weight.dtype)
    return None if fmt == "dense" else make_linear(weight, None, fmt)


def make_linear(weight: torch.Tensor, bias: torch.Tensor | None, fmt: WeightFormat) -> LinearKernel:
    """Build the kernel for one ``[out, in]`` weight (copied; the source may be freed after)."""
    out_features, in_features = (int(s) for s in weight.shape)
    weight = weight.detach().contiguous()
    bias = None if bias is None else bias.detach().contiguous()
    if fmt == "dense":
        return DenseLinear(weight, bias, out_features, in_features)
    if fmt in ("q8", "q8a8"):
        from specd_kernels.q8 import Q8A8Linear, Q8Linear, quantize_exact, to_a8_panels, to_panels

        codes = quantize_exact(weight)
        if codes is None:  # not a group-quantized checkpoint: keep fp32, never change the weights
            return make_linear(weight, bias, "packed")
        if fmt == "q8a8":
            return Q8A8Linear(to_a8_panels(codes), bias, out_features, in_features)
        return Q8Linear(to_panels(codes), bias, out_features, in_features)
    packed = torch.ops.mkl._mkl_reorder_linear_weight(weight, 16)
    return PackedLinear(packed, weight, bias, out_features, in_features)
