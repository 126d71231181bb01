"""ReDrafter head checkpoints: the files both services load a head from.

The draft service runs the head as a drafter (``draft_service/redrafter.py``); the target
service runs it co-located, right after its own pass (``specd target --redrafter-head``); the
trainer (``draft_service/redrafter_train.py``) writes it. All of them read and write it here.

A head checkpoint is a directory:

* ``config.json`` -- ``{"hidden": E, "vocab": V, "blocks": n, "vocab_ids": [...], "target":
  "<model spec>", "vocab_fingerprint": "..."}``: the shape, and which target's embedding and
  LM head it was trained on (they are frozen and not stored; whoever loads the head passes
  them in from ``target``);
* ``head.pt`` -- the trainable tensors (``state_dict`` of :class:`ReDrafterHead`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from spec_decode.errors import FailedPrecondition
from spec_decode.redrafter_head import HeadConfig, ReDrafterHead

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "head.pt"


@dataclass(frozen=True)
class HeadCheckpoint:
    config: HeadConfig
    target: str  # model spec whose embedding and LM head the head reuses
    vocab_fingerprint: str


def _write_config(directory: Path, config: HeadConfig, target: str, vocab_fingerprint: str, indent: int | None) -> None:
    meta = {**asdict(config), "target": target, "vocab_fingerprint": vocab_fingerprint}
    meta["vocab_ids"] = list(config.vocab_ids)
    (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=indent))


def save_head(directory: Path, head: ReDrafterHead, target: str, vocab_fingerprint: str) -> None:
    """Write ``head`` as a checkpoint directory (see the module docstring)."""
    directory.mkdir(parents=True, exist_ok=True)
    _write_config(directory, head.config, target, vocab_fingerprint, indent=1)
    torch.save({k: v.detach().cpu() for k, v in head.state_dict().items()}, directory / WEIGHTS_FILE)


def restrict_vocabulary(source: Path, out: Path, vocab_ids: Sequence[int]) -> HeadCheckpoint:
    """Copy checkpoint ``source`` to ``out`` with its LM head limited to ``vocab_ids``.

    The trained weights are unchanged (the head's logits over the kept tokens are exactly the
    full head's); drafting gets cheaper by ``V / len(vocab_ids)`` in the LM-head matmul and loses
    every draft whose token is outside the set.
    """
    checkpoint = read_checkpoint(source)
    ids = sorted({int(t) for t in vocab_ids})
    config = HeadConfig(checkpoint.config.hidden, checkpoint.config.vocab, checkpoint.config.blocks, tuple(ids))
    config.validate()
    out.mkdir(parents=True, exist_ok=True)
    _write_config(out, config, checkpoint.target, checkpoint.vocab_fingerprint, indent=None)
    shutil.copyfile(source / WEIGHTS_FILE, out / WEIGHTS_FILE)
    return HeadCheckpoint(config, checkpoint.target, checkpoint.vocab_fingerprint)


def read_checkpoint(directory: Path) -> HeadCheckpoint:
    """The config of checkpoint ``directory``; FailedPrecondition naming the file when it is not one."""
    path = directory / CONFIG_FILE
    if not path.is_file() or not (directory / WEIGHTS_FILE).is_file():
        raise FailedPrecondition(
            f"{directory} is not a ReDrafter head checkpoint (needs {CONFIG_FILE} and {WEIGHTS_FILE})"
        )
    try:
        meta = json.loads(path.read_text())
        config = HeadConfig(
            int(meta["hidden"]), int(meta["vocab"]), int(meta["blocks"]), tuple(int(t) for t in meta["vocab_ids"])
        ).validate()
        return HeadCheckpoint(config, str(meta["target"]), str(meta["vocab_fingerprint"]))
    except (KeyError, TypeError, ValueError) as err:
        raise FailedPrecondition(f"{path} is not a valid head config: {err}") from None


def load_head(directory: Path, embedding: torch.Tensor, lm_head: torch.Tensor) -> ReDrafterHead:
    """The head of checkpoint ``directory`` over the target's ``embedding`` and ``lm_head`` ``[V, E]``."""
    checkpoint = read_checkpoint(directory)
    head = ReDrafterHead(checkpoint.config, embedding, lm_head)
    state = torch.load(directory / WEIGHTS_FILE, map_location=embedding.device, weights_only=True)
    head.load_state_dict(state)
    return head.to(device=embedding.device, dtype=embedding.dtype).eval()
