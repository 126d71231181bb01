"""``specd bench-verify``: the cost of one target pass over k new tokens, specd engine vs transformers.

Speculative decoding pays only when scoring k draft tokens costs about one decode step, so
this is the number every drafter's speedup rests on. For each k the command times, on a warm
cache of ``--context`` tokens, one forward pass over k new tokens:

* ``specd``: the target service's engine (``--engine``, default the native one) scoring a
  chain of k tokens (the pending token plus k-1 draft nodes) with its tree mask, then dropping
  them again (an O(1) truncate);
* ``transformers``: the same model's own forward (``model(input_ids[1, k],
  past_key_values=cache)``, eager PyTorch, its default attention) on a ``DynamicCache``, then
  ``cache.crop`` back.

For each k, each engine's warm-up and timed passes run back to back on the same thread (as a
dedicated server runs them; interleaving let one engine start on caches the other had just
flushed), one engine right after the other so background load hits both alike; the median of
``--repeats`` runs is reported. Where the engine has the argmax screen, ``specd_greedy`` times
the pass greedy verification runs (each row's argmax, not its logits), alternating with
``specd``'s passes. A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEFAULT_TOKENS = "1,2,4,8,16,32,64"


def add_bench_verify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="smollm2", help="target model spec (default: SmolLM2-135M-Instruct)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when present)")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: fp32 CPU, bf16 CUDA)")
    p.add_argument("--engine", default="auto", help="specd engine: auto | native | hf")
    p.add_argument("--weight-format", default=None, help="native engine weights: auto | dense | packed | q8 | q8a8")
    p.add_argument(
        "--cuda-graphs", default="auto", choices=("auto", "on", "off"), help="native engine: CUDA graph replay"
    )
    p.add_argument(
        "--argmax-screen",
        default="on",
        choices=("on", "off"),
        help="native engine, q8 LM head: also time greedy passes (each row's argmax from the int8 screen)",
    )
    p.add_argument("--tokens", default=DEFAULT_TOKENS, help=f"comma-separated k values (default {DEFAULT_TOKENS})")
    p.add_argument("--context", type=int, default=300, help="tokens already in the cache (default 300)")
    p.add_argument(
        "--prompts",
        type=Path,
        default=None,
        help="real text instead of random tokens: contexts from this JSONL's first turns, continued by "
        "the target's own greedy output, and chains of what it writes next (the argmax screen's work "
        "depends on the logits: random tokens give flat ones)",
    )
    p.add_argument("--real-contexts", type=int, default=4, help="with --prompts: how many contexts (passes cycle)")
    p.add_argument("--repeats", type=int, default=15, help="timed passes per k and engine (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed passes per k and engine first")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument(
        "--json",
        action="store_true",
        help='print one object {"specd": {k: ms}, "transformers": {k: ms}} (plus "specd_greedy" with the screen)',
    )


def parse_tokens(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"specd bench-verify: --tokens must be comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise SystemExit(f"specd bench-verify: --tokens needs positive integers, got {text!r}")
    return sorted(set(values))


def run_bench_verify(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm
    from transformers import DynamicCache

    from spec_decode.models import load_model
    from target_service.engine import build_engine

    tokens = parse_tokens(args.tokens)
    if args.threads:
        torch.set_num_threads(args.threads)
    loaded = load_model(args.target, args.device, args.dtype)
    model = loaded.model
    engine = build_engine(
        model,
        args.engine,
        args.weight_format,
        args.context + max(tokens) + 8,
        cuda_graphs=args.cuda_graphs,
        argmax_screen=args.argmax_screen == "on",
    )
    vocab = engine.vocab_size
    rng = random.Random(0)
    device = engine.device

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    # specd: the pending token + (k - 1) chain nodes over `context` committed tokens. Random tokens
    # by default; with --prompts, real text: each prompt (chat template) continued by the target's
    # own greedy output to `context` tokens, and the chain is what the target writes next.
    sessions: list[tuple[Any, int, list[int]]] = []  # (cache, pending token, the next tokens)
    if args.prompts:
        texts = _prompt_contexts(engine, loaded.tokenizer, args.prompts, args.real_contexts, args.context, max(tokens))
        context = texts[0][0]
        for ctx, after in texts:
            cache = engine.new_cache()
            sessions.append((cache, engine.prefill(cache, ctx), after))
    else:
        context = [rng.randrange(vocab) for _ in range(args.context + 1)]
        cache = engine.new_cache()
        sessions.append((cache, engine.prefill(cache, context), []))
    turns = itertools.cycle(sessions)  # passes take the contexts in turn

    def specd_pass(k: int, greedy: bool = False) -> None:
        cache, pending, after = next(turns)
        base = engine.cache_len(cache)
        chain = after[: k - 1] if after else [rng.randrange(vocab) for _ in range(k - 1)]
        item = (cache, pending, torch.arange(-1, k - 2, device="cpu"), chain)
        if greedy:  # what greedy verification asks for: each row's argmax (the engine's screen, where it has one)
            engine.score_trees([item], [True])
        else:
            engine.score_trees([item])
        engine.truncate(cache, base)

    # transformers: its own forward over k new tokens on a DynamicCache of `context` tokens.
    hf_cache = DynamicCache()
    with torch.inference_mode():
        model(input_ids=torch.tensor([context[:-1]], device=device), past_key_values=hf_cache, use_cache=True)

    def hf_pass(k: int) -> None:
        ids = torch.tensor([[rng.randrange(vocab) for _ in range(k)]], device=device)  # [1, k]
        with torch.inference_mode():
            model(input_ids=ids, past_key_values=hf_cache, use_cache=True)
        hf_cache.crop(-k)  # drop the k new tokens again (transformers 5: negative = tokens to remove)

    runners: dict[str, Callable[[int], None]] = {"specd": specd_pass, "transformers": hf_pass}
    if getattr(engine, "screen", None) is not None:  # greedy passes: the argmax screen instead of the LM head
        runners["specd_greedy"] = lambda k: specd_pass(k, greedy=True)
    times: dict[str, dict[int, list[float]]] = {name: {k: [] for k in tokens} for name in runners}
    total = len(tokens) * len(runners) * (args.warmup + args.repeats)
    with tqdm(total=total, desc="bench-verify", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
        for k in tokens:
            # Each engine's passes back to back (warm-up first), as a dedicated server runs them:
            # interleaved, each engine's pass would start on caches the other had just flushed. The
            # specd engine's two kinds of pass (logits, greedy ids) share its weights: they alternate,
            # so background load hits both alike.
            for group in (("transformers",), tuple(n for n in runners if n != "transformers")):
                for _ in range(args.warmup):
                    for name in group:
                        runners[name](k)
                        bar.update()
                for _ in range(args.repeats):
                    for name in group:
                        sync()
                        start = time.perf_counter()
                        runners[name](k)
                        sync()
                        times[name][k].append((time.perf_counter() - start) * 1e3)
                        bar.update()
    medians = {
        name: {str(k): round(statistics.median(v), 3) for k, v in per_k.items()} for name, per_k in times.items()
    }
    meta = _meta(engine, loaded, torch, args)
    if args.json:
        print(json.dumps(medians))
        print(json.dumps({"meta": meta}), file=sys.stderr)
        return 0
    print(_table(medians, tokens, meta))
    return 0


def _prompt_contexts(
    engine: Any, tokenizer: Any, path: Path, count: int, context: int, longest: int
) -> list[tuple[list[int], list[int]]]:
    """``count`` real contexts from the first turns of ``path`` (JSONL, Spec-Bench's format): the
    chat-templated prompt (its last ``context`` tokens) continued by the target's own greedy
    output; returns (the ``context + 1`` tokens before the chain, the next ``longest`` tokens)."""
    import torch

    from orchestrator.request import GenerateParams
    from orchestrator.text import prompt_tokens

    turns = [json.loads(line)["turns"][0] for line in path.read_text().splitlines() if line.strip()]
    if not turns:
        raise SystemExit(f"specd bench-verify: no prompts in {path}")
    step = max(1, len(turns) // count)
    out = []
    for text in turns[::step][:count]:
        ids = prompt_tokens(tokenizer, GenerateParams(prompt=text))[-(context + 1) :]
        cache = engine.new_cache()
        pending = engine.prefill(cache, ids)
        written: list[int] = []
        empty = torch.zeros(0, dtype=torch.long)
        while len(ids) + len(written) < context + 1 + longest:  # the target's own greedy continuation
            (row,) = engine.score_trees([(cache, pending, empty, [])], [True])
            engine.commit(cache, engine.cache_len(cache) - 1, [0])
            written.append(pending)
            pending = int(row[0])
        full = ids + written + [pending]
        out.append((full[-(longest + context + 1) : -longest], full[-longest:]))
    return out


def _meta(engine: Any, loaded: Any, torch: Any, args: argparse.Namespace) -> dict[str, Any]:
    return {
        "target": args.target,
        "device": str(engine.device),
        "dtype": str(engine.dtype).removeprefix("torch."),
        "engine": engine.kind,
        "weight_format": getattr(engine, "weight_format", "-"),
        "cuda_graphs": getattr(engine, "static", None) is not None,
        "argmax_screen": getattr(engine, "screen", None) is not None,
        **_screen_work(engine),
        "kernel_simd": _kernel_simd(engine),
        "context": args.context,
        "text": f"{args.prompts} ({args.real_contexts} contexts)" if args.prompts else "random tokens",
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "hf_attention": loaded.model.config._attn_implementation,
    }


def _screen_work(engine: Any) -> dict[str, Any]:
    """What the argmax screen did over the greedy passes: exact comparisons and fallbacks per row."""
    counts, screen = getattr(engine, "screen_counts", None), getattr(engine, "screen", None)
    if counts is None or screen is None or not counts.rows:
        return {}
    return {
        "screen_mib": round(screen.nbytes() / 2**20, 1),
        "screen_candidates_per_row": round(counts.candidates / counts.rows, 2),
        "screen_fallback_rows": f"{counts.fallbacks}/{counts.rows}",
    }


def _kernel_simd(engine: Any) -> int | str:
    """The C kernels' vector width (512, 256 or 0) where the engine runs them, else "-"."""
    if engine.device.type != "cpu":
        return "-"
    from specd_kernels.q8 import simd_width

    return simd_width()


def _table(medians: dict[str, dict[str, float]], tokens: list[int], meta: dict[str, Any]) -> str:
    head = ", ".join(f"{k}={v}" for k, v in meta.items())
    greedy = "specd_greedy" in medians  # the engine's argmax screen: greedy verification's passes
    extra_head = " specd greedy ms | greedy t(k)/t(1) | greedy / transformers |" if greedy else ""
    lines = [
        f"# {head}",
        "| k | specd ms | specd t(k)/t(1) | transformers ms | transformers t(k)/t(1) | specd / transformers |"
        + extra_head,
        "|---:|---:|---:|---:|---:|---:|" + ("---:|---:|---:|" if greedy else ""),
    ]
    s1, h1 = medians["specd"][str(tokens[0])], medians["transformers"][str(tokens[0])]
    for k in tokens:
        s, h = medians["specd"][str(k)], medians["transformers"][str(k)]
        line = f"| {k} | {s:.1f} | {s / s1:.2f} | {h:.1f} | {h / h1:.2f} | {s / h:.2f} |"
        if greedy:
            g, g1 = medians["specd_greedy"][str(k)], medians["specd_greedy"][str(tokens[0])]
            line += f" {g:.1f} | {g / g1:.2f} | {g / h:.2f} |"
        lines.append(line)
    return "\n".join(lines)
