"""Phrase-store test helpers: fresh namespaces, the factory type (the redis-server is testkit's)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from testkit import RedisServer, free_port, redis_server_binary

from phrase_store import PhraseStore

__all__ = ["MakeStore", "RedisServer", "free_port", "new_namespace", "redis_server_binary"]


def new_namespace() -> str:
    """A fresh fingerprint-like namespace (64 hex digits), unique per call."""
    return uuid.uuid4().hex * 2


MakeStore = Callable[..., PhraseStore]
