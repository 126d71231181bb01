"""API keys the security tests use, and a key file writer."""

from __future__ import annotations

from pathlib import Path

KEY_A = "sk-alpha-0123456789abcdef"
KEY_B = "sk-bravo-fedcba9876543210"


def write_keys(path: Path, *keys: str) -> Path:
    """A key file in the documented format: a comment line, then ``KEY  # label`` lines."""
    path.write_text("# specd API keys\n" + "".join(f"{k}  # owner {i}\n" for i, k in enumerate(keys)))
    return path
