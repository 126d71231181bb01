"""Exact int8 weights: GGUF-style group-quantized checkpoints served from their 1-byte codes.

Many deployed checkpoints (the default SmolLM2 target among them: Q4_1 linear layers, a Q8_0
embedding) were quantized in groups of 32 with ``w = fl(fl(d * q) + m)``. Dequantized to fp32
they cost 4 bytes a weight on every decode step, though each weight carries at most 8 bits.
:func:`quantize_exact` recovers ``(q, d, m)`` from the fp32 weights and proves, element by
element, that they reproduce them bit for bit; only then does the engine use the C kernel
(``csrc/q8_linear.c``) that streams the int8 codes instead of the floats. A weight that does not
reproduce exactly stays fp32: this format never changes the model.

The kernel is compiled on first use with the system C compiler (``cc -O3 -march=native``: AVX-512
where the CPU has it, else AVX2 + FMA, else element by element, the same bits each way) into
``$SPECD_CACHE/kernels`` and loaded with ctypes; its OpenMP runtime is the one torch already
loaded (same soname), so both share one thread team. No compiler, or a K that is not a
multiple of 32: the format is unavailable and ``auto`` falls back to MKL-packed fp32.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger(__name__)

GROUP = 32
PANEL = 32  # output features per panel of the kernel's layout (csrc/q8_linear.c)
_SOURCE = Path(__file__).with_name("csrc") / "q8_linear.c"
# one library: the exact linear kernel, its int8-activation variant, and the per-layer ops
_SOURCES = (_SOURCE, _SOURCE.with_name("q8a8_linear.c"), _SOURCE.with_name("cpu_ops.c"))
_LIB: ctypes.CDLL | None = None
_LIB_ERROR: str | None = None
_LIB_LOCK = threading.Lock()


# ---- the compiled kernel ----------------------------------------------------------------------


def _cache_dir() -> Path:
    return Path(os.environ.get("SPECD_CACHE", Path.home() / ".cache" / "specd")) / "kernels"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def load_library() -> ctypes.CDLL | None:
    """The compiled kernel (built once per source, compiler and CPU), or None if it cannot be built."""
    global _LIB, _LIB_ERROR
    with _LIB_LOCK:
        if _LIB is not None or _LIB_ERROR is not None:
            return _LIB
        try:
            _LIB = _build_and_load()
        except (OSError, subprocess.CalledProcessError, FileNotFoundError) as exc:
            _LIB_ERROR = str(exc)
            log.warning("q8 kernel unavailable (%s); int8 weights disabled", exc)
        return _LIB


def library_error() -> str | None:
    load_library()
    return _LIB_ERROR


def _build_and_load() -> ctypes.CDLL:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise FileNotFoundError("no C compiler (cc/gcc) on PATH")
    source = b"".join(path.read_bytes() for path in _SOURCES)
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    key = hashlib.sha256(source + version.encode() + _cpu_flags().encode()).hexdigest()[:16]
    out = _cache_dir() / f"q8_linear-{key}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        cmd = [compiler, "-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC"]
        sources = [str(path) for path in _SOURCES]
        subprocess.run([*cmd, *sources, "-o", str(tmp)], check=True, capture_output=True, text=True)
        tmp.replace(out)  # atomic: a concurrent builder never loads a half-written file
    return declare(ctypes.CDLL(str(out)))


def declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Give a build of ``_SOURCES`` its functions' ctypes signatures (also for tests' other builds)."""
    ptr, i64 = ctypes.c_void_p, ctypes.c_int64
    lib.q8_linear.restype = ctypes.c_int
    lib.q8_linear.argtypes = [ptr, i64, i64, ptr, ptr, ptr, i64, ptr, ptr, ptr, ctypes.c_int]
    lib.q8a8_linear.restype = ctypes.c_int
    lib.q8a8_linear.argtypes = [ptr, i64, i64, ptr, ptr, ptr, ptr, i64, ptr, ptr, ptr, ctypes.c_int, ctypes.c_int]
    f32, c_int = ctypes.c_float, ctypes.c_int
    lib.q8a8_screen.restype = ctypes.c_int
    lib.q8a8_screen.argtypes = [ptr, i64, i64, *[ptr] * 5, f32, i64, *[ptr] * 4, c_int, c_int]
    lib.q8a8_pick.restype = None
    lib.q8a8_pick.argtypes = [ptr, i64, i64, ptr, ptr, ptr, i64, *[ptr] * 4, c_int, ptr, ptr, c_int]
    lib.q8a8_has_vnni.restype = ctypes.c_int
    lib.q8a8_path.restype = ctypes.c_int
    lib.q8a8_path.argtypes = [ctypes.c_int]
    lib.q8_simd_width.restype = ctypes.c_int
    for name, args in (
        ("cpu_rms_norm", [ptr, i64, i64, ptr, ctypes.c_float, ptr]),
        ("cpu_rope", [ptr, i64, i64, i64, i64, ptr, ptr]),
        (
            "cpu_attention",
            [ptr, i64, ptr, i64, ptr, i64, i64, i64, i64, i64, *[ptr] * 5, ctypes.c_float, ptr, ctypes.c_int],
        ),
    ):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = (ctypes.c_int if name == "cpu_attention" else None), args
    lib.q8_group_size.restype = ctypes.c_int
    lib.q8_panel_size.restype = ctypes.c_int
    if lib.q8_group_size() != GROUP or lib.q8_panel_size() != PANEL:
        raise OSError("q8 kernel group or panel size mismatch")
    return lib


# ---- exact recovery of the codes ---------------------------------------------------------------


@dataclass(frozen=True)
class Q8Weight:
    q: torch.Tensor  # [N, K] int8 codes
    d: torch.Tensor  # [N, K/32] fp32 scale per group
    m: torch.Tensor  # [N, K/32] fp32 offset per group


def quantize_exact(weight: torch.Tensor) -> Q8Weight | None:
    """Codes ``q`` (int8) and per-group ``d``, ``m`` with ``fl(fl(d*q) + m) == weight`` exactly.

    Two hypotheses per group of 32: symmetric (``m = 0``, Q8_0/Q4_0-style, ``d`` from the
    largest magnitude) and affine (``m = min``, Q4_1-style, ``d`` from the range). GGUF stores
    ``d`` in float16, so a few float16 neighbours of the estimate are tried. Returns None unless
    every group of the tensor is reproduced bit for bit.
    """
    if weight.dtype != torch.float32 or weight.dim() != 2 or weight.shape[1] % GROUP:
        return None
    n, k = weight.shape
    groups = weight.detach().reshape(-1, GROUP)  # [N G, 32]
    # Rank the hypotheses on a sample first: a Q4_1 tensor is done in one full pass, not ten.
    sample = groups[:: max(1, groups.shape[0] // 512)]
    ranked = sorted(_CANDIDATES, key=lambda c: -int(_attempt(sample, *c)[0].sum()))
    codes = torch.empty(groups.shape, dtype=torch.int8)
    scales = torch.empty(groups.shape[0], dtype=torch.float32)
    offsets = torch.empty(groups.shape[0], dtype=torch.float32)
    todo: torch.Tensor | None = None  # None = every group (no gather needed)
    for candidate in ranked:
        w = groups if todo is None else groups[todo]  # [T, 32]
        ok, q, d, offset = _attempt(w, *candidate)
        if todo is None and bool(ok.all()):
            codes.copy_(q.to(torch.int8))
            scales.copy_(d)
            offsets.copy_(offset)
            todo = torch.empty(0, dtype=torch.long)
            break
        hit = ok.nonzero().squeeze(1) if todo is None else todo[ok]
        codes[hit] = q[ok].to(torch.int8)
        scales[hit] = d[ok]
        offsets[hit] = offset[ok]
        todo = (~ok).nonzero().squeeze(1) if todo is None else todo[~ok]
        if not todo.numel():
            break
    if todo is None or todo.numel():
        return None
    return Q8Weight(codes.reshape(n, k), scales.reshape(n, -1), offsets.reshape(n, -1))


# (affine, levels, float16 ulp step): Q4_1 (w = d q + min), Q8_0 (w = d q), Q4_0 (w = d (q - 8)).
_CANDIDATES = [
    (affine, levels, step) for affine, levels in ((True, 15), (False, 127), (False, 8)) for step in (0, -1, 1)
]


def _attempt(
    w: torch.Tensor, affine: bool, levels: int, step: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Try one hypothesis on groups ``w`` ``[T, 32]``: (ok ``[T]``, codes, scale ``[T]``, offset ``[T]``)."""
    lo, hi = w.amin(-1), w.amax(-1)  # [T]
    offset = lo if affine else torch.zeros_like(lo)
    estimate = (hi - lo) / levels if affine else torch.maximum(lo.abs(), hi.abs()) / levels
    d = _f16_neighbour(estimate, step)  # [T]
    safe = torch.where(d == 0, torch.ones_like(d), d)
    q = torch.round((w - offset[:, None]) / safe[:, None]).clamp_(-128, 127)  # [T, 32]
    ok = ((d[:, None] * q) + offset[:, None] == w).all(-1)  # fl(fl(d*q) + m) == w, per group
    return ok, q, d, offset


def _f16_neighbour(x: torch.Tensor, step: int) -> torch.Tensor:
    """``x`` rounded to float16, moved ``step`` float16 ulps, back in float32."""
    h = x.to(torch.float16)
    if step:
        bits = h.view(torch.int16).to(torch.int32) + step
        h = bits.clamp(-32768, 32767).to(torch.int16).view(torch.float16)
    return h.to(torch.float32)


# ---- the linear kernel -------------------------------------------------------------------------


@dataclass(frozen=True)
class Q8Panels:
    """The kernel's layout of a :class:`Q8Weight`: output features in panels of 32, each k-major.

    ``codes[p, k, j] = q[32 p + j, k]``; ``scale``/``shift[p, g, j] = d``/``m[32 p + j, g]``.
    The last panel is padded with zero codes, scales and shifts (its extra columns are never
    written out).
    """

    codes: torch.Tensor  # [P, K, 32] int8
    scale: torch.Tensor  # [P, K/32, 32] fp32
    shift: torch.Tensor  # [P, K/32, 32] fp32


def _panel_layout(t: torch.Tensor) -> torch.Tensor:
    """``[N, C] -> [P, C, 32]``: output features in panels of 32, the last one padded with zeros."""
    n = t.shape[0]
    panels = -(-n // PANEL)
    pad = panels * PANEL - n
    t = torch.nn.functional.pad(t, (0, 0, 0, pad)) if pad else t  # [P*32, C]
    return t.reshape(panels, PANEL, t.shape[1]).transpose(1, 2).contiguous()


def to_panels(weight: Q8Weight) -> Q8Panels:
    return Q8Panels(_panel_layout(weight.q), _panel_layout(weight.d), _panel_layout(weight.m))


class _KernelCall:
    """``kernel(x)`` and the fused residual ``kernel.add_to(out, x)`` over a C kernel's ``_run``."""

    out_features: int

    def _run(self, x: torch.Tensor, res: torch.Tensor | None, y: torch.Tensor) -> None:
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.empty(x.shape[0], self.out_features, dtype=torch.float32)  # [M, N]
        self._run(x, None, y)
        return y

    def add_to(self, out: torch.Tensor, x: torch.Tensor) -> None:
        """``out += x @ W^T + b`` in place (the residual add fused in): the bits of ``out + self(x)``."""
        assert out.is_contiguous() and out.dtype == torch.float32 and out.shape == (x.shape[0], self.out_features)
        self._run(x, out, out)


@dataclass(frozen=True)
class Q8Linear(_KernelCall):
    """``x @ W^T + b`` from exact int8 codes, for any number of rows (prompts included).

    Each output sums its products in one fixed order whatever the number of rows, so a row's
    result is the same alone, in a tree pass, or in a long prompt (``csrc/q8_linear.c``).
    """

    weight: Q8Panels
    bias: torch.Tensor | None  # [N]
    out_features: int
    in_features: int

    def _run(self, x: torch.Tensor, res: torch.Tensor | None, y: torch.Tensor) -> None:
        lib = load_library()
        assert lib is not None  # the format is only chosen when the kernel loaded
        x = x.contiguous()  # [M, K]
        w = self.weight
        status = lib.q8_linear(
            x.data_ptr(), x.shape[0], self.in_features, w.codes.data_ptr(), w.scale.data_ptr(), w.shift.data_ptr(),
            self.out_features, None if self.bias is None else self.bias.data_ptr(),
            None if res is None else res.data_ptr(), y.data_ptr(), torch.get_num_threads(),
        )  # fmt: skip
        if status != 0:
            raise MemoryError(f"q8: no memory for the {self.in_features} x {PANEL} panel buffers")

    def nbytes(self) -> int:
        return self.weight.codes.numel() + 4 * (self.weight.scale.numel() + self.weight.shift.numel())


# ---- int8 activations (the opt-in "q8a8" format) -----------------------------------------------


@dataclass(frozen=True)
class Q8A8Panels:
    """The layout of ``csrc/q8a8_linear.c``: the codes in quads of four k per output feature.

    ``codes[p, k/4, j, k%4] = q[32 p + j, k]``; ``start[p, g, j] = -128 * sum of q[32 p + j]`` over
    group ``g`` (the integer correction for the kernel's activations, stored ``+ 128``);
    ``scale``/``shift`` as in :class:`Q8Panels`. Padded like :class:`Q8Panels`.
    """

    codes: torch.Tensor  # [P, K/4, 32, 4] int8
    start: torch.Tensor  # [P, K/32, 32] int32
    scale: torch.Tensor  # [P, K/32, 32] fp32
    shift: torch.Tensor  # [P, K/32, 32] fp32
    max_abs: int  # max |q|: picks the kernel's AVX2 route (byte products must not saturate)


def to_a8_panels(weight: Q8Weight) -> Q8A8Panels:
    n, k = weight.q.shape
    sums = weight.q.to(torch.int32).reshape(n, k // GROUP, GROUP).sum(-1)  # [N, K/32]
    codes = _panel_layout(weight.q)  # [P, K, 32]
    codes = codes.reshape(codes.shape[0], k // 4, 4, PANEL).transpose(2, 3).contiguous()  # [P, K/4, 32, 4]
    start = _panel_layout((-128 * sums).to(torch.int32))  # [P, K/32, 32] (sum() widened to int64)
    max_abs = int(weight.q.to(torch.int32).abs().max()) if weight.q.numel() else 0
    return Q8A8Panels(codes, start, _panel_layout(weight.d), _panel_layout(weight.m), max_abs)


@dataclass(frozen=True)
class Q8A8Linear(_KernelCall):
    """``x @ W^T + b`` with the exact int8 weights and int8 activations (per row, per group of 32).

    Opt-in (weight format ``q8a8``): the rounding of the activations changes the outputs against
    fp32, but each row is still computed on its own in a fixed order, so a tree pass equals
    decoding each branch alone with this same format (``csrc/q8a8_linear.c``).
    """

    weight: Q8A8Panels
    bias: torch.Tensor | None  # [N]
    out_features: int
    in_features: int

    def _run(self, x: torch.Tensor, res: torch.Tensor | None, y: torch.Tensor) -> None:
        lib = load_library()
        assert lib is not None
        x = x.contiguous()  # [M, K]
        w = self.weight
        status = lib.q8a8_linear(
            x.data_ptr(), x.shape[0], self.in_features, w.codes.data_ptr(), w.start.data_ptr(), w.scale.data_ptr(),
            w.shift.data_ptr(), self.out_features, None if self.bias is None else self.bias.data_ptr(),
            None if res is None else res.data_ptr(), y.data_ptr(), torch.get_num_threads(), w.max_abs,
        )  # fmt: skip
        if status != 0:
            raise MemoryError(f"q8a8: no memory to quantize {x.shape[0]} x {self.in_features} activations")

    def nbytes(self) -> int:
        w = self.weight
        return w.codes.numel() + 4 * (w.start.numel() + w.scale.numel() + w.shift.numel())


def simd_width() -> int:
    """The vector width the library was built for: 512 (AVX-512), 256 (AVX2 + FMA), 0 (none, or no library).

    ``q8`` gives the same bits at every width; at 0 it runs element by element, far slower than
    MKL's fp32 GEMM, so ``auto`` then picks ``packed``.
    """
    lib = load_library()
    return int(lib.q8_simd_width()) if lib is not None else 0


def a8_path(max_abs: int = 127) -> int:
    """How ``q8a8`` sums codes up to ``max_abs``: 2 = AVX-512 VNNI, 1 = AVX2, 0 = element by element."""
    lib = load_library()
    return int(lib.q8a8_path(max_abs)) if lib is not None else 0


def has_vnni() -> bool:
    """Whether the compiled library runs ``q8a8`` on AVX-512 VNNI (else element by element: same bits, slow)."""
    lib = load_library()
    return bool(lib is not None and lib.q8a8_has_vnni())


# ---- the exact argmax screen (greedy verification) --------------------------------------------

U32 = 2.0**-24  # unit roundoff of float32
SAFE_INPUT = 2.0**50  # the screen's inputs stay below this (no product or bound can overflow float32)
MAX_PANELS = 512  # a row with candidates in more panels of 32 outputs gets the full exact product instead


def screen_coefficient(in_features: int) -> float:
    """``c`` with ``|y_j - e_j| <= c * sum_g s_g A[j, g]`` (``csrc/q8a8_linear.c``, the screen).

    ``e_j`` is the exact kernel's output, ``y_j`` the int8-activation one, ``s_g`` a row's
    activation step in group ``g`` (its largest magnitude over 127) and ``A[j, g] = sum |d q| + |m|``
    over the group. Against the real product ``sum_k x_k w_jk``:

    - activations: ``|x_k - s_g a_k| <= s_g (1/2 + 381 u)`` (``a = round(x * fl(127 / amax))``,
      ``s = fl(amax / 127)``: three roundings of at most ``127 u`` each, relative to a step);
    - the weights: ``w = fl(fl(d q) + m)`` is ``d q + m`` within ``u |w|``, and ``|x_k| <= 127 s_g``;
    - the exact kernel's K fused multiply-adds: ``gamma_K sum |x_k w_jk| <= gamma_K 127 sum_g s_g A``;
    - the int8 kernel's float steps, two fused multiply-adds per group and the product
      ``s * sum(a)``: ``gamma_(2G+3) * 2 * 127 * sum_g s_g A`` (its integer sums are exact).

    ``gamma_n = n u / (1 - n u)``; the total gets 1 % on top for the rounding of ``A`` and of the
    bound itself. For SmolLM2's LM head (K = 576) this is 0.5100.
    """
    groups = in_features // GROUP

    def gamma(n: int) -> float:
        return n * U32 / (1 - n * U32)

    total = 0.5 + 381 * U32 + 127 * U32 + 127 * gamma(in_features) + 2 * 127 * gamma(2 * groups + 3)
    return total * 1.01


@dataclass(frozen=True)
class Q8ArgmaxScreen:
    """The exact argmax of a :class:`Q8Linear`'s outputs at about the cost of int8 activations.

    Greedy verification needs only each row's argmax. The int8-activation product (VNNI: four
    times the multiply-adds per instruction) is within a proven bound of the exact one for every
    output (:func:`screen_coefficient`), so only the outputs whose upper bound reaches the best
    lower bound can be the argmax: on real text a handful of SmolLM2's 49152. The panels of 32
    outputs holding them are rescored with the exact kernel's own code, and the first maximum
    among the candidates wins, as ``torch.argmax`` on the exact logits picks it: the same id,
    always. A row whose candidates fill more than ``max_panels`` panels (a flat row: logits of
    nonsense text are close together) or that is not finite gets the full exact product.
    """

    exact: Q8Linear
    weight: Q8A8Panels
    absw: torch.Tensor  # [P, G, 32] fp32: sum over the group of |d q| + |m|, per output
    coefficient: float
    max_panels: int = MAX_PANELS

    @property
    def out_features(self) -> int:
        return self.exact.out_features

    def nbytes(self) -> int:
        w = self.weight
        return w.codes.numel() + 4 * (w.start.numel() + w.scale.numel() + w.shift.numel() + self.absw.numel())

    def argmax(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """``(ids [M] long, candidates compared exactly, rows that fell back)``: ``exact(x).argmax(-1)``."""
        lib = load_library()
        assert lib is not None
        x = x.contiguous()  # [M, K]
        m, n, w = x.shape[0], self.out_features, self.weight
        if not bool(x.abs().amax() < SAFE_INPUT):  # NaN, inf, or big enough to overflow: the exact product
            return self.exact(x).argmax(dim=-1), 0, m
        panels = w.codes.shape[0]
        hi = torch.empty(m, n, dtype=torch.float32)  # [M, N]
        hmax = torch.empty(m, panels, dtype=torch.float32)  # [M, P]
        lmax = torch.empty(m, panels, dtype=torch.float32)  # [M, P]
        bias = self.exact.bias
        threads = torch.get_num_threads()
        status = lib.q8a8_screen(
            x.data_ptr(), m, self.exact.in_features, w.codes.data_ptr(), w.start.data_ptr(), w.scale.data_ptr(),
            w.shift.data_ptr(), self.absw.data_ptr(), self.coefficient, n, None if bias is None else bias.data_ptr(),
            hi.data_ptr(), hmax.data_ptr(), lmax.data_ptr(), threads, w.max_abs,
        )  # fmt: skip
        if status != 0:
            raise MemoryError(f"q8 screen: no memory to quantize {m} x {self.exact.in_features} activations")
        ids = torch.empty(m, dtype=torch.int64)  # [M]
        counts = torch.empty(m, dtype=torch.int32)  # [M]
        q = self.exact.weight  # the exact kernel's own layout: rescored panels get its bits
        lib.q8a8_pick(
            x.data_ptr(), m, self.exact.in_features, q.codes.data_ptr(), q.scale.data_ptr(), q.shift.data_ptr(), n,
            None if bias is None else bias.data_ptr(), hi.data_ptr(), hmax.data_ptr(), lmax.data_ptr(),
            self.max_panels, ids.data_ptr(), counts.data_ptr(), threads,
        )  # fmt: skip
        missed = (ids < 0).nonzero().squeeze(1)  # [F]
        if missed.numel():
            ids[missed] = self.exact(x[missed]).argmax(dim=-1)
        return ids, int(counts.sum()), int(missed.numel())


def weight_of(panels: Q8Panels, out_features: int) -> Q8Weight:
    """The :class:`Q8Weight` a :class:`Q8Panels` layout was built from (its padding dropped)."""
    p, k, _ = panels.codes.shape
    q = panels.codes.transpose(1, 2).reshape(p * PANEL, k)[:out_features]  # [N, K]
    d = panels.scale.transpose(1, 2).reshape(p * PANEL, -1)[:out_features]  # [N, K/32]
    m = panels.shift.transpose(1, 2).reshape(p * PANEL, -1)[:out_features]  # [N, K/32]
    return Q8Weight(q.contiguous(), d.contiguous(), m.contiguous())


def argmax_screen(kernel: object) -> Q8ArgmaxScreen | None:
    """The screen for a :class:`Q8Linear` where the int8 path has vector code (AVX-512 VNNI or
    AVX2); None for any other kernel or where the sums would run element by element."""
    if not isinstance(kernel, Q8Linear) or kernel.in_features % GROUP:
        return None
    weight = weight_of(kernel.weight, kernel.out_features)
    panels = to_a8_panels(weight)
    if a8_path(panels.max_abs) == 0:
        return None
    n, k = weight.q.shape
    groups = k // GROUP
    q = weight.q.to(torch.float64).reshape(n, groups, GROUP)  # [N, G, 32]
    d = weight.d.to(torch.float64)  # [N, G]
    absw = (d.abs() * q.abs().sum(-1) + GROUP * weight.m.to(torch.float64).abs()).to(torch.float32)  # [N, G]
    absw = torch.nextafter(absw, torch.full_like(absw, float("inf")))  # rounded up, never below the sum
    return Q8ArgmaxScreen(kernel, panels, _panel_layout(absw), screen_coefficient(k))
