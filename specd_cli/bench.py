"""``specd bench``: specd's methods (over real gRPC, optionally in-process too) against the
peers a user would pick instead, on Spec-Bench-shaped prompts, in one process.

A benchmark, not a test: it prints and writes numbers, it asserts nothing. Greedy outputs
of every method are compared with ``hf-generate``'s and differences are reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from spec_decode.budget import TREE_BUDGETS
from spec_decode.types import HEAD_TREES
from specd_cli.bench_beams import add_beam_bench_args, is_beam_bench, run_beam_bench, sequence_logprob

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PROMPTS = REPO_ROOT.parent / "shared" / "bench" / "spec_bench.jsonl"
SPECD_METHODS = ("vanilla", "pld", "sps", "ouroboros", "redrafter", "hybrid")
ABLATION = "ouroboros-without-"  # e.g. ouroboros-without-history_phrases+verification_phrases
HF_METHODS = ("hf-generate", "hf-pld", "hf-assisted")


def _engine_args(args: argparse.Namespace) -> list[str]:
    """The target-process flags that pick the engine the benchmark measures."""
    fmt = ["--weight-format", args.weight_format] if args.weight_format else []
    return ["--engine", args.engine, *fmt, "--argmax-screen", args.argmax_screen]


def add_bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", type=Path, default=DEFAULT_PROMPTS, help="JSONL of {question_id, category, turns}")
    p.add_argument("--per-category", type=int, default=2, help="prompts per category (first N in file order)")
    p.add_argument("--categories", default="", help="comma-separated subset of categories (default: all)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument(
        "--methods",
        default="",
        help="comma-separated; default: hf-generate,vanilla,pld,hf-pld (+ sps,hf-assisted with --draft-model); "
        "with any of beam-sample,dsbd,dsbd-keep-best,hf-beam-sample the beam benchmark runs (sampled); a specd "
        "method with :max or :cost (e.g. pld:max) runs with that per-request tree budget; redrafter or hybrid "
        "with @beams or @nodes (e.g. redrafter@beams:max) drafts that head tree (default nodes)",
    )
    p.add_argument(
        "--transport",
        default="grpc",
        choices=("grpc", "inproc", "both"),
        help="how specd methods run: over gRPC on loopback, in-process, or both (the hop's cost)",
    )
    p.add_argument("--target", default="smollm2")
    p.add_argument("--draft-model", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--num-draft-tokens", type=int, default=0, help="γ for specd methods (0 = method default)")
    p.add_argument(
        "--num-branches", type=int, default=0, help="specd methods: branches/beams per tree (0 = method default)"
    )
    p.add_argument("--hf-pld-tokens", type=int, default=10, help="prompt_lookup_num_tokens for hf-pld")
    p.add_argument("--phrase-store", default=None, help="Ouroboros pool URL for the stack (default: embedded)")
    p.add_argument("--passes", type=int, default=1, help="run the prompt set N times (cold vs warm phrase pool)")
    p.add_argument("--out", type=Path, default=Path("bench-results"))
    p.add_argument(
        "--warmup-prompts",
        type=Path,
        default=None,
        help="before measuring, run every specd method over this other prompt set (not recorded): warms "
        "the Ouroboros pool on text the measured prompts never saw (e.g. ../shared/train/*.jsonl)",
    )
    p.add_argument("--warmup-count", type=int, default=20, help="prompts taken from --warmup-prompts")
    p.add_argument(
        "--verify-lookahead", action="store_true", help="model-free Ouroboros: the Jacobi window rides in verify"
    )
    p.add_argument(
        "--redrafter-head",
        default=None,
        help="ReDrafter head checkpoint for the 'redrafter' method (default: the head shipped for the target)",
    )
    p.add_argument(
        "--redrafter-placement",
        default="draft",
        choices=("draft", "target"),
        help="where the redrafter head drafts: the draft service, or co-located in the target service",
    )
    p.add_argument(
        "--pld-placement",
        default="auto",
        choices=("auto", "draft", "target"),
        help="where pld drafts: co-located in the target service (auto) or in the draft service",
    )
    p.add_argument("--engine", default="auto", help="specd target engine: auto | native | hf")
    p.add_argument(
        "--weight-format",
        default=None,
        help="native engine weights: auto | dense | packed | q8 | q8a8 (q8a8 changes outputs vs fp32: "
        "compare with --reference vanilla)",
    )
    p.add_argument(
        "--argmax-screen",
        default="on",
        choices=("on", "off"),
        help="the target's greedy verification: each row's exact argmax from the int8 screen (on) or the "
        "full LM head (off); the same tokens either way",
    )
    p.add_argument(
        "--reference",
        default="hf-generate",
        choices=("hf-generate", "vanilla"),
        help="whose greedy output every run is checked against: transformers' generate, or specd's own "
        "target-only decoding on the same engine (for a weight format that changes outputs, like q8a8)",
    )
    p.add_argument(
        "--score",
        action="store_true",
        help="also score every output with the target in transformers (untimed): the mean log-probability "
        "per token, to compare the text of formats that change outputs",
    )
    add_beam_bench_args(p)  # beam-sample, dsbd, dsbd-keep-best, hf-beam-sample: specd_cli/bench_beams.py


@dataclass
class Run:
    pass_no: int
    method: str
    transport: str
    category: str
    question_id: str
    new_tokens: int
    wall_s: float
    target_steps: int
    tau: float
    identical_to_reference: bool | None
    first_difference: int | None = None
    draft_s: float = 0.0
    verify_s: float = 0.0
    network_s: float = 0.0
    orchestrate_s: float = 0.0
    prefill_s: float = 0.0
    draft_tokens: int = 0  # draft nodes verified over the run (specd methods; 0 for the HF peers)
    logprob_per_token: float | None = None  # --score: the transformers target's mean log p per new token


def load_prompts(path: Path, per_category: int, categories: set[str]) -> list[dict[str, Any]]:
    if not path.exists():
        raise SystemExit(f"specd bench: prompts file {path} not found (pass --prompts FILE)")
    by_cat: dict[str, list[dict[str, Any]]] = defaultdict(list)
    with path.open() as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                row["turns"][0]
            except (json.JSONDecodeError, KeyError, IndexError, TypeError) as err:
                raise SystemExit(
                    f"specd bench: {path}:{line_no} is not a {{question_id, category, turns}} object ({err})"
                ) from None
            cat = str(row.get("category", "default"))
            if (not categories or cat in categories) and len(by_cat[cat]) < per_category:
                by_cat[cat].append(row)
    return [row for rows in by_cat.values() for row in rows]


class HFRunner:
    """transformers' own decoding on the same weights: generate, prompt lookup, assisted."""

    def __init__(self, target: str, draft: str | None, device: str | None) -> None:
        import torch

        from spec_decode.models import load_model

        self._torch = torch
        from spec_decode.model_thread import model_thread

        # Loaded on the model thread, where it also runs: one OpenMP team per process.
        self.lm = model_thread().run(load_model, target, device)
        self.draft = model_thread().run(load_model, draft, device).model if draft else None
        self.calls = 0
        inner = self.lm.model.forward

        def counting_forward(*a: Any, **kw: Any) -> Any:
            self.calls += 1
            return inner(*a, **kw)

        self.lm.model.forward = counting_forward

    def prompt_ids(self, text: str) -> list[int]:
        from orchestrator.request import GenerateParams
        from orchestrator.text import prompt_tokens

        return prompt_tokens(self.lm.tokenizer, GenerateParams(prompt=text))

    def logprob_per_token(self, prompt: list[int], tokens: list[int]) -> float | None:
        """Mean log-probability of ``tokens`` after ``prompt`` under this model (one forward, float64 softmax)."""
        from spec_decode.model_thread import model_thread

        if not tokens:
            return None
        return float(model_thread().run(sequence_logprob, self.lm.model, prompt, tokens)) / len(tokens)

    def run(self, method: str, prompt: list[int], max_new: int, pld_tokens: int) -> tuple[list[int], float, int]:
        from spec_decode.model_thread import model_thread

        torch = self._torch
        ids = torch.tensor([prompt], device=self.lm.device)
        kwargs: dict[str, Any] = dict(
            max_new_tokens=max_new,
            do_sample=False,
            attention_mask=torch.ones_like(ids),
            eos_token_id=list(self.lm.vocab.eos_token_ids),
            pad_token_id=0,
        )
        if method == "hf-pld":
            kwargs["prompt_lookup_num_tokens"] = pld_tokens
        elif method == "hf-assisted":
            kwargs["assistant_model"] = self.draft
        self.calls = 0

        def generate() -> Any:
            with torch.inference_mode():
                return self.lm.model.generate(ids, **kwargs)

        # On the process's model thread, like specd's own in-process services: one OpenMP team.
        start = time.perf_counter()
        out = model_thread().run(generate)
        wall = time.perf_counter() - start
        return out[0, len(prompt) :].tolist(), wall, self.calls


def _first_diff(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def run_bench(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from orchestrator.request import GenerateParams, OuroborosParams
    from specd_cli.demo import free_port
    from specd_cli.stack import StackConfig, build_inprocess, start_process_stack
    from specd_client import SpecdClient

    cats = {c for c in args.categories.split(",") if c}
    prompts = load_prompts(args.prompts, args.per_category, cats)
    default = ["hf-generate", "vanilla", "pld", "hf-pld"] + (["sps", "hf-assisted"] if args.draft_model else [])
    methods = [m for m in args.methods.split(",") if m] or default
    if any(_base(m) in ("redrafter", "hybrid", "dsbd-redrafter") for m in methods):  # the shipped head by default
        from draft_service.shipped_heads import resolve_head

        args.redrafter_head = resolve_head(args.redrafter_head, args.target)
    if is_beam_bench(methods):
        return run_beam_bench(args, methods, prompts)
    unknown = [m for m in methods if _base(m) not in SPECD_METHODS + HF_METHODS]
    if unknown:
        raise SystemExit(f"specd bench: unknown methods {unknown}; known: {SPECD_METHODS + HF_METHODS}")
    for m in methods:
        _tree_budget(m), _head_tree(m)  # a bad ':budget' or '@tree' suffix fails before anything starts
    if "hf-generate" not in methods:
        methods.insert(0, "hf-generate")  # the baseline every speedup is relative to
    if args.reference == "vanilla":  # the reference runs first on every prompt
        methods = ["vanilla", *(m for m in methods if m != "vanilla")]
    transports = ["grpc", "inproc"] if args.transport == "both" else [args.transport]
    args.out.mkdir(parents=True, exist_ok=True)

    print(f"specd bench: {len(prompts)} prompts, methods {methods}, transports {transports}", file=sys.stderr)
    hf = HFRunner(args.target, args.draft_model, args.device)
    stack = None
    clients: dict[str, Any] = {}
    try:  # from the first child process on: the stack stops whatever happens
        if "grpc" in transports and any(_base(m) in SPECD_METHODS for m in methods):
            head, colocate = args.redrafter_head, args.redrafter_placement == "target"
            stack = start_process_stack(
                phrase_store=args.phrase_store,
                target=args.target,
                draft_model=args.draft_model,
                port=free_port(),
                target_port=free_port(),
                draft_port=free_port(),
                device=args.device,
                extra_target_args=[*_engine_args(args), *(["--redrafter-head", head] if head and colocate else [])],
                extra_draft_args=[
                    *(["--verify-lookahead"] if args.verify_lookahead else []),
                    *(["--redrafter-head", head] if head and not colocate else []),
                ],
                extra_orchestrator_args=["--pld-placement", args.pld_placement],
            )
            clients["grpc"] = SpecdClient(stack.address, timeout=1800)
        head, colocate = args.redrafter_head, args.redrafter_placement == "target"
        if "inproc" in transports and any(_base(m) in SPECD_METHODS for m in methods):
            from draft_service.service import DraftConfig
            from orchestrator.service import OrchestratorConfig
            from target_service.verifier import TargetConfig

            clients["inproc"] = build_inprocess(
                StackConfig(
                    TargetConfig(
                        model=args.target,
                        device=args.device,
                        engine=args.engine,
                        weight_format=args.weight_format,
                        argmax_screen=args.argmax_screen == "on",
                        redrafter_head=head if colocate else None,
                    ),
                    DraftConfig(
                        draft_model=args.draft_model,
                        device=args.device or "auto",
                        phrase_store_url=args.phrase_store,
                        verify_lookahead=args.verify_lookahead,
                        redrafter_head=None if colocate else head,
                    ),
                    OrchestratorConfig(pld_placement=args.pld_placement),
                )
            )

        def run_specd(transport: str, method: str, prompt: list[int]) -> tuple[list[int], Any]:
            disabled = _disabled_parts(method)
            if transport == "grpc":
                res = clients["grpc"].generate(
                    prompt,
                    method=_base(method),
                    max_new_tokens=args.max_new_tokens,
                    num_draft_tokens=args.num_draft_tokens,
                    num_branches=args.num_branches,
                    disable_parts=disabled,
                    tree_budget=_tree_budget(method),
                    head_tree=_head_tree(method),
                )
                return list(res.token_ids), res.stats
            res = clients["inproc"].generate(
                GenerateParams(
                    prompt_token_ids=tuple(prompt),
                    method=_base(method),
                    max_new_tokens=args.max_new_tokens,
                    num_draft_tokens=args.num_draft_tokens,
                    num_branches=args.num_branches,
                    ouroboros=OuroborosParams.without(disabled),
                    tree_budget=_tree_budget(method),
                    head_tree=_head_tree(method),
                )
            )
            return list(res.token_ids), res.stats

        jobs = [(m, t) for m in methods for t in (transports if _base(m) in SPECD_METHODS else ["local"])]
        runs: list[Run] = []
        # Warm-up (not recorded): first calls pay one-off costs (allocations, thread pools).
        warm = hf.prompt_ids("Say hello.")
        for method, transport in jobs:
            if method in HF_METHODS:
                hf.run(method, warm, 8, args.hf_pld_tokens)
            else:
                run_specd(transport, method, warm)
        if args.warmup_prompts is not None:
            _pool_warmup(args, hf, [(m, t) for m, t in jobs if m not in HF_METHODS], run_specd)
        bar = tqdm(total=len(prompts) * len(jobs) * args.passes, desc="bench", unit="run", file=sys.stderr)
        for pass_no, row in ((p, r) for p in range(1, args.passes + 1) for r in prompts):
            prompt = hf.prompt_ids(row["turns"][0])
            reference: list[int] = []
            for method, transport in jobs:
                bar.set_postfix_str(f"{row['category']}/{method}")
                if method in HF_METHODS:
                    tokens, wall, steps = hf.run(method, prompt, args.max_new_tokens, args.hf_pld_tokens)
                    phases: dict[str, float] = {}
                    drafted = 0
                else:
                    tokens, stats = run_specd(transport, method, prompt)
                    wall, steps = stats.wall_s, stats.target_steps
                    phases = {
                        k: getattr(stats.phases, k)
                        for k in ("draft_s", "verify_s", "network_s", "orchestrate_s", "prefill_s")
                    }
                    drafted = stats.draft_tokens
                if method == args.reference:
                    reference = tokens
                diff = _first_diff(tokens, reference)
                score = hf.logprob_per_token(prompt, tokens) if args.score else None
                runs.append(
                    Run(
                        pass_no,
                        method,
                        transport,
                        row["category"],
                        str(row["question_id"]),
                        len(tokens),
                        wall,
                        steps,
                        len(tokens) / steps if steps else 0.0,
                        diff is None,
                        diff,
                        **phases,
                        draft_tokens=drafted,
                        logprob_per_token=score,
                    )
                )
                bar.update()
        bar.close()
    finally:
        for client in clients.values():
            if hasattr(client, "close"):
                client.close()
        if stack is not None:
            stack.stop()
    summary = summarize(runs)
    write_outputs(args, runs, summary)
    print((args.out / "results.md").read_text())
    return 0


def _pool_warmup(
    args: argparse.Namespace,
    hf: Any,
    jobs: list[tuple[str, str]],
    run_specd: Callable[[str, str, list[int]], tuple[list[int], Any]],
) -> None:
    """Run the specd methods over ``--warmup-count`` prompts of another set, unrecorded."""
    rows: list[dict[str, Any]] = []
    with args.warmup_prompts.open() as fh:
        for line in fh:
            if line.strip() and len(rows) < args.warmup_count:
                rows.append(json.loads(line))
    from tqdm import tqdm

    for row in tqdm(rows, desc="pool warm-up", unit="prompt", file=sys.stderr):
        prompt = hf.prompt_ids(row["turns"][0])
        for method, transport in jobs:
            run_specd(transport, method, prompt)


def _name(method: str) -> str:
    """A method's name without its ``@head_tree`` and ``:budget`` suffixes (``redrafter@beams:max`` -> redrafter)."""
    return method.partition(":")[0].partition("@")[0]


def _base(method: str) -> str:
    name = _name(method)
    return "ouroboros" if name.startswith(ABLATION) else name


def _disabled_parts(method: str) -> list[str]:
    name = _name(method)
    return name[len(ABLATION) :].split("+") if name.startswith(ABLATION) else []


def _head_tree(method: str) -> str:
    """The head tree a method name asks for: ``redrafter@beams`` -> "beams", ``redrafter`` -> "" (nodes)."""
    tree = method.partition(":")[0].partition("@")[2]
    if tree and tree not in HEAD_TREES:
        raise SystemExit(f"specd bench: {method!r}: the head tree after '@' must be one of {HEAD_TREES}")
    return tree


def _tree_budget(method: str) -> str:
    """The per-request tree budget a method name asks for: ``pld:max`` -> "max", ``pld`` -> "" (the server's)."""
    budget = method.partition(":")[2]
    if budget and budget not in TREE_BUDGETS:
        raise SystemExit(f"specd bench: {method!r}: the tree budget after ':' must be one of {TREE_BUDGETS}")
    return budget


def _key(run: Run) -> str:
    name = run.method if run.transport in ("grpc", "local") else f"{run.method} ({run.transport})"
    return name if run.pass_no == 1 else f"{name} [pass {run.pass_no}]"


def summarize(runs: list[Run]) -> dict[str, Any]:
    """Per method: speedup vs hf-generate (ratio of tokens/s over the same prompts), τ, ..."""
    by_method: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_method[_key(run)].append(run)
    ref = by_method.get("hf-generate", [])

    def tps(rs: list[Run]) -> float:
        wall = sum(r.wall_s for r in rs)
        return sum(r.new_tokens for r in rs) / wall if wall else 0.0

    ref_tps = tps(ref)
    categories = sorted({r.category for r in runs})
    summary: dict[str, Any] = {}
    for name, rs in by_method.items():
        per_cat = {}
        for cat in categories:
            cr = [r for r in rs if r.category == cat]
            cref = [r for r in ref if r.category == cat]
            if cr and cref and tps(cref):
                per_cat[cat] = {
                    "speedup_vs_hf_generate": tps(cr) / tps(cref),
                    "tau": sum(r.new_tokens for r in cr) / max(1, sum(r.target_steps for r in cr)),
                }
        steps = sum(r.target_steps for r in rs)
        compared = [r for r in rs if r.identical_to_reference is not None]
        summary[name] = {
            "runs": len(rs),
            "speedup_vs_hf_generate": tps(rs) / ref_tps if ref_tps else None,
            "tau": sum(r.new_tokens for r in rs) / steps if steps else 0.0,
            "tokens_per_s": tps(rs),
            "median_wall_s": statistics.median(r.wall_s for r in rs),
            "lossless_fraction": (sum(bool(r.identical_to_reference) for r in compared) / len(compared))
            if compared
            else None,
            "phase_fractions": _phase_fractions(rs),
            "by_category": per_cat,
            "logprob_per_token": statistics.mean(scored) if (scored := _scores(rs)) else None,
        }
    return summary


def _scores(rs: list[Run]) -> list[float]:
    return [r.logprob_per_token for r in rs if r.logprob_per_token is not None]


def _phase_fractions(rs: list[Run]) -> dict[str, float]:
    wall = sum(r.wall_s for r in rs)
    if not wall or not any(r.verify_s for r in rs):
        return {}
    return {
        k: sum(getattr(r, k) for r in rs) / wall
        for k in ("prefill_s", "draft_s", "verify_s", "network_s", "orchestrate_s")
    }


def write_outputs(args: argparse.Namespace, runs: list[Run], summary: dict[str, Any]) -> None:
    meta = {
        "prompts": str(args.prompts),
        "per_category": args.per_category,
        "max_new_tokens": args.max_new_tokens,
        "target": args.target,
        "draft_model": args.draft_model,
        "weight_format": args.weight_format,
        "argmax_screen": args.argmax_screen,
        "reference": args.reference,
        "pld_placement": args.pld_placement,
        "command": " ".join(sys.argv),
    }
    (args.out / "results.json").write_text(
        json.dumps({"meta": meta, "runs": [asdict(r) for r in runs], "summary": summary}, indent=1)
    )
    categories = sorted({r.category for r in runs})
    lines = [
        "| method | "
        + " | ".join(categories)
        + f" | overall | τ | tok/s | = {args.reference} |"
        + (" log p / token |" if args.score else ""),
        "|---|" + "---|" * (len(categories) + 4 + (1 if args.score else 0)),
    ]
    for name, s in summary.items():
        cells = [
            f"{s['by_category'][c]['speedup_vs_hf_generate']:.2f}×" if c in s["by_category"] else "–"
            for c in categories
        ]
        lossless = "–" if s["lossless_fraction"] is None else f"{s['lossless_fraction']:.0%}"
        overall = "–" if s["speedup_vs_hf_generate"] is None else f"{s['speedup_vs_hf_generate']:.2f}×"
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | **{overall}** | {s['tau']:.2f} | {s['tokens_per_s']:.1f} | {lossless} |"
            + (f" {s['logprob_per_token']:.3f} |" if args.score and s["logprob_per_token"] is not None else "")
        )
    diffs = [r for r in runs if r.identical_to_reference is False]
    reference_name = "hf-generate" if args.reference == "hf-generate" else "specd vanilla (same engine)"
    lines.append("")
    lines.append(
        f"Speedup = tokens/s relative to hf-generate on the same prompts; τ = new tokens per target "
        f"forward pass. {len(diffs)} run(s) differ from {reference_name}'s greedy output" + (":" if diffs else ".")
    )
    lines += [
        f"- {_key(r)} on {r.category}/{r.question_id}: first different token at {r.first_difference}" for r in diffs
    ]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    _plot(args.out / "speedup.png", summary, categories)


def _plot(path: Path, summary: dict[str, Any], categories: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in summary if n != "hf-generate"]
    cols = [*categories, "overall"]
    fig, ax = plt.subplots(figsize=(max(8, len(cols) * 0.9), 4.5))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        s = summary[name]
        vals = [s["by_category"].get(c, {}).get("speedup_vs_hf_generate", 0.0) for c in categories]
        vals.append(s["speedup_vs_hf_generate"] or 0.0)
        ax.bar([x + i * width for x in range(len(cols))], vals, width, label=name)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks([x + width * (len(names) - 1) / 2 for x in range(len(cols))])
    ax.set_xticklabels(cols, rotation=35, ha="right")
    ax.set_ylabel("speedup vs hf-generate (tokens/s)")
    ax.set_title("specd bench: speedup by category")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
