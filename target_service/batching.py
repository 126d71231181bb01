"""Continuous batching of verify calls: many sessions' trees in one forward pass.

Every ``verify`` call enqueues a :class:`VerifyCall`; the first call that finds no drain pending
asks the model thread to *drain* the queue. A drain takes up to ``max_batch`` calls, runs them as
one batch and completes their futures; calls that arrive after it took its batch schedule the
next drain, and a drain that leaves calls behind (a cap, a session's second call) schedules it
itself. So the model thread's queue holds at most one drain, and a prefill (or any other job)
posted behind it waits for at most one pass. (One drain per call, as before, piled up: a pass of
k calls consumed one drain and its k sessions posted k new ones, so under load hundreds of
drains, each a real pass, stood between a new prompt and its prefill: 5-9 s at 16 clients.)

How long a drain waits for more calls matters. Sessions come back one step after the last
batch, not all at the same instant (each caller wakes, returns, and its next call crosses the
GIL and gRPC). A fixed short window lost that race: with 16 sessions and a 2 ms window the
batches collapsed into passes of one session each (39 tok/s instead of 130). So a drain waits
until as many calls are queued as there were distinct sessions calling within the last
``horizon_s`` (they are about to come back), or until ``window_s`` after the oldest queued call,
whichever is first. One lone session never waits.

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

from spec_decode.types import ColocatedDraft, DraftTree, VerifyResult


@dataclass(eq=False)
class VerifyCall:
    session_id: str
    tree: DraftTree
    return_target_tokens: bool
    return_hidden_state: bool = False
    colocated_draft: ColocatedDraft | None = None  # draft the next tree with the co-located head after this pass
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
        sleep: Callable[[float], None] | None = None,
        horizon_s: float = 0.25,
    ) -> None:
        if max_batch < 1 or window_s < 0:
            raise ValueError(f"max_batch ({max_batch}) must be >= 1 and window_s ({window_s}) >= 0")
        self._run_batch = run_batch
        self.max_batch = max_batch
        self.window_s = window_s
        self._clock = clock
        self._sleep = sleep  # tests: a fake clock advances by sleeping instead of waiting
        self.horizon_s = horizon_s
        self._queue: collections.deque[VerifyCall] = collections.deque()
        self._recent: dict[str, float] = {}  # session -> last submit time
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._scheduled = False  # a drain is queued (or waiting to take its batch)

    def submit(self, call: VerifyCall) -> bool:
        """Queue ``call``; True when no drain is pending, so the caller must schedule one."""
        with self._lock:
            self._queue.append(call)
            self._recent[call.session_id] = self._clock()
            self._arrived.notify()
            if self._scheduled:
                return False
            self._scheduled = True
            return True

    def forget(self, session_id: str) -> None:
        """A released session will not come back: batches stop waiting for it."""
        with self._lock:
            self._recent.pop(session_id, None)

    def _expected(self, now: float) -> int:
        """Distinct sessions that called within the horizon (caller holds the lock)."""
        stale = [sid for sid, seen in self._recent.items() if now - seen > self.horizon_s]
        for sid in stale:
            del self._recent[sid]
        return min(self.max_batch, max(1, len(self._recent)))

    def __len__(self) -> int:
        with self._lock:
            return len(self._queue)

    def drain(self) -> bool:
        """Run one batch if calls are waiting (call on the model thread). True when calls were left
        queued: the caller must schedule another drain (this one still counts as pending)."""
        batch, more = self._take()
        if not batch:
            return more
        try:
            self._run_batch(batch)
        except BaseException as exc:  # nobody waits on the drain itself: never leave a caller hanging
            for call in batch:
                if not call.future.done():
                    call.future.set_exception(exc)
        return more

    def _take(self) -> tuple[list[VerifyCall], bool]:
        if self.window_s > 0 and self.max_batch > 1:
            with self._lock:
                while self._queue:
                    now = self._clock()
                    distinct = len({c.session_id for c in self._queue})
                    wait = self._queue[0].enqueued + self.window_s - now
                    if distinct >= self._expected(now) or wait <= 0:
                        break
                    if self._sleep is not None:
                        self._lock.release()
                        try:
                            self._sleep(wait)
                        finally:
                            self._lock.acquire()
                    else:
                        self._arrived.wait(wait)
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
            more = bool(self._queue)
            self._scheduled = more  # calls from now on schedule the next drain, unless some are left
            return batch, more
