"""``specd bench-linear``: one linear layer of the target, each weight format, 1 to 64 rows.

For whoever tunes the CPU kernels: where :mod:`specd_cli.bench_verify` times a whole pass, this
times the matmuls a pass is made of -- the target's own first-layer QKV, O, gate/up and down
matrices and its LM head -- in each weight format, on ``M`` rows, with the weights warm in
cache (so it measures the kernel's arithmetic, not the memory traffic of a real step, where 30
layers' weights stream from DRAM). Prints median ms per call and G multiply-adds per second.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

DEFAULT_ROWS = "1,4,8,16,32,64"


def add_bench_linear_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="smollm2", help="target model spec (default: SmolLM2-135M-Instruct)")
    p.add_argument("--formats", default="q8,q8a8,packed", help="comma-separated weight formats to time")
    p.add_argument("--rows", default=DEFAULT_ROWS, help=f"comma-separated row counts M (default {DEFAULT_ROWS})")
    p.add_argument("--repeats", type=int, default=30, help="timed calls per matrix, format and M (median)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise SystemExit(f"specd bench-linear: {flag} must be comma-separated integers, got {text!r}") from None
    if not values or values[0] < 1:
        raise SystemExit(f"specd bench-linear: {flag} needs positive integers, got {text!r}")
    return values


def run_bench_linear(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from spec_decode.models import load_model
    from specd_kernels.linear import WEIGHT_FORMATS, make_linear, resolve_format
    from specd_kernels.q8 import has_vnni, simd_width

    rows = _ints(args.rows, "--rows")
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in WEIGHT_FORMATS or f == "auto"]
    if bad or not formats:
        raise SystemExit(f"specd bench-linear: unknown --formats {bad}; use some of {', '.join(WEIGHT_FORMATS[1:])}")
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.target, "cpu", "float32")
    for fmt in formats:
        resolve_format(fmt, torch.device("cpu"), torch.float32)  # a format this machine cannot run fails here
    layer = loaded.model.model.layers[0]  # fused as the native engine fuses them
    attn, mlp = layer.self_attn, layer.mlp
    matrices = {
        "qkv": torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]),
        "o": attn.o_proj.weight,
        "gate_up": torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]),
        "down": mlp.down_proj.weight,
        "lm_head": loaded.model.get_output_embeddings().weight,
    }
    results: dict[str, dict[str, dict[str, float]]] = {}  # "name [NxK]" -> "format (Kernel)" -> M -> ms
    sizes: dict[str, int] = {}  # "name [NxK]" -> N * K
    bar = tqdm(total=len(matrices) * len(formats) * len(rows), desc="bench-linear", file=sys.stderr)
    with torch.inference_mode():
        for name, weight in matrices.items():
            n, k = (int(s) for s in weight.shape)
            for fmt in formats:
                kernel = make_linear(weight, None, fmt)
                kind = type(kernel).__name__
                for m in rows:
                    x = torch.randn(m, k)
                    for _ in range(3):
                        kernel(x)
                    times = []
                    for _ in range(args.repeats):
                        start = time.perf_counter()
                        kernel(x)
                        times.append(time.perf_counter() - start)
                    ms = statistics.median(times) * 1e3
                    key = f"{name} [{n}x{k}]"
                    sizes[key] = n * k
                    results.setdefault(key, {}).setdefault(f"{fmt} ({kind})", {})[str(m)] = round(ms, 4)
                    bar.update()
    bar.close()
    meta = {
        "target": args.target,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "torch": torch.__version__,
        "simd": simd_width(),  # 512, 256 (AVX2 + FMA) or 0: q8 then runs element by element
        "vnni": has_vnni(),  # without it q8a8 runs element by element (same bits, slow)
    }
    if args.json:
        print(json.dumps({"meta": meta, "ms": results}))
        return 0
    print(_table(results, sizes, rows, meta))
    return 0


def _table(
    results: dict[str, dict[str, dict[str, float]]], sizes: dict[str, int], rows: list[int], meta: dict[str, Any]
) -> str:
    lines = [f"# {', '.join(f'{k}={v}' for k, v in meta.items())}; cells: median ms (G multiply-adds/s)"]
    lines.append("| matrix | format | " + " | ".join(f"M={m}" for m in rows) + " |")
    lines.append("|---|---|" + "---:|" * len(rows))
    for name, by_format in results.items():
        for fmt, per_m in by_format.items():
            cells = [f"{per_m[str(m)]:.3f} ({m * sizes[name] / per_m[str(m)] / 1e6:.0f})" for m in rows]
            lines.append(f"| {name} | {fmt} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
