"""Continuous batching on the target's model thread: many sessions' trees, and chunks of new
prompts, in one forward pass.

**Drains.** Every ``verify`` call enqueues a :class:`VerifyCall`, every ``prefill`` a
:class:`PrefillJob`; the first submission that finds no drain pending asks the model thread to
*drain*. A drain takes up to ``max_batch`` verify calls and up to ``prefill_chunk`` prompt tokens
(:meth:`PassBatcher._take`), runs them as ONE pass and completes what finished; submissions that
arrive after it took its work schedule the next drain, and a drain that leaves work behind (a
cap, a session's second call, the rest of a long prompt) schedules it itself. So the model
thread's queue holds at most one drain, and anything else posted there (a beam step) waits for at
most one pass. (One drain per call, as before, piled up: a pass of k calls consumed one drain and
its k sessions posted k new ones, so under load hundreds of drains, each a real pass, stood
between a new prompt and its prefill: 5-9 s at 16 clients.)

**Prompts in chunks.** A prompt is fed ``prefill_chunk`` tokens per pass (0 = whole), beside
whatever verify calls are ready, so a long prompt no longer stops every other session for its
whole prefill, and its rows share the pass's weight reads. The engine must be able to feed prompt
chunks in a tree pass (the native engine); otherwise a prompt runs whole, in a pass of its own,
between verify batches. On a CPU the ``q8``/C-op rows are computed alone in a fixed order, so a
prompt fed in chunks beside other sessions gives the bits of one prefill pass of its own.

**How long a drain waits.** Sessions come back one step after the last batch, not all at the
same instant (each caller wakes, returns, and its next call crosses the GIL and gRPC). A fixed
short window lost that race: with 16 sessions and a 2 ms window the batches collapsed into passes
of one session each (39 tok/s instead of 130). So a drain waits until as many calls are queued as
there were distinct sessions calling within the last ``horizon_s`` (they are about to come back),
or until ``window_s`` after the later of the oldest queued call and the end of the last batch
(that batch's sessions are the ones on their way back), whichever is first. One lone session never
waits, and no drain waits while prompt tokens are queued: it feeds them instead of idling.

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
from typing import Any

from spec_decode.types import ColocatedDraft, DraftTree, PrefillResult, VerifyResult


@dataclass(eq=False)
class VerifyCall:
    session_id: str
    tree: DraftTree
    return_target_tokens: bool
    return_hidden_state: bool = False
    colocated_draft: ColocatedDraft | None = None  # draft the next tree with the co-located head after this pass
    enqueued: float = field(default_factory=time.monotonic)
    future: Future[VerifyResult] = field(default_factory=Future)


@dataclass(eq=False)
class PrefillJob:
    """A new session's prompt: all but its last token go into the cache, maybe over several passes."""

    session_id: str
    tokens: list[int]  # the whole prompt (validated)
    options: Any = None  # what the verifier needs to start and finish it (sampling, hidden state, draft)
    session: Any = None  # the verifier's session, once the job has started
    fed: int = 0  # prompt tokens in the cache so far
    compute_s: float = 0.0  # seconds of the passes that fed it
    evicted: int = 0  # sessions evicted to make room for it
    enqueued: float = field(default_factory=time.monotonic)
    future: Future[PrefillResult] = field(default_factory=Future)

    @property
    def remaining(self) -> int:
        """Prompt tokens still to feed (the last token stays pending, never fed)."""
        return len(self.tokens) - 1 - self.fed


@dataclass(frozen=True)
class PassWork:
    """What one drain runs as one pass: verify calls and (job, tokens to feed now) prompt chunks."""

    calls: list[VerifyCall]
    chunks: list[tuple[PrefillJob, int]]

    def __bool__(self) -> bool:
        return bool(self.calls or self.chunks)


class PassBatcher:
    """The queues and the batch-forming policy; ``run_pass`` does the work of one drain."""

    def __init__(
        self,
        run_pass: Callable[[PassWork], None],
        max_batch: int,
        window_s: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
        horizon_s: float = 0.25,
        prefill_chunk: int = 0,
        mix: bool = True,
    ) -> None:
        """``prefill_chunk``: prompt tokens fed per pass (0 = a whole prompt). ``mix``: prompt
        chunks may share a pass with verify calls (the engine can feed them in one pass); without
        it a drain runs either verify calls or one whole prompt, taking turns."""
        if max_batch < 1 or window_s < 0 or prefill_chunk < 0:
            raise ValueError(
                f"max_batch ({max_batch}) must be >= 1, window_s ({window_s}) and prefill_chunk ({prefill_chunk}) >= 0"
            )
        self._run_pass = run_pass
        self.max_batch = max_batch
        self.window_s = window_s
        self.prefill_chunk = prefill_chunk if mix else 0
        self.mix = mix
        self._clock = clock
        self._sleep = sleep  # tests: a fake clock advances by sleeping instead of waiting
        self.horizon_s = horizon_s
        self._queue: collections.deque[VerifyCall] = collections.deque()
        self._jobs: collections.deque[PrefillJob] = collections.deque()
        self._recent: dict[str, float] = {}  # session -> last submit time
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._scheduled = False  # a drain is queued (or waiting to take its work)
        self._last_done = float("-inf")  # when the last pass's results were delivered
        self._prompt_turn = False  # without mixing: the next drain runs a prompt first

    def submit(self, call: VerifyCall) -> bool:
        """Queue ``call``; True when no drain is pending, so the caller must schedule one."""
        with self._lock:
            self._queue.append(call)
            self._recent[call.session_id] = self._clock()
            self._arrived.notify()
            return self._schedule()

    def submit_prefill(self, job: PrefillJob) -> bool:
        """Queue ``job``; True when no drain is pending, so the caller must schedule one."""
        with self._lock:
            self._jobs.append(job)
            self._arrived.notify()
            return self._schedule()

    def _schedule(self) -> bool:
        """Caller holds the lock."""
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
        """Verify calls waiting."""
        with self._lock:
            return len(self._queue)

    def drain(self) -> bool:
        """Run one pass if work is waiting (call on the model thread). True when work was left
        queued: the caller must schedule another drain (this one still counts as pending)."""
        work, more = self._take()
        if not work:
            return more
        try:
            self._run_pass(work)
        except BaseException as exc:  # nobody waits on the drain itself: never leave a caller hanging
            for future in [c.future for c in work.calls] + [j.future for j, _ in work.chunks]:
                if not future.done():
                    future.set_exception(exc)
        with self._lock:
            self._last_done = self._clock()
        return more

    def _take(self) -> tuple[PassWork, bool]:
        if self.window_s > 0 and self.max_batch > 1:
            with self._lock:
                while self._queue and not self._jobs:  # queued prompt tokens: feed them, do not idle
                    now = self._clock()
                    distinct = len({c.session_id for c in self._queue})
                    wait = max(self._queue[0].enqueued, self._last_done) + self.window_s - now
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
            calls: list[VerifyCall] = []
            chunks: list[tuple[PrefillJob, int]] = []
            prompt_first = self._jobs and (self.mix or self._prompt_turn or not self._queue)
            if self.mix or not prompt_first:
                calls = self._take_calls()
            if prompt_first:
                chunks = self._take_chunks()
            self._prompt_turn = not self.mix and bool(self._jobs) and not prompt_first
            more = bool(self._queue or any(not j.future.done() for j in self._jobs))
            self._scheduled = more  # submissions from now on schedule the next drain, unless work is left
            return PassWork(calls, chunks), more

    def _take_calls(self) -> list[VerifyCall]:
        """Up to ``max_batch`` calls of distinct sessions, in order (caller holds the lock)."""
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

    def _take_chunks(self) -> list[tuple[PrefillJob, int]]:
        """Prompt tokens for this pass, oldest prompt first, at most ``prefill_chunk`` in all (0: one
        whole prompt); a prompt fed to its end leaves the queue (caller holds the lock)."""
        chunks: list[tuple[PrefillJob, int]] = []
        budget = self.prefill_chunk
        while self._jobs:
            job = self._jobs[0]
            if job.future.done():  # failed (no room for its session, a failed pass): nothing more to feed
                self._jobs.popleft()
                continue
            n = job.remaining if budget == 0 else min(job.remaining, budget)
            chunks.append((job, n))
            if n < job.remaining or budget == 0:
                if n == job.remaining:
                    self._jobs.popleft()
                break
            self._jobs.popleft()  # fed to its end by this pass
            budget -= n
            if budget == 0:
                break
        return chunks
