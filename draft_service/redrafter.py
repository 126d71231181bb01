"""The ``redrafter`` drafter: beam search over a trained ReDrafter head, packed into one tree.

The head (:mod:`draft_service.redrafter_head`) drafts from the target's final hidden state
at the last accepted position, which the orchestrator asks the target for with every verify
and forwards with the next propose (float16 bytes, ``2 E`` of them). Without a hidden state
(the first step of a session, before any prefill result arrived) it proposes nothing.

A head checkpoint is a directory:

* ``config.json`` -- ``{"hidden": E, "vocab": V, "blocks": n, "vocab_ids": [...], "target":
  "<model spec>", "vocab_fingerprint": "..."}``: the shape, and which target's embedding and
  LM head it was trained on (they are frozen and not stored; the draft service loads them
  from ``target``);
* ``head.pt`` -- the trainable tensors (``state_dict`` of :class:`ReDrafterHead`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from draft_service.redrafter_head import (
    DEFAULT_LENGTH,
    DEFAULT_TOP_K,
    DEFAULT_WIDTH,
    HeadConfig,
    ReDrafterHead,
    beam_search,
    pack_beams,
)
from spec_decode.errors import FailedPrecondition, InvalidArgument
from spec_decode.types import EMPTY_TREE, DraftOptions, DraftTree, SamplingParams

MAX_WIDTH = 64


@dataclass(frozen=True)
class HeadCheckpoint:
    config: HeadConfig
    target: str  # model spec whose embedding and LM head the head reuses
    vocab_fingerprint: str


SHIPPED_HEADS = {"smollm2": Path(__file__).resolve().parent / "heads" / "smollm2"}  # see its MANIFEST.md
_SMOLLM2_ALIASES = ("smollm2", "smollm2-135m-instruct", "default")


def shipped_head(target: str) -> Path | None:
    """The head that ships with specd for ``target`` (a model spec), or None."""
    key = "smollm2" if target.lower() in _SMOLLM2_ALIASES else target
    path = SHIPPED_HEADS.get(key)
    return path if path is not None and (path / "head.pt").is_file() else None


def resolve_head(value: str | None, target: str) -> str | None:
    """``--redrafter-head`` as given: a directory, ``none``, or ``auto``/None = the shipped head for ``target``."""
    if value is not None and value.lower() == "none":
        return None
    if value is None or value.lower() == "auto":
        head = shipped_head(target)
        return str(head) if head is not None else None
    return value


def save_head(directory: Path, head: ReDrafterHead, target: str, vocab_fingerprint: str) -> None:
    """Write ``head`` as a checkpoint directory (see the module docstring)."""
    directory.mkdir(parents=True, exist_ok=True)
    meta = {**asdict(head.config), "target": target, "vocab_fingerprint": vocab_fingerprint}
    meta["vocab_ids"] = list(head.config.vocab_ids)
    (directory / "config.json").write_text(json.dumps(meta, indent=1))
    torch.save({k: v.detach().cpu() for k, v in head.state_dict().items()}, directory / "head.pt")


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
    meta = {**asdict(config), "target": checkpoint.target, "vocab_fingerprint": checkpoint.vocab_fingerprint}
    meta["vocab_ids"] = list(config.vocab_ids)
    (out / "config.json").write_text(json.dumps(meta))
    shutil.copyfile(source / "head.pt", out / "head.pt")
    return HeadCheckpoint(config, checkpoint.target, checkpoint.vocab_fingerprint)


def read_checkpoint(directory: Path) -> HeadCheckpoint:
    path = directory / "config.json"
    if not path.is_file() or not (directory / "head.pt").is_file():
        raise FailedPrecondition(f"{directory} is not a ReDrafter head checkpoint (needs config.json and head.pt)")
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
    state = torch.load(directory / "head.pt", map_location=embedding.device, weights_only=True)
    head.load_state_dict(state)
    return head.to(device=embedding.device, dtype=embedding.dtype).eval()


class ReDrafterDrafter:
    """One session's drafter: the shared head, plus the latest hidden state of the target."""

    def __init__(self, head: ReDrafterHead) -> None:
        self.head = head
        self.width, self.top_k = DEFAULT_WIDTH, DEFAULT_TOP_K
        self.hidden: torch.Tensor | None = None  # [E]
        self.last_beam_tokens = 0  # tokens of the last beams before packing (for telemetry)

    def configure(self, options: DraftOptions) -> None:
        width = options.num_branches or DEFAULT_WIDTH
        if not 1 <= width <= MAX_WIDTH:
            raise InvalidArgument(f"redrafter beam width (num_branches) must be in [1, {MAX_WIDTH}], got {width}")
        self.width = width
        self.top_k = options.draft_top_k or DEFAULT_TOP_K

    def set_hidden_state(self, hidden: torch.Tensor) -> None:
        if hidden.shape != (self.head.config.hidden,):
            raise InvalidArgument(
                f"hidden state has {hidden.numel()} values; the ReDrafter head needs {self.head.config.hidden}"
            )
        self.hidden = hidden.to(device=self.head.embedding.device, dtype=self.head.embedding.dtype)  # [E]

    def reset(self) -> None:
        self.hidden = None

    def propose(
        self,
        context: Sequence[int],
        max_tokens: int,
        max_nodes: int,
        sampling: SamplingParams,
        generator: torch.Generator | None,
    ) -> DraftTree:
        length = min(max_tokens or DEFAULT_LENGTH, max_nodes)
        if self.hidden is None or length <= 0 or not context:
            return EMPTY_TREE
        beams = beam_search(self.head, self.hidden, int(context[-1]), self.width, length, self.top_k)
        self.last_beam_tokens = sum(len(b) for b in beams.tokens)
        return pack_beams(beams, max_nodes)

    def observe(self, num_draft: int, num_accepted: int, target_tokens: Sequence[int] = ()) -> None:
        """Nothing to learn online: the head is trained offline."""
