"""Continuous batching of verify calls: many sessions' trees in one forward pass.

Every ``verify`` call enqueues a :class:`VerifyCall` and then asks the model thread to *drain*
the queue. A drain takes up to ``max_batch`` calls (waiting at most ``window_s`` after the
oldest arrival for more to come), runs them as one batch and completes their futures; callers
whose call was taken by an earlier drain find the queue empty and just collect their result.
While a batch is on the device, newly arriving calls pile up in the queue, so under load
batches form on their own; the window only helps calls that arrive together at an idle
server.

A session appears at most once per batch (its second call waits for the next batch: the two
trees build on each other).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from spec_decode.types import DraftTree, VerifyResult


@dataclass(eq=False)
class VerifyCall:
    session_id: str
    tree: DraftTree
    return_target_tokens: bool
    return_hidden_state: bool = False
    enqueued: float = field(default_factory=time.monotonic)
    future: Future[VerifyResult] = field(default_factory=Future)


class VerifyBatcher:
    """The queue and the batch-forming policy; ``run_batch`` does the work of one batch."""

    def __init__(
        self,
        run_batch: Callable[[list[VerifyCall]], None],
        max_batch: int,
        window_s: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if max_batch < 1 or window_s < 0:
            raise ValueError(f"max_batch ({max_batch}) must be >= 1 and window_s ({window_s}) >= 0")
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.window_s = window_s
        self._clock = clock
        self._sleep = sleep
        self._queue: collections.deque[VerifyCall] = collections.deque()
        self._lock = threading.Lock()

    def submit(self, call: VerifyCall) -> None:
        with self._lock:
            self._queue.append(call)

    def __len__(self) -> int:
        with self._lock:
            return len(self._queue)

    def drain(self) -> None:
        """Run one batch if calls are waiting (call on the model thread)."""
        batch = self._take()
        if batch:
            self._run_batch(batch)

    def _take(self) -> list[VerifyCall]:
        if self.window_s > 0 and self.max_batch > 1:
            with self._lock:
                oldest = self._queue[0].enqueued if self._queue else None
                full = len(self._queue) >= self.max_batch
            if oldest is not None and not full:
                wait = oldest + self.window_s - self._clock()
                if wait > 0:
                    self._sleep(wait)
        with self._lock:
            batch: list[VerifyCall] = []
            deferred: list[VerifyCall] = []
            seen: set[str] = set()
            while self._queue and len(batch) < self.max_batch:
                call = self._queue.popleft()
                if call.session_id in seen:
                    deferred.append(call)  # same session twice: the second builds on the first
                else:
                    seen.add(call.session_id)
                    batch.append(call)
            self._queue.extendleft(reversed(deferred))
            return batch
