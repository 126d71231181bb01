"""Hidden states on the wire: one ``[E]`` vector as float16 little-endian bytes (2 E bytes).

The target service returns the final hidden state of the last accepted position on request,
for draft heads that draft from it (ReDrafter). It is never vocabulary-sized.
"""

from __future__ import annotations

import numpy as np
import torch


def hidden_bytes(row: torch.Tensor) -> bytes:
    """``row`` ``[E]`` as float16 little-endian bytes."""
    return row.detach().to(torch.float16).cpu().numpy().astype("<f2").tobytes()


def hidden_from_bytes(data: bytes) -> torch.Tensor:
    """The inverse of :func:`hidden_bytes`: a float32 ``[E]`` tensor."""
    return torch.from_numpy(np.frombuffer(data, dtype="<f2").astype(np.float32))
