"""Store URLs, the config object, opening a store, and cutting token sequences into phrases."""

from __future__ import annotations

import pytest
from phrase_store_helpers import new_namespace

from phrase_store import (
    InMemoryPhraseStore,
    PhraseStoreConfig,
    open_phrase_store,
    phrases_from_tokens,
    store_kind,
)
from phrase_store.redis_store import RedisPhraseStore
from phrase_store.store import namespace_tag
from spec_decode.errors import InvalidArgument
from spec_decode.models import vocab_fingerprint


@pytest.mark.parametrize("url", [None, "", "memory://"])
def test_memory_urls(url: str | None) -> None:
    assert store_kind(url) == "memory"
    assert isinstance(open_phrase_store(url, new_namespace()), InMemoryPhraseStore)


@pytest.mark.parametrize(
    "url", ["redis://localhost:6379/0", "redis://redis", "rediss://:pw@cache.internal:6380/2", "redis://u:p@h/"]
)
def test_redis_urls(url: str) -> None:
    assert store_kind(url) == "redis"
    store = open_phrase_store(url, new_namespace())  # lazy: nothing is contacted yet
    assert isinstance(store, RedisPhraseStore)
    store.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("memory", "not supported"),
        ("memory://elsewhere", "not supported"),
        ("http://localhost:6379", "not supported"),
        ("unix:///tmp/redis.sock", "not supported"),
        ("localhost:6379", "not supported"),
        ("redis://", "names no host"),
        ("redis:///0", "names no host"),
        ("redis://localhost:port/0", "malformed"),
        ("redis://localhost:99999/0", "malformed"),
        ("redis://localhost:0/0", "port 0"),
        ("redis://localhost:6379/cache", "database number"),
    ],
)
def test_bad_urls_name_the_accepted_forms(url: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        open_phrase_store(url, new_namespace())


def test_passwords_stay_out_of_error_messages() -> None:
    with pytest.raises(InvalidArgument) as info:
        store_kind("redis://:hunter2@localhost:6379/cache")
    assert "hunter2" not in info.value.message and ":***@" in info.value.message


def test_limits_reach_the_store_and_are_validated() -> None:
    store = open_phrase_store("memory://", new_namespace(), max_per_key=3, max_keys=7)
    assert isinstance(store, InMemoryPhraseStore)
    assert (store.config.max_per_key, store.config.max_keys) == (3, 7)
    with pytest.raises(InvalidArgument, match="unknown phrase store setting"):
        open_phrase_store(None, new_namespace(), guess_set_size=3)


@pytest.mark.parametrize(
    "bad",
    [
        {"max_per_key": 0},
        {"max_keys": 0},
        {"ttl_s": 0},
        {"ttl_s": float("inf")},
        {"socket_timeout_s": -1},
        {"connect_timeout_s": float("nan")},
        {"backoff_s": -0.1},
        {"url": "ftp://x"},
    ],
)
def test_config_validate(bad: dict[str, object]) -> None:
    assert PhraseStoreConfig().validate() == PhraseStoreConfig()
    with pytest.raises(InvalidArgument):
        PhraseStoreConfig(**bad).validate()  # type: ignore[arg-type]


def test_namespace_is_the_vocab_fingerprint() -> None:
    class Tokenizer:
        def get_vocab(self) -> dict[str, int]:
            return {"a": 0, "b": 1}

    fingerprint = vocab_fingerprint(Tokenizer())
    assert namespace_tag(fingerprint) == fingerprint[:12]
    assert namespace_tag(fingerprint.upper()) == fingerprint[:12]


def test_phrases_from_tokens() -> None:
    assert phrases_from_tokens([1, 2, 3, 4], 2) == [(1, 2), (2, 3), (3, 4)]
    assert phrases_from_tokens((1, 2, 3, 4), 4) == [(1, 2, 3, 4)]
    assert phrases_from_tokens([1, 2, 3], 4) == []
    assert phrases_from_tokens(range(6), 5) == [(0, 1, 2, 3, 4), (1, 2, 3, 4, 5)]
    with pytest.raises(InvalidArgument, match="at least 2"):
        phrases_from_tokens([1, 2, 3], 1)
