"""Where a ``specd bench`` run's time went, per method, from its ``results.json``.

``python -m specd_cli.bench_phases bench-results/RUN/results.json [--skip QID,...]`` prints, per
method (and pass): tokens/s relative to ``hf-generate`` over the same prompts, τ, and per target
step the wall, verify, draft and network milliseconds, with the prefill's share of wall time, and
the draft nodes verified per step (runs recorded before 2026-12-04 have none: 0).
``--skip`` leaves prompts out (e.g. one the machine was disturbed on). ``--by-category`` adds a
markdown table of τ per category (new tokens over target steps, pooled over the category's prompts).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

KEYS = ("wall_s", "new_tokens", "target_steps", "draft_s", "verify_s", "network_s", "prefill_s", "draft_tokens")


def summarize(runs: list[dict], skip: set[str]) -> list[str]:
    totals: dict[tuple[str, int], dict[str, float]] = defaultdict(lambda: dict.fromkeys(KEYS, 0.0))
    for run in runs:
        if str(run["question_id"]) in skip:
            continue
        t = totals[(run["method"], run.get("pass_no", 1))]
        for k in KEYS:
            t[k] += run.get(k) or 0.0
    lines = []
    for (method, pass_no), t in totals.items():
        ref = totals.get(("hf-generate", pass_no))
        speedup = (t["new_tokens"] / t["wall_s"]) / (ref["new_tokens"] / ref["wall_s"]) if ref else float("nan")
        steps, wall = max(t["target_steps"], 1.0), t["wall_s"]
        per_step = {k: 1000 * t[f"{k}_s"] / steps for k in ("wall", "verify", "draft", "network")}
        lines.append(
            f"{method} [pass {pass_no}]: {speedup:.2f}x hf-generate, tau {t['new_tokens'] / steps:.2f}; ms/step wall "
            f"{per_step['wall']:.1f} verify {per_step['verify']:.1f} draft {per_step['draft']:.1f} "
            f"network {per_step['network']:.1f}; prefill {100 * t['prefill_s'] / wall:.0f}% of wall; "
            f"draft nodes/step {t['draft_tokens'] / steps:.1f}"
        )
    return lines


def tau_by_category(runs: list[dict], skip: set[str]) -> list[str]:
    """Markdown rows: τ per (method, pass) and category, and overall; ``hf-*`` peers left out (τ 1)."""
    sums: dict[tuple[str, int], dict[str, list[float]]] = defaultdict(lambda: defaultdict(lambda: [0.0, 0.0]))
    for run in runs:
        if str(run["question_id"]) in skip or str(run["method"]).startswith("hf-"):
            continue
        for key in (str(run["category"]), "overall"):
            cell = sums[(run["method"], run.get("pass_no", 1))][key]
            cell[0] += run.get("new_tokens") or 0
            cell[1] += run.get("target_steps") or 0
    categories = [*sorted({c for per in sums.values() for c in per if c != "overall"}), "overall"]
    lines = ["| method | " + " | ".join(categories) + " |", "|---" * (len(categories) + 1) + "|"]
    for (method, pass_no), per in sums.items():
        label = method if pass_no == 1 else f"{method} (pass {pass_no})"
        cells = [f"{per[c][0] / per[c][1]:.2f}" if per[c][1] else "–" for c in categories]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m specd_cli.bench_phases", description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, nargs="+", help="results.json of specd bench runs")
    p.add_argument("--skip", default="", help="comma-separated question ids to leave out")
    p.add_argument("--by-category", action="store_true", help="also print τ per category (markdown)")
    args = p.parse_args(argv)
    skip = {q for q in args.skip.split(",") if q}
    for path in args.results:
        print(f"# {path}")
        if not path.is_file():
            raise SystemExit(f"bench_phases: {path} not found (the results.json of a finished specd bench run)")
        runs = json.loads(path.read_text())["runs"]
        for line in summarize(runs, skip):
            print(line)
        if args.by_category:
            print("\n".join(tau_by_category(runs, skip)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
