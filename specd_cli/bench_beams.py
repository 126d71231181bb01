"""``specd bench`` for the beam methods: beam-sample, dsbd (its memory-saving variant dsbd-keep-best,
and dsbd-redrafter with ``--redrafter-head``), the peer hf-beam-sample, and sampled sps / vanilla,
at one or more beam widths, in one process.

A benchmark, not a test: it prints and writes numbers and asserts nothing. Per method and width:
tokens/s and the speedup over ``beam-sample`` at the same width (same prompts), τ, quality as the
mean target log-probability per token of the returned sequence (one transformers forward over it,
untimed, the same for every method), answer accuracy on math prompts (the last number of the
answer against the reference's ``#### N``), CPU-seconds per generated token (process CPU time, all
threads: the energy proxy) and the peak KV memory (beam methods: the target's own count over all
beams; sps / vanilla: one session of the output's length in the same engine).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from typing import Any

BEAM_METHODS = ("beam-sample", "dsbd", "dsbd-keep-best", "dsbd-redrafter", "hf-beam-sample")
SAMPLED_METHODS = ("sps", "vanilla")


def add_beam_bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--beam-width", default="4", help="beam methods: width W, or a comma list to sweep (e.g. 2,4)")
    p.add_argument("--min-beam-width", type=int, default=1, help="dsbd: the dynamic width's floor")
    p.add_argument("--width-threshold", type=float, default=0.0, help="dsbd: dynamic width threshold (0 = fixed W)")
    p.add_argument("--length-penalty", type=float, default=1.0, help="beam methods: score / length ** this")
    p.add_argument("--temperature", type=float, default=1.0, help="beam bench: sampling temperature (> 0)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="beam bench: prompt i uses seed + i")


def is_beam_bench(methods: list[str]) -> bool:
    return any(m in BEAM_METHODS for m in methods)


@dataclass
class BeamRun:
    method: str
    width: int
    category: str
    question_id: str
    new_tokens: int
    wall_s: float
    cpu_s: float
    target_steps: int
    logprob_per_token: float
    peak_kv_bytes: int
    math_correct: bool | None


def run_beam_bench(args: argparse.Namespace, methods: list[str], prompts: list[dict[str, Any]]) -> int:
    from tqdm import tqdm

    unknown = [m for m in methods if m not in BEAM_METHODS + SAMPLED_METHODS]
    if unknown:
        allowed = ", ".join(BEAM_METHODS + SAMPLED_METHODS)
        raise SystemExit(f"specd bench: {unknown} cannot run with the beam methods; use {allowed}")
    widths = [int(w) for w in str(args.beam_width).split(",") if w]
    if args.temperature <= 0:
        raise SystemExit("specd bench: the beam methods sample; pass --temperature > 0")
    if args.transport != "inproc":
        print("specd bench: beam methods run in-process (CPU time is counted per process)", file=sys.stderr)
    bench = _BeamStack(args)
    jobs = [(m, w) for m in methods for w in (widths if m in BEAM_METHODS else [1])]
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"specd bench (beams): {len(prompts)} prompts, jobs {jobs}", file=sys.stderr)
    warm = bench.prompt_ids("Say hello.")
    for method, width in jobs:  # not recorded: first calls pay one-off costs
        bench.run(method, width, warm, 8, 0)
    runs: list[BeamRun] = []
    bar = tqdm(total=len(prompts) * len(jobs), desc="bench", unit="run", file=sys.stderr)
    for i, row in enumerate(prompts):
        prompt = bench.prompt_ids(row["turns"][0])
        for method, width in jobs:
            bar.set_postfix_str(f"{row['category']}/{method} W={width}")
            tokens, wall, cpu, steps, kv = bench.run(method, width, prompt, args.max_new_tokens, args.seed + i)
            text = bench.decode(tokens)
            runs.append(
                BeamRun(
                    method,
                    width,
                    row["category"],
                    str(row["question_id"]),
                    len(tokens),
                    wall,
                    cpu,
                    steps,
                    bench.logprob(prompt, tokens) / max(1, len(tokens)),
                    kv,
                    _math_correct(text, row) if row["category"] in ("math_reasoning", "math") else None,
                )
            )
            bar.update()
    bar.close()
    summary = summarize(runs)
    _write(args, runs, summary)
    print((args.out / "results.md").read_text())
    return 0


class _BeamStack:
    """specd's in-process stack (target, draft, orchestrator) plus transformers on the same weights."""

    def __init__(self, args: argparse.Namespace) -> None:
        from draft_service.service import DraftConfig, DraftWorker
        from orchestrator.service import Orchestrator
        from spec_decode.model_thread import model_thread
        from spec_decode.models import load_tokenizer
        from target_service.verifier import TargetConfig, TargetVerifier

        self.args = args
        self.target = TargetVerifier.from_config(
            TargetConfig(model=args.target, device=args.device, engine=args.engine, weight_format=args.weight_format)
        )
        draft = DraftWorker.from_config(
            DraftConfig(draft_model=args.draft_model, device=args.device or "auto", redrafter_head=args.redrafter_head)
        )
        self.tokenizer, _ = load_tokenizer(args.target)
        self.orch = Orchestrator(self.target, draft, self.tokenizer)
        self.model = self.target.loaded.model  # the transformers model the target was built from
        self._thread = model_thread()

    def prompt_ids(self, text: str) -> list[int]:
        from orchestrator.request import GenerateParams
        from orchestrator.text import prompt_tokens

        return prompt_tokens(self.tokenizer, GenerateParams(prompt=text))

    def decode(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True))

    def run(self, method: str, width: int, prompt: list[int], max_new: int, seed: int) -> tuple:
        """(tokens, wall_s, cpu_s, target_steps, peak_kv_bytes) of one generation."""
        if method == "hf-beam-sample":
            return self._run_hf(width, prompt, max_new, seed)
        from orchestrator.request import GenerateParams
        from spec_decode.beam_types import BeamParams
        from spec_decode.types import SamplingParams

        a = self.args
        params = GenerateParams(
            prompt_token_ids=tuple(prompt),
            method="dsbd" if method == "dsbd-keep-best" else method,
            max_new_tokens=max_new,
            sampling=SamplingParams(a.temperature, a.top_k, a.top_p, seed),
            num_draft_tokens=a.num_draft_tokens,
            beam=BeamParams(
                width=width,
                min_width=min(a.min_beam_width, width),
                threshold=a.width_threshold,
                length_penalty=a.length_penalty,
                keep_best_only=method == "dsbd-keep-best",
            ),
        )
        cpu = time.process_time()
        result = self.orch.generate(params)
        cpu = time.process_time() - cpu
        tokens = list(result.token_ids)
        kv = result.peak_kv_bytes or self._one_sequence_kv(prompt + tokens)
        return tokens, result.stats.wall_s, cpu, result.stats.target_steps, kv

    def _run_hf(self, width: int, prompt: list[int], max_new: int, seed: int) -> tuple:
        import torch

        a = self.args
        ids = torch.tensor([prompt], device=self.target.engine.device)

        def generate() -> Any:
            torch.manual_seed(seed)
            with torch.inference_mode():
                return self.model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    num_beams=width,
                    do_sample=True,
                    temperature=a.temperature,
                    top_k=a.top_k,  # 0 = off, as for specd (None would mean the model's default)
                    top_p=a.top_p,
                    length_penalty=a.length_penalty,
                    max_new_tokens=max_new,
                    eos_token_id=list(self.target.loaded.vocab.eos_token_ids),
                    pad_token_id=0,
                )

        cpu, start = time.process_time(), time.perf_counter()
        out = self._thread.run(generate)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        tokens = [int(t) for t in out[0, len(prompt) :].tolist()]
        while tokens and tokens[-1] == 0:  # padding after an early EOS
            tokens.pop()
        return tokens, wall, cpu, len(tokens), 0

    def _one_sequence_kv(self, tokens: list[int]) -> int:
        """KV bytes of one session holding ``tokens`` in the same engine (sps / vanilla)."""
        from spec_decode.types import SamplingParams

        self.target.prefill("bench-kv-probe", tokens, SamplingParams())
        try:
            return self.target.sessions.kv_bytes("bench-kv-probe")
        finally:
            self.target.release("bench-kv-probe")

    def logprob(self, prompt: list[int], tokens: list[int]) -> float:
        """The target's log-probability of ``tokens`` after ``prompt`` (one transformers forward)."""
        if not tokens:
            return 0.0
        return float(self._thread.run(sequence_logprob, self.model, prompt, tokens))


def sequence_logprob(model: Any, prompt: list[int], tokens: list[int]) -> float:
    """``log p(tokens | prompt)`` under a transformers causal LM: one forward, float64 softmax (run it
    on the thread that owns the model). ``tokens`` must not be empty."""
    import torch

    device = next(model.parameters()).device
    ids = torch.tensor([prompt + tokens], device=device)  # [1, P + T]
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1].to(torch.float64)  # [T, V]
    logp = torch.log_softmax(logits, dim=-1)
    return float(logp.gather(1, torch.tensor(tokens, device=device)[:, None]).sum())


def _math_correct(text: str, row: dict[str, Any]) -> bool | None:
    refs = row.get("reference") or []
    want = re.search(r"####\s*(-?[\d,.]+)", refs[0]) if refs else None
    if want is None:
        return None
    numbers = re.findall(r"-?\d[\d,]*\.?\d*", text)
    if not numbers:
        return False
    return _num(numbers[-1]) == _num(want.group(1))


def _num(s: str) -> float | None:
    try:
        return float(s.replace(",", "").rstrip("."))
    except ValueError:
        return None


def _key(run: BeamRun) -> str:
    return f"{run.method} W={run.width}" if run.method in BEAM_METHODS else run.method


def summarize(runs: list[BeamRun]) -> dict[str, Any]:
    by: dict[str, list[BeamRun]] = defaultdict(list)
    for run in runs:
        by[_key(run)].append(run)

    def tps(rs: list[BeamRun]) -> float:
        wall = sum(r.wall_s for r in rs)
        return sum(r.new_tokens for r in rs) / wall if wall else 0.0

    summary: dict[str, Any] = {}
    for name, rs in by.items():
        base = by.get(f"beam-sample W={rs[0].width}") if rs[0].method in BEAM_METHODS else None
        math = [r.math_correct for r in rs if r.math_correct is not None]
        tokens = sum(r.new_tokens for r in rs)
        summary[name] = {
            "runs": len(rs),
            "tokens_per_s": tps(rs),
            "speedup_vs_beam_sample": tps(rs) / tps(base) if base and tps(base) else None,
            "tau": tokens / max(1, sum(r.target_steps for r in rs)),
            "logprob_per_token": statistics.mean(r.logprob_per_token for r in rs),
            "logprob_per_token_stdev": statistics.stdev(r.logprob_per_token for r in rs) if len(rs) > 1 else 0.0,
            "cpu_s_per_token": sum(r.cpu_s for r in rs) / max(1, tokens),
            "peak_kv_mib": max(r.peak_kv_bytes for r in rs) / 2**20,
            "math_accuracy": sum(math) / len(math) if math else None,
        }
    return summary


def _write(args: argparse.Namespace, runs: list[BeamRun], summary: dict[str, Any]) -> None:
    meta = {k: str(v) for k, v in vars(args).items() if k != "fn"} | {"command": " ".join(sys.argv)}
    (args.out / "results.json").write_text(
        json.dumps({"meta": meta, "runs": [asdict(r) for r in runs], "summary": summary}, indent=1)
    )
    lines = [
        "| method | tok/s | speedup vs beam-sample | τ | log-prob/token (± sd) | CPU-s/token | peak KV MiB "
        "| math acc |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        speed = "–" if s["speedup_vs_beam_sample"] is None else f"{s['speedup_vs_beam_sample']:.2f}×"
        acc = "–" if s["math_accuracy"] is None else f"{s['math_accuracy']:.0%}"
        kv = f"{s['peak_kv_mib']:.2f}" if s["peak_kv_mib"] else "–"
        lines.append(
            f"| {name} | {s['tokens_per_s']:.1f} | {speed} | {s['tau']:.2f} | {s['logprob_per_token']:.3f} "
            f"(± {s['logprob_per_token_stdev']:.3f}) | {s['cpu_s_per_token']:.3f} | {kv} | {acc} |"
        )
    lines.append("")
    lines.append(
        "Speedup = tokens/s over beam-sample at the same width on the same prompts; log-prob/token = the "
        "target's mean log-probability per token of the returned sequence; CPU-s/token = process CPU time per "
        "generated token; peak KV: beam methods count all beams, sps/vanilla one sequence (hf-beam-sample: –)."
    )
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
