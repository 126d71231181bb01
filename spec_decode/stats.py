"""Timing and counters that live inside the decode loop."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from spec_decode.types import PhaseTimes


@dataclass
class LoopStats:
    """Counters for one generation; turned into :class:`GenerationStats` at the end."""

    phases: PhaseTimes = field(default_factory=PhaseTimes)
    target_steps: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0
    accepted_hist: list[int] = field(default_factory=list)
    drafter_switches: int = 0  # times the session moved to another draft replica

    @contextmanager
    def time(self, phase: str) -> Iterator[None]:
        """Add the wall time of the ``with`` body to ``phases.<phase>_s``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            attr = f"{phase}_s"
            setattr(self.phases, attr, getattr(self.phases, attr) + time.perf_counter() - start)

    def add_network(self, rpc_wall_s: float, server_s: float) -> None:
        """Charge the part of an RPC not spent inside the remote service to the network."""
        self.phases.network_s += max(0.0, rpc_wall_s - server_s)

    def record_step(self, num_draft: int, num_accepted: int) -> None:
        self.target_steps += 1
        self.draft_tokens += num_draft
        self.accepted_tokens += num_accepted
        while len(self.accepted_hist) <= num_accepted:
            self.accepted_hist.append(0)
        self.accepted_hist[num_accepted] += 1
