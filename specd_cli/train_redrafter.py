"""``specd train-redrafter``: self-distil a ReDrafter head for a target (see draft_service/redrafter_train.py)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path


def add_train_redrafter_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="smollm2", help="target model spec (its embedding and LM head are reused)")
    p.add_argument("--prompts", type=Path, nargs="+", required=True, help="JSONL files of {turns: [...]}")
    p.add_argument("--out", type=Path, required=True, help="checkpoint directory (config.json, head.pt, ...)")
    p.add_argument("--max-prompts", type=int, default=0, help="use at most this many prompts (0 = all)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="length of each generated response")
    p.add_argument("--gen-batch", type=int, default=8, help="responses generated per forward pass")
    p.add_argument("--length", type=int, default=4, help="tokens the head learns to predict after g_0")
    p.add_argument("--blocks", type=int, default=2, help="residual blocks of the head")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--patience", type=int, default=3, help="epochs without held-out improvement before stopping")
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop training after this long (0 = no limit)")
    p.add_argument(
        "--select", choices=("loss", "chain"), default="loss",  # redrafter_train.SELECT (that module loads torch)
        help="which epoch's head is kept: the lowest held-out loss, or the longest held-out chain (mean run of "
        "right top-1 guesses from the first offset: what a one-beam draft would get accepted)",
    )  # fmt: skip
    p.add_argument(
        "--gen-minutes", type=float, default=0.0,
        help="start no new batch of responses after this long and train on those made (0 = no limit); "
        "the cache keeps them, so a later run goes on where this one stopped",
    )  # fmt: skip
    p.add_argument("--device", default=None)


def run_train_redrafter(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from draft_service.redrafter_train import TrainConfig, generate_responses, plot_curve, train_head
    from spec_decode.model_thread import model_thread
    from spec_decode.models import load_model
    from target_service.engine import build_engine

    config = TrainConfig(
        target=args.target, out=args.out, length=args.length, blocks=args.blocks, max_new_tokens=args.max_new_tokens,
        gen_batch=args.gen_batch, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=args.patience,
        max_minutes=args.max_minutes, device=args.device, select=args.select,
    )  # fmt: skip
    if args.gen_minutes < 0 or args.max_minutes < 0:
        raise SystemExit("specd train-redrafter: --gen-minutes and --max-minutes must be >= 0")
    args.out.mkdir(parents=True, exist_ok=True)
    texts = _prompt_texts(args.prompts, args.max_prompts)
    loaded = model_thread().run(load_model, args.target, args.device)
    tokenizer = loaded.tokenizer
    prompts = [_chat_ids(tokenizer, text) for text in texts]
    eos = set(loaded.vocab.eos_token_ids)

    def work() -> int:
        engine = build_engine(loaded.model, "auto")
        deadline = time.monotonic() + args.gen_minutes * 60 if args.gen_minutes > 0 else None
        with tqdm(total=len(prompts), desc="responses", unit="prompt", file=sys.stderr) as bar:
            pairs = generate_responses(
                engine,
                prompts,
                config.max_new_tokens,
                eos,
                config.gen_batch,
                args.out / "responses.jsonl",
                bar,
                model=loaded.model,
                deadline=deadline,
            )
        with tqdm(desc="training", unit="step", file=sys.stderr) as bar:
            _, result = train_head(loaded.model, loaded.vocab.fingerprint, pairs, config, bar)
        manifest = {
            "command": " ".join(sys.argv),
            "target": args.target,
            "prompt_files": [str(p) for p in args.prompts],
            "prompts": len(prompts),
            "responses_used": len(pairs),
            "torch": torch.__version__,
        }
        (args.out / "metrics.json").write_text(json.dumps({**asdict(result), "manifest": manifest}, indent=1))
        plot_curve(result, args.out / "curve.png")
        top1 = " ".join(f"+{i + 1}:{v:.3f}" for i, v in enumerate(result.held_out_top1))
        print(
            f"trained on {result.train_samples} samples ({result.responses} responses), held out "
            f"{result.held_out_samples}; best epoch {result.best_epoch}/{result.epochs_run}, held-out loss "
            f"{result.best_held_out_loss:.3f}, chain {result.held_out_chain:.3f}, top-1 by offset {top1}; "
            f"saved to {args.out}"
        )
        return 0

    return model_thread().run(work)  # one OpenMP team per process (see spec_decode/model_thread.py)


def _prompt_texts(files: list[Path], limit: int) -> list[str]:
    texts: list[str] = []
    for path in files:
        if not path.is_file():
            raise SystemExit(f"specd train-redrafter: prompts file {path} not found")
        for line_no, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                texts.append(str(json.loads(line)["turns"][0]))
            except (json.JSONDecodeError, KeyError, IndexError, TypeError):
                raise SystemExit(f"specd train-redrafter: {path}:{line_no} is not a {{turns: [...]}} object") from None
    return texts[:limit] if limit else texts


def _chat_ids(tokenizer: object, text: str) -> list[int]:
    from orchestrator.request import GenerateParams
    from orchestrator.text import prompt_tokens

    return prompt_tokens(tokenizer, GenerateParams(prompt=text))


def add_subvocab_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--head", type=Path, required=True, help="a ReDrafter head checkpoint directory")
    p.add_argument("--out", type=Path, required=True, help="where to write the restricted checkpoint")
    p.add_argument("--size", type=int, default=8192, help="tokens to keep: the most frequent in --text")
    p.add_argument(
        "--text", type=Path, nargs="+", required=True,
        help="files to count tokens in: JSONL prompts ({turns}), train-redrafter's responses.jsonl "
        "(the target's own answers, as token ids) or plain text",
    )  # fmt: skip


def run_subvocab(args: argparse.Namespace) -> int:
    """``specd redrafter-subvocab``: keep the ``--size`` most frequent tokens of ``--text`` in the LM head."""
    from collections import Counter

    from transformers import AutoTokenizer

    from spec_decode.models import materialize
    from spec_decode.redrafter_checkpoint import read_checkpoint, restrict_vocabulary

    checkpoint = read_checkpoint(args.head)
    if not 1 <= args.size <= checkpoint.config.vocab:
        raise SystemExit(f"specd redrafter-subvocab: --size must be in [1, {checkpoint.config.vocab}]")
    directory, _ = materialize(checkpoint.target)
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    counts: Counter[int] = Counter()
    for path in args.text:
        if not path.is_file():
            raise SystemExit(f"specd redrafter-subvocab: {path} not found")
        lines = path.read_text().splitlines()
        for line in lines:
            try:
                row = json.loads(line) if path.suffix == ".jsonl" else None
            except json.JSONDecodeError:
                row = None
            if isinstance(row, dict) and isinstance(row.get("response"), list):  # train-redrafter's cache: ids
                counts.update(int(t) for t in row["response"])
                continue
            turns = row["turns"] if isinstance(row, dict) and isinstance(row.get("turns"), list) else [line]
            for turn in turns:
                counts.update(tokenizer.encode(str(turn), add_special_tokens=False))
    total = sum(counts.values())
    # Special tokens (end of turn) are drafted too: keep them whatever their count.
    keep = {int(t) for t in tokenizer.all_special_ids}
    for token, _ in counts.most_common():
        if len(keep) >= args.size:
            break
        keep.add(token)
    covered = sum(c for t, c in counts.items() if t in keep)
    restrict_vocabulary(args.head, args.out, sorted(keep))
    print(
        f"kept {len(keep)} of {checkpoint.config.vocab} tokens; they cover {covered / max(total, 1):.4f} of the "
        f"{total} tokens counted in {len(args.text)} file(s); wrote {args.out}"
    )
    return 0
