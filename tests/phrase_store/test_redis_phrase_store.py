"""Redis-only behaviour, against a real redis-server: key layout, TTLs, sharing between
replicas, and failing soft through an outage (server stopped and restarted mid-test)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
import redis
from phrase_store_helpers import RedisServer, new_namespace

from phrase_store import open_phrase_store
from phrase_store.redis_store import RedisPhraseStore


@pytest.fixture
def namespace() -> str:
    return new_namespace()


@pytest.fixture
def rstore(redis_server: RedisServer, namespace: str) -> Iterator[RedisPhraseStore]:
    store = open_phrase_store(redis_server.url, namespace, ttl_s=100)
    assert isinstance(store, RedisPhraseStore)
    yield store
    store.clear()
    store.close()


def test_key_layout_and_ttl_refreshed_on_write(rstore: RedisPhraseStore, redis_client: redis.Redis) -> None:
    key = f"specd:phr:{rstore.namespace[:12]}:42"
    rstore.add([(42, 1, 2), (42, 3)])
    assert rstore.key_for(42) == key
    assert redis_client.lrange(key, 0, -1) == [b"3", b"1,2"]
    assert redis_client.zrange(rstore.index_key, 0, -1) == [b"42"]
    for name in (key, rstore.index_key):
        assert 90 < redis_client.ttl(name) <= 100
    redis_client.expire(key, 5)
    rstore.add([(42, 4)])
    assert redis_client.ttl(key) > 90
    redis_client.expire(key, 5)
    assert rstore.touch(42, (1, 2))
    assert redis_client.ttl(key) > 90


def test_ttl_expires_phrases(redis_server: RedisServer, redis_client: redis.Redis, namespace: str) -> None:
    store = open_phrase_store(redis_server.url, namespace, ttl_s=0.2)
    store.add([(1, 2), (3, 4)])
    assert len(store.get([1, 3], k=1)) == 2
    time.sleep(0.4)
    assert store.get([1, 3], k=1) == {}
    assert redis_client.keys(f"specd:phr:{namespace[:12]}:*") == []
    store.close()


def test_evicted_keys_are_deleted(redis_server: RedisServer, redis_client: redis.Redis, namespace: str) -> None:
    store = open_phrase_store(redis_server.url, namespace, max_keys=3)
    for key in range(5):
        store.add([(key, 1)])
    names = sorted(redis_client.keys(f"specd:phr:{namespace[:12]}:*"))
    assert names == sorted(f"specd:phr:{namespace[:12]}:{s}".encode() for s in ("2", "3", "4", "keys"))
    store.clear()
    store.close()


def test_replicas_with_one_namespace_share_one_pool(redis_server: RedisServer, namespace: str) -> None:
    a = open_phrase_store(redis_server.url, namespace, max_per_key=2)
    b = open_phrase_store(redis_server.url, namespace.upper(), max_per_key=2)  # same fingerprint
    a.add([(1, 2)])
    b.add([(1, 3), (1, 4)])
    assert a.get([1], k=5) == {1: [(4,), (3,)]}
    assert b.touch(1, (3,))
    assert a.get([1], k=5) == {1: [(3,), (4,)]}
    a.clear()
    a.close()
    b.close()


def test_server_errors_fail_soft_without_backoff(rstore: RedisPhraseStore, redis_client: redis.Redis) -> None:
    rstore.add([(1, 2)])
    redis_client.set(rstore.key_for(7), "not a list")  # WRONGTYPE for LRANGE, LREM
    redis_client.rpush(rstore.key_for(8), "garbage")  # not a continuation
    assert rstore.get([1, 7, 8], k=3) == {1: [(2,)]}
    rstore.add([(7, 1)])  # dropped, not raised
    assert rstore.stats().errors == 3
    assert rstore.get([1], k=3) == {1: [(2,)]}  # no backoff: the server is up


def test_url_password_db_and_tls_reach_the_client(namespace: str) -> None:
    store = open_phrase_store("redis://:s3cret@127.0.0.1:1/3", namespace)
    assert isinstance(store, RedisPhraseStore)
    kwargs = store._client.connection_pool.connection_kwargs
    assert (kwargs["password"], kwargs["db"], kwargs["socket_timeout"]) == ("s3cret", 3, 0.25)
    tls = open_phrase_store("rediss://127.0.0.1:1/0", namespace)
    assert isinstance(tls, RedisPhraseStore)
    assert tls._client.connection_pool.connection_class is redis.SSLConnection
    # Nothing listens on port 1: opening was lazy, and operations fail soft.
    assert store.get([1], k=1) == {}
    assert store.ping() is False
    assert store.stats().errors == 3  # get, ping, and this stats call


def test_outage_fails_soft_and_recovers_without_restart(
    private_redis: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="phrase_store.redis_store")
    store = open_phrase_store(private_redis.url, namespace, backoff_s=0.1)
    store.add([(1, 2, 3)])
    assert store.get([1], k=3) == {1: [(2, 3)]}

    private_redis.stop()
    for _ in range(4):  # sleeps past the backoff, so some rounds really try to reconnect
        began = time.monotonic()
        assert store.get([1], k=3) == {}
        store.add([(1, 4)])
        assert store.touch(1, (2, 3)) is False
        assert store.stats().keys is None
        assert store.ping() is False
        assert time.monotonic() - began < 1.0
        time.sleep(0.15)
    assert store.stats().errors >= 21
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, "the outage warning is rate-limited"
    late = open_phrase_store(private_redis.url, namespace, backoff_s=0.1)  # opened while Redis is down
    assert late.get([1], k=3) == {}

    private_redis.start()  # same port, empty (no persistence)
    deadline = time.monotonic() + 5
    while store.get([1], k=3) == {} and time.monotonic() < deadline:
        store.add([(1, 5)])
        time.sleep(0.05)
    assert store.get([1], k=3) == {1: [(5,)]}
    assert store.touch(1, (5,)) is True
    time.sleep(0.15)  # past late's backoff
    assert late.get([1], k=3) == {1: [(5,)]}
    assert store.stats().keys == 1
    assert any("reachable again" in r.getMessage() for r in caplog.records)
    store.close()
    late.close()
