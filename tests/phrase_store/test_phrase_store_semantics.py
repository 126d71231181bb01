"""One suite, both stores: every test runs against InMemoryPhraseStore and RedisPhraseStore
(a real redis-server), which must behave identically."""

from __future__ import annotations

import threading

import pytest
from phrase_store_helpers import MakeStore

from phrase_store import PhraseStore, phrases_from_tokens
from spec_decode.errors import InvalidArgument


def test_get_returns_newest_first_up_to_k(store: PhraseStore) -> None:
    store.add([(1, 10), (1, 11, 12), (1, 13)])
    assert store.get([1], k=2) == {1: [(13,), (11, 12)]}
    assert store.get([1], k=10) == {1: [(13,), (11, 12), (10,)]}


def test_cap_evicts_oldest_across_calls_and_within_a_batch(make_store: MakeStore) -> None:
    store = make_store(max_per_key=3)
    for i in range(5):
        store.add([(7, 100 + i)])
    assert store.get([7], k=10) == {7: [(104,), (103,), (102,)]}
    store.add([(8, 200 + i) for i in range(5)])
    assert store.get([8], k=10) == {8: [(204,), (203,), (202,)]}


def test_readd_refreshes_instead_of_duplicating(make_store: MakeStore) -> None:
    store = make_store(max_per_key=3)
    store.add([(7, 1), (7, 2), (7, 3)])
    store.add([(7, 1)])  # the oldest becomes the newest
    assert store.get([7], k=5) == {7: [(1,), (3,), (2,)]}
    store.add([(7, 4)])  # so (2,) is evicted, not (1,)
    assert store.get([7], k=5) == {7: [(4,), (1,), (3,)]}
    store.add([(9, 1), (9, 2), (9, 1)])  # duplicates within one batch
    assert store.get([9], k=5) == {9: [(1,), (2,)]}


def test_continuations_of_different_lengths_are_different_phrases(store: PhraseStore) -> None:
    store.add([(5, 1), (5, 1, 2), (5, 1, 2, 3)])
    assert store.get([5], k=5) == {5: [(1, 2, 3), (1, 2), (1,)]}


def test_touch_refreshes_and_reports_presence(make_store: MakeStore) -> None:
    store = make_store(max_per_key=3)
    store.add([(7, 1), (7, 2), (7, 3)])
    assert store.touch(7, (1,)) is True
    assert store.get([7], k=5) == {7: [(1,), (3,), (2,)]}
    assert store.touch(7, (99,)) is False
    assert store.touch(8, (1,)) is False
    store.add([(7, 4)])
    assert store.get([7], k=5) == {7: [(4,), (1,), (3,)]}
    assert store.stats().touched == 1


def test_get_many_keys_in_one_call(store: PhraseStore) -> None:
    store.add([(key, key, i) for key in range(20) for i in range(5)])
    got = store.get([*range(25), 3, 3], k=2)
    assert list(got) == list(range(20))  # request order; missing keys absent; duplicates once
    assert got[4] == [(4, 4), (4, 3)]
    assert store.get([], k=3) == {}
    stats = store.stats()
    assert (stats.hits, stats.misses, stats.added) == (20, 5, 100)


def test_bad_input_raises_invalid_argument(store: PhraseStore) -> None:
    for phrases in ([(5,)], [()], [(5, -1)], [(5, 1.5)], [(5, "6")]):
        with pytest.raises(InvalidArgument):
            store.add(phrases)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        store.get([1], k=0)
    with pytest.raises(InvalidArgument):
        store.get([-1], k=1)
    with pytest.raises(InvalidArgument):
        store.touch(1, ())
    assert store.stats().phrases == 0


@pytest.mark.parametrize("namespace", ["", "abc", "xyz0123456789abcdef", "0123456789a"])
def test_namespace_must_look_like_a_fingerprint(make_store: MakeStore, namespace: str) -> None:
    with pytest.raises(InvalidArgument, match="fingerprint"):
        make_store(namespace)


def test_namespaces_do_not_share_phrases(make_store: MakeStore) -> None:
    a, b = make_store("a" * 64), make_store("b" * 64)
    a.add([(1, 2, 3)])
    assert b.get([1], k=3) == {}
    b.add([(1, 9)])
    a.clear()
    assert a.get([1], k=3) == {}
    assert b.get([1], k=3) == {1: [(9,)]}


def test_max_keys_bounds_the_pool(make_store: MakeStore) -> None:
    store = make_store(max_keys=500)
    for start in range(0, 10_000, 250):
        store.add([(t, t + 1, t + 2) for t in range(start, start + 250)])
    stats = store.stats()
    assert (stats.keys, stats.phrases, stats.added) == (500, 500, 10_000)
    assert len(store.get(range(9_500, 10_000), k=1)) == 500  # the most recent keys survive
    assert store.get([0, 9_000, 9_499], k=1) == {}


def test_reads_count_as_use_for_key_eviction(make_store: MakeStore) -> None:
    store = make_store(max_keys=4)
    for key in (1, 2, 3, 4):
        store.add([(key, 9)])
    store.get([1], k=1)  # 1 becomes the most recently used key; 2 the least
    store.add([(5, 9)])
    assert sorted(store.get(range(1, 6), k=1)) == [1, 3, 4, 5]


def test_concurrent_adders_lose_nothing_within_caps(make_store: MakeStore) -> None:
    store = make_store(max_per_key=16)
    threads, rounds, shared = 8, 12, 99_999
    start = threading.Barrier(threads)
    failures: list[BaseException] = []

    def adder(t: int) -> None:
        try:
            start.wait()
            for r in range(rounds):
                store.add([(t * 10 + j, t, r) for j in range(10)])
                if r < 2:
                    store.add([(shared, t, r)])  # 8 threads x 2 = 16 = max_per_key
        except BaseException as exc:  # pragma: no cover - reported below
            failures.append(exc)

    workers = [threading.Thread(target=adder, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not failures
    got = store.get([*range(threads * 10), shared], k=16)
    for t in range(threads):
        for j in range(10):
            assert got[t * 10 + j] == [(t, r) for r in reversed(range(rounds))]
    assert sorted(got[shared]) == sorted((t, r) for t in range(threads) for r in range(2))
    stats = store.stats()
    assert (stats.keys, stats.phrases, stats.added) == (81, 8 * 10 * 12 + 16, 8 * 10 * 12 + 16)


def test_clear_empties_the_namespace(store: PhraseStore) -> None:
    store.add(phrases_from_tokens([1, 2, 3, 1, 2, 4], n=3))
    assert store.get([1, 2], k=5) == {1: [(2, 4), (2, 3)], 2: [(3, 1)]}
    assert (store.stats().keys, store.stats().phrases) == (3, 4)
    store.clear()
    assert store.get([1, 2, 3], k=5) == {}
    assert (store.stats().keys, store.stats().phrases) == (0, 0)
    assert store.ping() is True
