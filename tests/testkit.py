"""Plain helpers shared by test folders (import them as ``from testkit import ...``).

They live here, not in ``conftest.py``: a folder's own ``conftest.py`` would shadow the name
``conftest`` for the tests collected after it.
"""

from __future__ import annotations

from pathlib import Path

import torch


def greedy_reference(model_dir: Path, prompt: list[int], max_new_tokens: int, dtype: torch.dtype) -> list[int]:
    """transformers' own greedy decoding (stops at EOS like specd does)."""
    from transformers import AutoModelForCausalLM

    model = hf_model(model_dir, dtype)
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
    del AutoModelForCausalLM
    return out[0, len(prompt) :].tolist()


_HF_CACHE: dict[tuple[str, torch.dtype], object] = {}


def hf_model(model_dir: Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    key = (str(model_dir), dtype)
    if key not in _HF_CACHE:
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
        model.eval()
        _HF_CACHE[key] = model
    return _HF_CACHE[key]


def stack_config(target: Path, draft: Path | None, *, dtype: str = "float64", **target_kw: int):
    """A StackConfig over tiny models (float64 so float ties cannot flip a greedy argmax)."""
    from draft_service.service import DraftConfig
    from orchestrator.service import OrchestratorConfig
    from specd_cli.stack import StackConfig
    from target_service.verifier import TargetConfig

    return StackConfig(
        TargetConfig(model=str(target), device="cpu", dtype=dtype, **target_kw),
        DraftConfig(draft_model=str(draft) if draft else None, device="cpu", dtype=dtype),
        OrchestratorConfig(max_new_tokens=256),
    )
