"""Training a ReDrafter head by self-distillation (docs/PAPERS.md §3; ``specd train-redrafter``).

1. **Responses**: the target's own greedy answers to the training prompts, generated in batches
   with specd's engine (several sessions per forward pass) and cached on disk as JSONL, one
   line per prompt keyed by a hash of its tokens, so an interrupted run resumes where it stopped.
2. **Samples**: one transformers forward per (prompt + response) gives the final hidden state
   at every position. A sample at response position ``t`` is ``(h_t, x_{t+1} .. x_{t+1+L})``:
   ``h_t`` is the state whose output is ``x_{t+1}`` (the pending token at draft time), ``g_0 =
   x_{t+1}``, and the head learns to predict the ``L`` tokens after it (sum of cross-entropies).
3. **Training**: AdamW with a cosine schedule, a held-out split by response (never by
   position, so held-out text was never seen), early stopping on the held-out loss, the best
   checkpoint saved, a progress bar, ``metrics.json`` (held-out top-1 agreement per offset) and
   ``curve.png``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from spec_decode.redrafter_checkpoint import save_head
from spec_decode.redrafter_head import HeadConfig, ReDrafterHead

SELECT = ("loss", "chain")  # how the saved checkpoint is chosen among epochs (TrainConfig.select)


@dataclass(frozen=True)
class TrainConfig:
    target: str
    out: Path
    length: int = 4  # L: tokens after g_0 the head learns to predict
    blocks: int = 2
    max_new_tokens: int = 128
    gen_batch: int = 8
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    held_out: float = 0.1
    patience: int = 3
    select: str = "loss"  # keep the epoch with the lowest held-out loss, or ("chain") the longest chain

    def __post_init__(self) -> None:
        if self.select not in SELECT:
            raise ValueError(f"select must be one of {', '.join(SELECT)}, got {self.select!r}")

    max_minutes: float = 0.0  # 0 = no limit
    seed: int = 0
    device: str | None = None


@dataclass
class TrainResult:
    responses: int
    train_samples: int
    held_out_samples: int
    epochs_run: int
    best_epoch: int
    best_held_out_loss: float
    held_out_top1: list[float]  # per offset 1..L
    history: list[dict[str, float]] = field(default_factory=list)
    held_out_chain: float = 0.0  # mean leading run of right top-1 guesses (see evaluate)
    select: str = "loss"  # what chose the saved epoch


def prompt_hash(tokens: Sequence[int]) -> str:
    return hashlib.sha256(json.dumps(list(tokens)).encode()).hexdigest()[:16]


@torch.inference_mode()
def generate_responses(
    engine: Any,
    prompts: list[list[int]],
    max_new_tokens: int,
    eos: set[int],
    batch: int,
    cache: Path,
    progress: Any,
    model: Any = None,
    deadline: float | None = None,
) -> list[tuple[list[int], list[int]]]:
    """Greedy responses of the target, ``batch`` sessions per forward pass, cached in ``cache``.

    On CPU the engine runs the batch (several sessions per pass); on a GPU, where the engine's
    multi-session pass is launch-bound, ``model.generate`` runs the batch left-padded (pass ``model``).
    Prompts run in order of length, so a batch pads little. Past ``deadline`` (``time.monotonic()``)
    no new batch starts: the pairs returned are those with a response, cached ones included.
    """
    done: dict[str, list[int]] = {}
    if cache.exists():
        for line in cache.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[row["key"]] = row["response"]
    todo = sorted((p for p in prompts if prompt_hash(p) not in done), key=len)
    empty = torch.zeros(0, dtype=torch.long)
    with cache.open("a") as fh:
        for start in range(0, len(todo), batch):
            if deadline is not None and time.monotonic() > deadline:
                break
            group = todo[start : start + batch]
            if engine.device.type == "cuda" and model is not None:  # GPUs: one padded batch through generate
                for prompt, out in zip(group, _generate_padded(model, group, max_new_tokens, eos), strict=True):
                    done[prompt_hash(prompt)] = out
                    fh.write(json.dumps({"key": prompt_hash(prompt), "response": out}) + "\n")
                fh.flush()
                progress.update(len(group))
                continue
            caches = [engine.new_cache() for _ in group]
            pending = [engine.prefill(c, p) for c, p in zip(caches, group, strict=True)]
            outs: list[list[int]] = [[] for _ in group]
            live = list(range(len(group)))
            while live:
                items: list[tuple[Any, int, torch.Tensor, list[int]]] = [
                    (caches[i], pending[i], empty, []) for i in live
                ]
                ids = engine.score_trees(items, [True] * len(items))  # [1] each: greedy, the argmax only
                still = []
                for i, row in zip(live, ids, strict=True):
                    engine.commit(caches[i], engine.cache_len(caches[i]) - 1, [0])
                    token = int(row[0])
                    outs[i].append(token)
                    pending[i] = token
                    if token not in eos and len(outs[i]) < max_new_tokens:
                        still.append(i)
                live = still
            for prompt, out in zip(group, outs, strict=True):
                done[prompt_hash(prompt)] = out
                fh.write(json.dumps({"key": prompt_hash(prompt), "response": out}) + "\n")
                fh.flush()
            progress.update(len(group))
    return [(p, done[prompt_hash(p)]) for p in prompts if prompt_hash(p) in done]


def _generate_padded(model: Any, group: list[list[int]], max_new_tokens: int, eos: set[int]) -> list[list[int]]:
    """Greedy continuations of ``group`` in one left-padded ``generate`` call, each cut after its first EOS."""
    width = max(len(p) for p in group)
    ids = torch.zeros(len(group), width, dtype=torch.long)  # [B, W] left-padded
    mask = torch.zeros(len(group), width, dtype=torch.long)  # [B, W]
    for row, prompt in enumerate(group):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    out = model.generate(
        ids.to(model.device),
        attention_mask=mask.to(model.device),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        pad_token_id=next(iter(eos)) if eos else 0,
        eos_token_id=sorted(eos) or None,
    )
    responses = []
    for row in out[:, width:].tolist():
        cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
        responses.append([int(t) for t in row[:cut]])
    return responses


@torch.inference_mode()
def build_samples(
    model: Any, pairs: list[tuple[list[int], list[int]]], length: int, batch_tokens: int = 16384
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """``hidden [S, E]``, ``tokens [S, L+1]`` and the response index of every sample.

    Sequences of similar length share one right-padded forward (at most ``batch_tokens`` padded
    tokens); padding sits after every real token, so causal attention never lets it change them.
    """
    keep = [i for i, (_, response) in enumerate(pairs) if len(response) >= length + 2]
    if not keep:
        raise ValueError("no training samples: responses are shorter than the draft length + 2")
    keep.sort(key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    per_index: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    lo = 0
    while lo < len(keep):
        hi = lo + 1
        while hi < len(keep) and (hi - lo + 1) * (len(pairs[keep[hi]][0]) + len(pairs[keep[hi]][1])) <= batch_tokens:
            hi += 1
        group = keep[lo:hi]
        seqs = [pairs[i][0] + pairs[i][1] for i in group]
        width = max(len(seq) for seq in seqs)
        ids = torch.zeros(len(seqs), width, dtype=torch.long)  # [B, W] right-padded
        mask = torch.zeros(len(seqs), width, dtype=torch.long)  # [B, W]
        for row, seq in enumerate(seqs):
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        out = model.get_decoder()(input_ids=ids.to(model.device), attention_mask=mask.to(model.device))
        states = out.last_hidden_state.float()  # [B, W, E] final normed states (no LM head: no [B, W, V])
        for row, (index, seq) in enumerate(zip(group, seqs, strict=True)):
            first = len(pairs[index][0]) - 1  # h at the last prompt token predicts the first response token
            last = len(seq) - length - 1  # samples at t in [first, last)
            window = torch.tensor(seq).unfold(0, length + 1, 1)[first + 1 : last + 1]  # [n, L+1]: x_{t+1}..
            per_index[index] = (states[row, first:last].cpu(), window)  # [n, E], [n, L+1]
        lo = hi
    order = sorted(per_index)
    owner = [index for index in order for _ in range(per_index[index][1].shape[0])]
    return (
        torch.cat([per_index[i][0] for i in order]),
        torch.cat([per_index[i][1] for i in order]),
        owner,
    )


def evaluate(head: ReDrafterHead, hidden: torch.Tensor, tokens: torch.Tensor) -> tuple[float, list[float], float]:
    """Held-out mean loss (sum over offsets), top-1 agreement per offset, and the mean chain length.

    The chain length of a sample is how many of its offsets the head gets right before its first
    miss: what a one-beam draft of the head would get accepted there under greedy decoding.
    """
    head.eval()
    losses, hits, chain, count = 0.0, torch.zeros(tokens.shape[1] - 1, device=tokens.device), 0.0, 0
    with torch.no_grad():
        for lo in range(0, hidden.shape[0], 1024):
            h, t = hidden[lo : lo + 1024], tokens[lo : lo + 1024]
            logits = head(h, t)  # [B, L, V']
            target = _targets(head, t[:, 1:])
            losses += float(_loss(logits, target)) * h.shape[0]
            right = logits.argmax(-1) == target  # [B, L]
            hits += right.float().sum(0)
            chain += float(right.int().cumprod(1).sum())
            count += h.shape[0]
    return losses / count, (hits / count).tolist(), chain / count


def _targets(head: ReDrafterHead, tokens: torch.Tensor) -> torch.Tensor:
    """Token ids as indices into the head's vocabulary (-100 = outside a sub-vocabulary)."""
    if not head.config.vocab_ids:
        return tokens
    lookup = torch.full((head.config.vocab,), -100, dtype=torch.long, device=tokens.device)
    lookup[head.vocab_ids] = torch.arange(len(head.config.vocab_ids))
    return lookup[tokens]


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum over the L offsets of the mean cross-entropy."""
    per = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100, reduction="none")  # [B, L]
    return per.mean(0).sum()


def train_head(
    model: Any, vocab_fingerprint: str, pairs: list[tuple[list[int], list[int]]], config: TrainConfig, progress: Any
) -> tuple[ReDrafterHead, TrainResult]:
    """Fit a head on ``pairs`` (prompt, response); the best held-out checkpoint goes to ``config.out``."""
    torch.manual_seed(config.seed)
    device = next(model.parameters()).device
    hidden, tokens, owner = build_samples(model, pairs, config.length)
    hidden, tokens = hidden.to(device), tokens.to(device)  # [S, E], [S, L+1]
    rng = random.Random(config.seed)
    responses = sorted(set(owner))
    rng.shuffle(responses)
    n_held = max(1, round(len(responses) * config.held_out)) if len(responses) > 1 else 0
    held = set(responses[:n_held])
    is_held = torch.tensor([o in held for o in owner], device=device)  # [S]
    embedding = model.get_input_embeddings().weight.detach().float()
    lm_head = model.get_output_embeddings().weight.detach().float()
    head = ReDrafterHead(HeadConfig(embedding.shape[1], embedding.shape[0], config.blocks), embedding, lm_head)
    head = head.to(device)
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.0)
    steps_per_epoch = max(1, math.ceil(int((~is_held).sum()) / config.batch_size))
    total = steps_per_epoch * config.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    with _tf32(device):
        return _epochs(head, opt, sched, hidden, tokens, is_held, len(pairs), vocab_fingerprint, config, progress)


@contextlib.contextmanager
def _tf32(device: torch.device) -> Iterator[None]:
    """TF32 matmuls on CUDA while the head trains (after the target's states were computed), then as before."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = before or device.type == "cuda"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def _epochs(
    head: ReDrafterHead,
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    hidden: torch.Tensor,  # [S, E]
    tokens: torch.Tensor,  # [S, L+1]
    is_held: torch.Tensor,  # [S] bool; none held out: the training set is evaluated instead
    responses: int,
    vocab_fingerprint: str,
    config: TrainConfig,
    progress: Any,
) -> tuple[ReDrafterHead, TrainResult]:
    """The training epochs of :func:`train_head`: early stopping on held-out loss, best checkpoint saved."""
    device = hidden.device
    n_held = int(is_held.sum())
    train_h, train_t = hidden[~is_held], tokens[~is_held]
    held_h, held_t = (hidden[is_held], tokens[is_held]) if n_held else (train_h, train_t)
    best, best_epoch, bad, history = float("inf"), 0, 0, []
    best_top1: list[float] = []
    best_chain, best_loss = 0.0, float("inf")
    deadline = time.monotonic() + config.max_minutes * 60 if config.max_minutes > 0 else None
    epochs_run = 0
    for epoch in range(1, config.epochs + 1):
        head.train()
        order = torch.randperm(train_h.shape[0], device=device)
        running = torch.zeros((), device=device)  # summed on the device: no host sync per step
        for lo in range(0, train_h.shape[0], config.batch_size):
            idx = order[lo : lo + config.batch_size]
            logits = head(train_h[idx], train_t[idx])  # [B, L, V']
            loss = _loss(logits, _targets(head, train_t[idx, 1:]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            running += loss.detach() * idx.shape[0]
            progress.update(1)
        held_loss, top1, chain = evaluate(head, held_h, held_t)
        epochs_run = epoch
        history.append(
            {"epoch": epoch, "train_loss": float(running) / train_h.shape[0], "held_out_loss": held_loss,
             "held_out_chain": chain}
        )  # fmt: skip
        progress.set_postfix_str(f"epoch {epoch} held-out {held_loss:.3f} top1@1 {top1[0]:.2f} chain {chain:.3f}")
        score = held_loss if config.select == "loss" else -chain  # lower is better
        if score < best - 1e-4:
            best, best_epoch, bad, best_top1, best_chain, best_loss = score, epoch, 0, top1, chain, held_loss
            save_head(config.out, head, config.target, vocab_fingerprint)
        else:
            bad += 1
        if bad >= config.patience or (deadline is not None and time.monotonic() > deadline):
            break
    result = TrainResult(
        responses, int(train_h.shape[0]), int(held_h.shape[0]) if n_held else 0, epochs_run, best_epoch, best_loss,
        best_top1, history, best_chain, config.select,
    )  # fmt: skip
    return head, result


def plot_curve(result: TrainResult, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in result.history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [h["train_loss"] for h in result.history], label="train")
    ax.plot(epochs, [h["held_out_loss"] for h in result.history], label="held out")
    ax.axvline(result.best_epoch, color="grey", linestyle=":", label=f"best by {result.select} (saved)")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"loss (sum of {len(result.held_out_top1)} cross-entropies)")
    chains = [h["held_out_chain"] for h in result.history if "held_out_chain" in h]
    if chains and len(chains) == len(epochs):  # the held-out chain length on its own axis
        right = ax.twinx()
        right.plot(epochs, chains, color="tab:green", linestyle="--", label="held-out chain")
        right.set_ylabel("held-out chain (right top-1 guesses before a miss)")
        right.legend(loc="upper center")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
