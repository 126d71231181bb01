"""The phrase store protocol, its config, and the helpers both implementations share.

Ouroboros' phrase pool (see docs/PAPERS.md §1): a map from a KEY token to a capped list of
phrases that continue it, newest first. A phrase enters as a full n-gram ``(key, *continuation)``
and comes back as its ``continuation`` (length >= 1) under ``key``. Per key at most
``max_per_key`` continuations (Ouroboros' ``guess_set_size``): adding one more evicts the
OLDEST, re-adding (or ``touch``-ing) an existing one moves it to the front. Across keys a
store keeps at most ``max_keys`` keys, evicting the least recently used (get or write).

Example (``max_per_key=2``):
    >>> from phrase_store import open_phrase_store
    >>> store = open_phrase_store(None, namespace="0123456789abcdef", max_per_key=2)
    >>> store.add([(5, 1, 2), (5, 3, 4), (7, 8)])
    >>> store.add([(5, 1, 2), (5, 9, 9)])  # (1, 2) refreshed, then (9, 9) evicts (3, 4)
    >>> store.get([5, 7, 6], k=3)
    {5: [(9, 9), (1, 2)], 7: [(8,)]}

Every store is namespaced by the tokenizer fingerprint, so two vocabularies never share phrases.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol
from urllib.parse import urlsplit

from spec_decode.errors import InvalidArgument

Phrase = tuple[int, ...]  # a full n-gram: (key token, *continuation), length >= 2
Continuation = tuple[int, ...]  # the tokens after the key, length >= 1

NAMESPACE_CHARS = 12  # hex digits of the tokenizer fingerprint used in keys (48 bits)
_HEX = re.compile(r"[0-9a-f]+")


@dataclass(frozen=True)
class PhraseStoreStats:
    """Sizes of the pool (shared by every user of the namespace) and this object's counters.

    ``keys``/``phrases`` are None when the backend could not be asked (Redis unreachable).
    ``hits``/``misses`` count keys looked up by ``get``: with at least one phrase / with none.
    ``added`` counts phrases written by ``add``, ``touched`` successful ``touch`` calls, and
    ``errors`` operations that failed soft (dropped add, empty get) because the backend failed.
    """

    keys: int | None
    phrases: int | None
    hits: int = 0
    misses: int = 0
    added: int = 0
    touched: int = 0
    errors: int = 0


class PhraseStore(Protocol):
    """A namespaced pool of phrases keyed by their first token. Thread-safe; never raises on
    backend outages (reads come back empty, writes are dropped, both counted as ``errors``)."""

    namespace: str

    def get(self, keys: Sequence[int], k: int) -> dict[int, list[Continuation]]:
        """Up to ``k`` newest continuations for each of ``keys`` (one round trip for all).

        Keys without phrases are absent from the result; duplicates in ``keys`` are looked up once.
        """
        ...

    def add(self, phrases: Sequence[Phrase]) -> None:
        """Add full n-grams ``(key, *continuation)`` in order (the last one ends up newest), atomically."""
        ...

    def touch(self, key: int, continuation: Continuation) -> bool:
        """Move ``continuation`` to the front of ``key``'s list (a hit); False when it is not there."""
        ...

    def stats(self) -> PhraseStoreStats: ...

    def clear(self) -> None:
        """Remove every phrase of this namespace (for every user of it)."""
        ...

    def ping(self) -> bool:
        """Whether the backend answers now (for readiness checks)."""
        ...

    def close(self) -> None: ...


StoreKind = Literal["memory", "redis"]


def store_kind(url: str | None) -> StoreKind:
    """Which implementation a store URL names; raises InvalidArgument for anything unknown.

    ``None``, ``""`` and ``"memory://"`` mean the in-process store; ``redis://[:PASSWORD@]HOST[:PORT][/DB]``
    and ``rediss://`` (TLS) mean Redis.
    """
    if url is None or url == "" or url == "memory://":
        return "memory"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a non-numeric or out-of-range port
    except ValueError as exc:
        raise InvalidArgument(f"phrase store URL {_redacted(url)!r} is malformed: {exc}") from None
    if parts.scheme not in ("redis", "rediss"):
        raise InvalidArgument(
            f"phrase store URL {_redacted(url)!r} is not supported: use 'memory://' (or no URL) for the "
            "in-process store, or 'redis://[:PASSWORD@]HOST[:PORT][/DB]' / 'rediss://...' (TLS) for Redis"
        )
    if not parts.hostname:
        raise InvalidArgument(f"phrase store URL {_redacted(url)!r} names no host (e.g. redis://localhost:6379/0)")
    if port == 0:
        raise InvalidArgument(f"phrase store URL {_redacted(url)!r} has port 0")
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise InvalidArgument(f"phrase store URL {_redacted(url)!r}: the path must be a database number, got {db!r}")
    return "redis"


def _redacted(url: str) -> str:
    """The URL with any password replaced, for error messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


@dataclass(frozen=True)
class PhraseStoreConfig:
    """Where the pool lives and how big it may grow.

    ``ttl_s`` applies to Redis keys only (refreshed on every write); the in-process store is
    bounded by ``max_keys`` alone. The timeouts and ``backoff_s`` (how long to skip Redis after a
    failure, so an outage costs callers nothing) apply to Redis only.
    """

    url: str | None = None
    max_per_key: int = 16
    max_keys: int = 65_536
    ttl_s: float = 86_400.0
    socket_timeout_s: float = 0.25
    connect_timeout_s: float = 0.25
    backoff_s: float = 1.0

    @property
    def kind(self) -> StoreKind:
        return store_kind(self.url)

    def validate(self) -> PhraseStoreConfig:
        store_kind(self.url)
        if self.max_per_key < 1:
            raise InvalidArgument(f"max_per_key must be >= 1, got {self.max_per_key}")
        if self.max_keys < 1:
            raise InvalidArgument(f"max_keys must be >= 1, got {self.max_keys}")
        for name in ("ttl_s", "socket_timeout_s", "connect_timeout_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise InvalidArgument(f"{name} must be a positive number of seconds, got {value}")
        if not math.isfinite(self.backoff_s) or self.backoff_s < 0:
            raise InvalidArgument(f"backoff_s must be >= 0, got {self.backoff_s}")
        return self


def namespace_tag(namespace: str) -> str:
    """The first NAMESPACE_CHARS hex digits of a tokenizer fingerprint (lower case)."""
    ns = namespace.lower()
    if len(ns) < NAMESPACE_CHARS or not _HEX.fullmatch(ns):
        raise InvalidArgument(
            f"phrase store namespace must be the tokenizer fingerprint (>= {NAMESPACE_CHARS} hex digits, "
            f"see spec_decode.models.vocab_fingerprint), got {namespace!r}"
        )
    return ns[:NAMESPACE_CHARS]


def check_k(k: int) -> int:
    if k < 1:
        raise InvalidArgument(f"k (phrases per key) must be >= 1, got {k}")
    return k


def unique_keys(keys: Sequence[int]) -> list[int]:
    """``keys`` as validated token ids, first occurrence order, without duplicates."""
    return list(dict.fromkeys(_token(t) for t in keys))


def group_phrases(phrases: Sequence[Phrase]) -> dict[int, list[Continuation]]:
    """Validated phrases grouped by key token: {key: [continuation, ...]} in arrival order.

    Example:
        >>> group_phrases([(5, 1, 2), (7, 8), (5, 3)])
        {5: [(1, 2), (3,)], 7: [(8,)]}
    """
    groups: dict[int, list[Continuation]] = {}
    for phrase in phrases:
        tokens = tuple(_token(t) for t in phrase)
        if len(tokens) < 2:
            raise InvalidArgument(f"a phrase needs a key token and at least one more token, got {tokens}")
        groups.setdefault(tokens[0], []).append(tokens[1:])
    return groups


def check_continuation(continuation: Sequence[int]) -> Continuation:
    tokens = tuple(_token(t) for t in continuation)
    if not tokens:
        raise InvalidArgument("a continuation needs at least one token")
    return tokens


def _token(t: int) -> int:
    try:
        value = operator.index(t)  # ints, numpy ints; not floats or strings
    except TypeError:
        raise InvalidArgument(f"token ids must be integers, got {t!r}") from None
    if value < 0:
        raise InvalidArgument(f"token ids must be >= 0, got {value}")
    return value


def phrases_from_tokens(tokens: Sequence[int], n: int) -> list[Phrase]:
    """Every n-gram of ``tokens`` (stride 1), in order: the phrases a token sequence offers the pool.

    Example:
        >>> phrases_from_tokens([1, 2, 3, 4], 3)
        [(1, 2, 3), (2, 3, 4)]
    """
    if n < 2:
        raise InvalidArgument(f"a phrase has at least 2 tokens (a key and a continuation), got n={n}")
    seq = tuple(tokens)
    return [seq[i : i + n] for i in range(len(seq) - n + 1)]
