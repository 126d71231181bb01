"""Tiny Llama models that share SmolLM2's tokenizer: test fixtures and a constructed draft/target pair.

No small model shares SmolLM2's tokenizer, so on machines without one ``specd make-tiny-pair``
builds a pair whose agreement is known by construction: the draft is a small random Llama and
the target is the same network with extra layers whose residual contributions are damped by
``damping``, so the two agree often (not always) while the target costs several times more per
token. Random weights produce meaningless text; losslessness and timing are what such a pair
measures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def make_tiny_llama(
    out: Path,
    tokenizer_dir: Path,
    *,
    seed: int,
    layers: int = 2,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    base: Path | None = None,
    noise: float = 0.0,
    max_positions: int = 512,
    initializer_range: float = 0.2,
) -> Path:
    """Save a tiny Llama (random, or ``base``'s weights plus Gaussian ``noise``) with the tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    if base is not None:
        model = LlamaForCausalLM.from_pretrained(str(base), dtype=torch.float32)
        with torch.no_grad():
            for param in model.parameters():
                param.add_(noise * torch.randn_like(param) * param.std())
    else:
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=hidden * 2,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            max_position_embeddings=max_positions,
            initializer_range=initializer_range,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=True,
        )
        model = LlamaForCausalLM(config)
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def make_tiny_pair(
    out: Path,
    tokenizer_dir: Path,
    *,
    seed: int = 0,
    hidden: int = 512,
    draft_layers: int = 2,
    target_layers: int = 16,
    damping: float = 0.05,
) -> tuple[Path, Path]:
    """Write ``out/draft`` and ``out/target``; the target = the draft + damped extra layers."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(seed)
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    target = LlamaForCausalLM(LlamaConfig(num_hidden_layers=target_layers, **common)).eval()
    with torch.no_grad():
        for layer in target.model.layers[draft_layers:]:
            layer.self_attn.o_proj.weight.mul_(damping)
            layer.mlp.down_proj.weight.mul_(damping)
    draft = LlamaForCausalLM(LlamaConfig(num_hidden_layers=draft_layers, **common)).eval()
    keep = {
        name: value
        for name, value in target.state_dict().items()
        if not name.startswith("model.layers.") or int(name.split(".")[2]) < draft_layers
    }
    draft.load_state_dict(keep)
    paths = (out / "draft", out / "target")
    for model, path in zip((draft, target), paths, strict=True):
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return paths


def agreement(draft_dir: Path, target_dir: Path, tokens: int = 256, seed: int = 0) -> float:
    """Fraction of positions where the two models' greedy next tokens agree on random input."""
    from transformers import AutoModelForCausalLM

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(100, 49000, (1, tokens), generator=gen)
    outs = []
    for path in (draft_dir, target_dir):
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
        with torch.inference_mode():
            outs.append(model(ids).logits.argmax(-1))
    return float((outs[0] == outs[1]).float().mean())


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--damping", type=float, default=0.05)
    p.add_argument("--target-layers", type=int, default=16)
    p.add_argument("--draft-layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=512)


def run(args: argparse.Namespace) -> int:
    from spec_decode.models import materialize

    tokenizer_dir, _ = materialize("smollm2")
    draft, target = make_tiny_pair(
        args.out,
        tokenizer_dir,
        hidden=args.hidden,
        draft_layers=args.draft_layers,
        target_layers=args.target_layers,
        damping=args.damping,
    )
    print(f"draft {draft}\ntarget {target}\ngreedy agreement on random tokens: {agreement(draft, target):.2f}")
    return 0
