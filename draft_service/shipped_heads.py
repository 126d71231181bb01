"""ReDrafter heads that ship with specd (``draft_service/heads/<name>/``, each with its MANIFEST.md).

Only where the files are and how ``--redrafter-head`` names them; reading a checkpoint is
:mod:`spec_decode.redrafter_checkpoint`. ``specd_cli`` resolves the flag here for both
placements (draft service and co-located in the target) and hands the services a directory.
"""

from __future__ import annotations

from pathlib import Path

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
