"""SessionStore: LRU eviction of idle sessions, busy sessions are never evicted, release frees."""

from __future__ import annotations

import pytest
import torch
from target_helpers import MakeVerifier

from spec_decode.errors import NotFound, ResourceExhausted
from spec_decode.types import EMPTY_TREE, SamplingParams
from target_service.sessions import Session, SessionStore

GREEDY = SamplingParams()


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def _session(sid: str) -> Session:
    return Session(sid, cache=None, sampling=GREEDY, generator=torch.Generator())


def _add_idle(store: SessionStore, sid: str) -> int:
    session = _session(sid)
    evicted = store.add(session)
    store.finish(session)
    return evicted


def test_lru_evicts_the_least_recently_used_idle_session() -> None:
    store = SessionStore(max_sessions=3, max_context=100, clock=FakeClock())
    for sid in "abc":
        _add_idle(store, sid)
    with store.checkout("a"):  # "a" is now the most recently used
        pass
    assert _add_idle(store, "d") == 1
    assert "b" not in store and all(s in store for s in "acd")
    assert _add_idle(store, "e") == 1
    assert "c" not in store
    assert store.evictions == 2


def test_busy_sessions_are_never_evicted() -> None:
    store = SessionStore(max_sessions=2, max_context=100, clock=FakeClock())
    _add_idle(store, "a")
    _add_idle(store, "b")
    with (
        store.checkout("a"),
        store.checkout("b"),
        pytest.raises(ResourceExhausted, match="all 2 sessions are busy"),
    ):
        _add_idle(store, "c")
    with store.checkout("a"):  # only "b" is idle now, though it is more recent than "a"
        assert _add_idle(store, "c") == 1
    assert "b" not in store and "a" in store


def test_release_during_a_call_is_seen_by_the_next_call() -> None:
    store = SessionStore(max_sessions=2, max_context=100)
    _add_idle(store, "a")
    with store.checkout("a") as session:
        assert store.release("a")
        assert session.closed
    with pytest.raises(NotFound), store.checkout("a"):
        pass
    assert store.release("a") is False and len(store) == 0


def test_verifier_evicts_lru_and_reports_it(make_verifier: MakeVerifier) -> None:
    verifier = make_verifier(max_sessions=3)
    for sid in "abc":
        assert verifier.prefill(sid, [1, 2, 3], GREEDY).evicted_sessions == 0
    verifier.verify("a", EMPTY_TREE)
    assert verifier.prefill("d", [4, 5], GREEDY).evicted_sessions == 1
    with pytest.raises(NotFound, match="'b'"):
        verifier.verify("b", EMPTY_TREE)
    for sid in "acd":
        verifier.verify(sid, EMPTY_TREE)
    assert verifier.info().active_sessions == 3


def test_verifier_refuses_when_every_session_is_busy(make_verifier: MakeVerifier) -> None:
    verifier = make_verifier(max_sessions=1)
    verifier.prefill("a", [1, 2, 3], GREEDY)
    with verifier.sessions.checkout("a"), pytest.raises(ResourceExhausted):
        verifier.prefill("b", [1, 2], GREEDY)
    assert "b" not in verifier.sessions
    verifier.verify("a", EMPTY_TREE)


def test_release_frees_kv_and_the_id(make_verifier: MakeVerifier) -> None:
    verifier = make_verifier()
    verifier.prefill("a", list(range(1, 21)), GREEDY)
    verifier.prefill("b", [1, 2], GREEDY)
    kv_a = verifier.sessions.kv_bytes("a")
    assert kv_a > 0 and verifier.sessions.total_kv_bytes() == kv_a + verifier.sessions.kv_bytes("b")
    assert verifier.release("a") is True
    assert verifier.release("a") is False
    assert verifier.sessions.total_kv_bytes() == verifier.sessions.kv_bytes("b")
    assert verifier.info().active_sessions == 1
    with pytest.raises(NotFound):
        verifier.sessions.kv_bytes("a")
    assert verifier.prefill("a", [7, 8], GREEDY).context_len == 2  # the id can be reused
