"""Per-session state of the target service, under a session cap and a context cap.

A session holds its KV cache (``prefix_len`` committed tokens), its *pending* token (the
last emitted one, not in the cache), its sampling params and its random generator. A
session is *busy* while a call is working on it and *idle* otherwise; when the store is
full a new session evicts the least-recently-used idle one. One call at a time works on
a session (its own lock); the store's lock only guards the table, never a forward pass.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from spec_decode.errors import InvalidArgument, NotFound, ResourceExhausted
from spec_decode.prompt_lookup import PromptLookupDrafter
from spec_decode.types import SamplingParams


@dataclass(eq=False)
class Session:
    """Mutable state of one session; touch it only inside :meth:`SessionStore.checkout`."""

    session_id: str
    cache: Any  # transformers DynamicCache: prefix_len entries per layer
    sampling: SamplingParams
    generator: torch.Generator
    prefix_len: int = 0  # committed tokens in the KV cache
    pending_token: int = -1  # last emitted token, not in the cache (-1 until prefilled)
    kv_bytes: int = 0
    # The session's tokens, the pending one included (prompt, then every accepted token): what a
    # co-located prompt lookup drafts from. Not kept for beam methods (each beam has its own).
    tokens: list[int] = field(default_factory=list)
    lookup: PromptLookupDrafter | None = None  # the co-located prompt lookup (its n-gram index), on first use
    last_used: float = 0.0
    busy: int = 0  # calls holding the session (guarded by the store's lock)
    closed: bool = False  # released or evicted; a waiting call then sees NotFound
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Beam methods: one slot (cache, prefix_len, pending token, scores) per beam, made from the
    # fields above on the first beam step (target_service/beam_step.py); None for other methods.
    beams: list[Any] | None = None

    @property
    def context_len(self) -> int:
        """Tokens in the session, the pending one included."""
        return self.prefix_len + 1


class SessionStore:
    """Thread-safe table of sessions with an LRU-of-idle eviction policy.

    Args:
        max_sessions: sessions held at once.
        max_context: positions a session may use: a prompt of ``L`` tokens needs ``L``,
            a tree pass of ``N`` nodes over ``prefix_len`` cached tokens needs
            ``prefix_len + 1 + N``.
    """

    def __init__(
        self,
        max_sessions: int,
        max_context: int,
        clock: Callable[[], float] = time.monotonic,
        max_kv_bytes: int = 0,
    ) -> None:
        if max_sessions < 1 or max_context < 1 or max_kv_bytes < 0:
            raise ValueError(
                f"max_sessions ({max_sessions}) and max_context ({max_context}) must be >= 1, "
                f"max_kv_bytes ({max_kv_bytes}) >= 0"
            )
        self.max_sessions = max_sessions
        self.max_context = max_context
        self.max_kv_bytes = max_kv_bytes  # 0 = no budget
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        self.evictions = 0

    # ---- caps ---------------------------------------------------------------------

    def check_prompt(self, num_tokens: int) -> None:
        if num_tokens > self.max_context:
            raise InvalidArgument(f"prompt has {num_tokens} tokens; max_context is {self.max_context}")

    def check_tree(self, prefix_len: int, num_nodes: int) -> None:
        needed = prefix_len + 1 + num_nodes
        if needed > self.max_context:
            raise InvalidArgument(
                f"context overflow: {prefix_len} cached tokens + 1 pending + {num_nodes} draft nodes = "
                f"{needed} positions; max_context is {self.max_context}"
            )

    # ---- table --------------------------------------------------------------------

    def add(self, session: Session, reserve_bytes: int = 0) -> int:
        """Insert ``session`` busy (the caller must :meth:`finish` it); returns sessions evicted.

        ``reserve_bytes`` is the KV memory the new session will need at first; idle sessions
        are evicted (least recently used first) to make room under ``max_kv_bytes``.
        Raises InvalidArgument for an existing id, ResourceExhausted when the store is
        full (sessions or KV memory) and no idle session can make room.
        """
        with self._lock:
            if session.session_id in self._sessions:
                raise InvalidArgument(f"session {session.session_id!r} already exists")
            if self.max_kv_bytes and reserve_bytes > self.max_kv_bytes:
                raise ResourceExhausted(
                    f"session {session.session_id!r} needs {reserve_bytes} bytes of KV memory; "
                    f"the budget is {self.max_kv_bytes} bytes"
                )
            evicted = 0
            while len(self._sessions) >= self.max_sessions or self._over_budget(reserve_bytes):
                idle = [s for s in self._sessions.values() if s.busy == 0]
                if not idle:
                    if len(self._sessions) >= self.max_sessions:
                        raise ResourceExhausted(
                            f"all {self.max_sessions} sessions are busy; none can be evicted for "
                            f"{session.session_id!r} (retry later or release sessions)"
                        )
                    raise ResourceExhausted(
                        f"KV memory budget of {self.max_kv_bytes} bytes is held by busy sessions; "
                        f"{session.session_id!r} needs {reserve_bytes} more (retry later)"
                    )
                victim = min(idle, key=lambda s: s.last_used)
                self._drop(victim)
                evicted += 1
            self.evictions += evicted
            session.busy = 1
            session.last_used = self._clock()
            self._sessions[session.session_id] = session
            return evicted

    def _over_budget(self, extra: int) -> bool:
        """Caller holds the lock."""
        if not self.max_kv_bytes:
            return False
        return sum(s.kv_bytes for s in self._sessions.values()) + extra > self.max_kv_bytes

    def enforce_kv_budget(self) -> int:
        """Evict idle sessions (LRU first) while the KV memory is over budget; returns how many.

        Busy sessions are never evicted, so a burst of busy sessions may overshoot until they
        finish; new sessions are refused meanwhile (:meth:`add`).
        """
        evicted = 0
        with self._lock:
            while self._over_budget(0):
                idle = [s for s in self._sessions.values() if s.busy == 0]
                if not idle:
                    break
                self._drop(min(idle, key=lambda s: s.last_used))
                evicted += 1
            self.evictions += evicted
        return evicted

    def finish(self, session: Session) -> None:
        """End a call on ``session``: it becomes idle (if no other call holds it)."""
        with self._lock:
            session.busy -= 1
            session.last_used = self._clock()

    def remove(self, session: Session) -> None:
        """Drop ``session`` if it is still the one stored under its id (failed prefill)."""
        with self._lock:
            if self._sessions.get(session.session_id) is session:
                self._drop(session)

    def release(self, session_id: str) -> bool:
        """Forget ``session_id``; False when it did not exist. A call in flight finishes on it."""
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                return False
            self._drop(session)
            return True

    @contextmanager
    def checkout(self, session_id: str) -> Iterator[Session]:
        """Hold ``session_id`` busy and locked for one call; NotFound if unknown or gone."""
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                raise NotFound(f"unknown session {session_id!r} (never prefilled, released or evicted)")
            session.busy += 1
            session.last_used = self._clock()
        try:
            with session.lock:
                if session.closed:
                    raise NotFound(f"session {session_id!r} was released while this call waited")
                yield session
        finally:
            self.finish(session)

    def _drop(self, session: Session) -> None:
        del self._sessions[session.session_id]
        session.closed = True

    # ---- accounting ---------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def __contains__(self, session_id: object) -> bool:
        with self._lock:
            return session_id in self._sessions

    def kv_bytes(self, session_id: str) -> int:
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None:
                raise NotFound(f"unknown session {session_id!r}")
            return session.kv_bytes

    def total_kv_bytes(self) -> int:
        with self._lock:
            return sum(s.kv_bytes for s in self._sessions.values())
