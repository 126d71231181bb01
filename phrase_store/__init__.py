"""Ouroboros' phrase pool: n-gram phrases keyed by their first token, in process or in Redis.

    store = open_phrase_store(url, namespace=vocab.fingerprint, max_per_key=16)
    store.add(phrases_from_tokens(verified_tokens, n=4))
    store.get([last_token], k=3)  # {last_token: [continuation, ...]}, newest first

See store.py for the semantics, README.md for the Redis layout and outage behaviour.
"""

from __future__ import annotations

from typing import Any

from phrase_store.memory import InMemoryPhraseStore
from phrase_store.store import (
    Continuation,
    Phrase,
    PhraseStore,
    PhraseStoreConfig,
    PhraseStoreStats,
    phrases_from_tokens,
    store_kind,
)
from spec_decode.errors import InvalidArgument

__all__ = [
    "Continuation",
    "InMemoryPhraseStore",
    "Phrase",
    "PhraseStore",
    "PhraseStoreConfig",
    "PhraseStoreStats",
    "open_phrase_store",
    "open_store",
    "phrases_from_tokens",
    "store_kind",
]


def open_phrase_store(url: str | None, namespace: str, **limits: Any) -> PhraseStore:
    """The store a URL names, for one tokenizer fingerprint.

    ``url``: None, ``""`` or ``"memory://"`` → ``InMemoryPhraseStore``; ``redis://[:PASSWORD@]HOST[:PORT][/DB]``
    or ``rediss://`` (TLS) → ``RedisPhraseStore`` (connects lazily; a Redis that is down is not an
    error). ``limits``: any other ``PhraseStoreConfig`` field (max_per_key, max_keys, ttl_s,
    socket_timeout_s, connect_timeout_s, backoff_s). Raises InvalidArgument for a bad URL, limit
    or namespace.
    """
    try:
        config = PhraseStoreConfig(url=url, **limits)
    except TypeError as exc:
        raise InvalidArgument(f"unknown phrase store setting: {exc}") from None
    return open_store(config, namespace)


def open_store(config: PhraseStoreConfig, namespace: str) -> PhraseStore:
    """The store a validated-on-the-way ``PhraseStoreConfig`` describes (see open_phrase_store)."""
    if config.validate().kind == "memory":
        return InMemoryPhraseStore(namespace, config)
    from phrase_store.redis_store import RedisPhraseStore  # redis-py is needed only here

    return RedisPhraseStore(namespace, config)
