"""The in-process phrase store: a dict of capped lists with LRU over keys, behind one lock.

The embedded default when no Redis URL is configured. Same semantics as the Redis store
(see store.py) except that it is private to the process and has no TTL: ``max_keys`` alone
bounds its memory (at most ``max_keys * max_per_key`` continuations).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

from phrase_store.store import (
    Continuation,
    Phrase,
    PhraseStoreConfig,
    PhraseStoreStats,
    check_continuation,
    check_k,
    group_phrases,
    namespace_tag,
    unique_keys,
)


class InMemoryPhraseStore:
    """A thread-safe, bounded phrase pool for one namespace (tokenizer fingerprint)."""

    def __init__(self, namespace: str, config: PhraseStoreConfig | None = None) -> None:
        self.config = (config or PhraseStoreConfig()).validate()
        namespace_tag(namespace)  # validates it
        self.namespace = namespace
        self._lock = threading.Lock()
        # key token -> continuations, newest first; dict order = LRU order (least recent first)
        self._pool: OrderedDict[int, list[Continuation]] = OrderedDict()
        self._hits = self._misses = self._added = self._touched = 0

    def get(self, keys: Sequence[int], k: int) -> dict[int, list[Continuation]]:
        check_k(k)
        wanted = unique_keys(keys)
        out: dict[int, list[Continuation]] = {}
        with self._lock:
            for key in wanted:
                phrases = self._pool.get(key)
                if phrases:
                    out[key] = phrases[:k]
                    self._pool.move_to_end(key)
            self._hits += len(out)
            self._misses += len(wanted) - len(out)
        return out

    def add(self, phrases: Sequence[Phrase]) -> None:
        groups = group_phrases(phrases)
        cap = self.config.max_per_key
        with self._lock:
            for key, continuations in groups.items():
                current = self._pool.get(key)
                if current is None:
                    current = self._pool[key] = []
                for continuation in continuations:
                    _move_to_front(current, continuation)
                del current[cap:]
                self._pool.move_to_end(key)
                self._added += len(continuations)
            while len(self._pool) > self.config.max_keys:
                self._pool.popitem(last=False)

    def touch(self, key: int, continuation: Continuation) -> bool:
        (key,) = unique_keys([key])
        continuation = check_continuation(continuation)
        with self._lock:
            current = self._pool.get(key)
            if current is None or continuation not in current:
                return False
            _move_to_front(current, continuation)
            self._pool.move_to_end(key)
            self._touched += 1
            return True

    def stats(self) -> PhraseStoreStats:
        with self._lock:
            return PhraseStoreStats(
                keys=len(self._pool),
                phrases=sum(len(v) for v in self._pool.values()),
                hits=self._hits,
                misses=self._misses,
                added=self._added,
                touched=self._touched,
                errors=0,
            )

    def clear(self) -> None:
        with self._lock:
            self._pool.clear()

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        """Nothing to release (kept for the protocol)."""


def _move_to_front(phrases: list[Continuation], continuation: Continuation) -> None:
    """Put ``continuation`` first in ``phrases`` (newest first), removing an older copy."""
    if continuation in phrases:
        phrases.remove(continuation)
    phrases.insert(0, continuation)
