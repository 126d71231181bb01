"""Batched verification: many sessions' trees in one forward pass, each result as if alone."""

from __future__ import annotations

import random
import threading
import time

import pytest
import torch
from target_helpers import MakeVerifier, inject_failure, kv_layers, random_tree

from spec_decode.errors import InvalidArgument, ResourceExhausted
from spec_decode.types import DraftTree, SamplingParams, SparseProbs
from target_service.batching import PassBatcher, PassWork, PrefillJob, VerifyCall
from target_service.sessions import Session
from target_service.verifier import TargetVerifier

GREEDY = SamplingParams()


def _session_runs(
    verifier: TargetVerifier, sessions: int, steps: int, sampling: SamplingParams, barrier: threading.Barrier | None
) -> dict[int, list[int]]:
    """Each session (own thread when ``barrier``) prefills and verifies ``steps`` random trees."""
    rng = random.Random(11)
    vocab = verifier.engine.vocab_size
    prompts = [[rng.randrange(vocab) for _ in range(3 + 4 * i)] for i in range(sessions)]
    trees = [[random_tree(rng, vocab, max_nodes=6) for _ in range(steps)] for _ in range(sessions)]
    for per_session in trees:  # give half of the nodes a sparse q: exercises the sampling residual path
        for j, tree in enumerate(per_session):
            if j % 2:
                probs = tuple(SparseProbs((t, (t + 1) % vocab), (0.75, 0.25)) for t in tree.tokens)
                per_session[j] = DraftTree(tree.tokens, tree.parents, probs)
    out: dict[int, list[int]] = {}

    def run(i: int) -> None:
        verifier.prefill(f"s{i}", prompts[i], sampling)
        emitted: list[int] = []
        for tree in trees[i]:
            if barrier is not None:
                barrier.wait()  # every session's verify arrives together: they share passes
            emitted.extend(verifier.verify(f"s{i}", tree).acceptance.emitted)
        out[i] = emitted

    if barrier is None:
        for i in range(sessions):
            run(i)
    else:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(sessions)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return out


@pytest.mark.parametrize(
    "sampling", [GREEDY, SamplingParams(temperature=0.8, top_k=40, seed=5)], ids=["greedy", "sampled"]
)
def test_batched_results_equal_serial_results(make_verifier: MakeVerifier, sampling: SamplingParams) -> None:
    want = _session_runs(make_verifier(max_batch=1), 4, 6, sampling, barrier=None)
    batched = make_verifier(max_batch=8)
    batched._batcher.window_s = 0.2  # generous: the four calls of a step surely meet in one batch
    got = _session_runs(batched, 4, 6, sampling, barrier=threading.Barrier(4))
    assert got == want
    stats = batched.stats()
    assert stats.verify_calls == 24
    assert stats.forward_passes < 24 and max(stats.batch_sizes) > 1  # passes were shared
    assert sum(size * n for size, n in stats.batch_sizes.items()) == 24


def test_prompts_fed_in_small_chunks_beside_other_sessions_change_nothing(make_verifier: MakeVerifier) -> None:
    """Prompts fed 3 tokens a pass while another session keeps verifying: every session emits what
    serial, whole-prompt runs emit, and prompt chunks did share passes with verify calls."""
    rng = random.Random(4)
    prompts = [[rng.randrange(1, 60) for _ in range(n)] for n in (6, 14, 19, 25)]
    trees = [random_tree(rng, 64, max_nodes=4) for _ in range(40)]

    def run(verifier: TargetVerifier, concurrent: bool) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        verifier.prefill("v", prompts[0], GREEDY)

        def loop() -> None:
            out["v"] = [t for tree in trees for t in verifier.verify("v", tree).acceptance.emitted]

        worker = threading.Thread(target=loop)
        if concurrent:
            worker.start()
        for i, prompt in enumerate(prompts[1:]):
            verifier.prefill(f"p{i}", prompt, GREEDY)
            out[f"p{i}"] = list(verifier.verify(f"p{i}", DraftTree.chain([3, 4])).acceptance.emitted)
        if not concurrent:
            worker.start()
        worker.join()
        return out

    want = run(make_verifier(max_batch=1, prefill_chunk=0), concurrent=False)
    chunked = make_verifier(max_batch=8, prefill_chunk=3)
    assert run(chunked, concurrent=True) == want
    stats = chunked.stats()
    assert stats.prefill_chunks == sum(-(-(len(p) - 1) // 3) for p in prompts)  # ceil((L - 1) / 3) each
    assert stats.mixed_passes >= 1  # some chunks rode in the other session's verify passes


def test_unbatched_verifier_runs_one_call_per_pass(make_verifier: MakeVerifier) -> None:
    verifier = make_verifier(max_batch=1)
    _session_runs(verifier, 3, 2, GREEDY, barrier=threading.Barrier(3))
    assert verifier.stats().batch_sizes == {1: 6}


def test_a_bad_tree_fails_alone(make_verifier: MakeVerifier) -> None:
    verifier = make_verifier(max_batch=8)
    for sid in ("a", "b"):
        verifier.prefill(sid, [5, 6, 7], GREEDY)
    calls = [VerifyCall("a", DraftTree((5, 6), (-1, 7)), False), VerifyCall("b", DraftTree.chain([8]), False)]
    calls.append(VerifyCall("ghost", DraftTree.chain([8]), False))
    verifier._model_thread.run(verifier._run_pass, PassWork(calls, []))
    with pytest.raises(InvalidArgument, match="parent index 7"):
        calls[0].future.result()
    assert calls[1].future.result().context_len == 4
    with pytest.raises(Exception, match="unknown session 'ghost'"):
        calls[2].future.result()


def test_failed_pass_fails_the_batch_and_keeps_every_session(
    make_verifier: MakeVerifier, monkeypatch: pytest.MonkeyPatch
) -> None:
    verifier = make_verifier(max_batch=8)
    for sid in ("a", "b"):
        verifier.prefill(sid, [5, 6, 7, 8], GREEDY)
    before = {sid: [k.clone() for k, _ in kv_layers(verifier.sessions._sessions[sid].cache)] for sid in ("a", "b")}
    calls = [VerifyCall(sid, DraftTree.chain([9, 10]), False) for sid in ("a", "b")]
    with monkeypatch.context() as patch:
        inject_failure(verifier.engine, patch)
        verifier._model_thread.run(verifier._run_pass, PassWork(calls, []))
    for call in calls:
        with pytest.raises(RuntimeError, match="simulated"):
            call.future.result()
    for sid in ("a", "b"):
        session = verifier.sessions._sessions[sid]
        assert session.prefix_len == 3 and session.pending_token == 8
        assert all(
            torch.equal(a, b) for a, b in zip(before[sid], (k for k, _ in kv_layers(session.cache)), strict=True)
        )
    assert verifier.verify("a", DraftTree.chain([9])).context_len == 5  # and the sessions still work


def test_same_session_twice_waits_for_the_next_batch(make_verifier: MakeVerifier) -> None:
    verifier = make_verifier(max_batch=8)
    verifier.prefill("a", [5, 6, 7], GREEDY)
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(verifier.verify("a", DraftTree.chain([1])).context_len))
        for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [4, 5, 6]  # one after another, never both in one pass


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def _call(sid: str, at: float) -> VerifyCall:
    call = VerifyCall(sid, DraftTree.chain([1]), False)
    call.enqueued = at
    return call


def test_batcher_waits_for_recent_sessions_only_and_caps() -> None:
    clock = FakeClock()
    batches: list[list[str]] = []
    batcher = PassBatcher(lambda w: batches.append([c.session_id for c in w.calls]), 3, 0.004, clock, clock.sleep)
    assert batcher.submit(_call("a", clock.now))  # no drain pending: the caller schedules one
    assert not batcher.drain()  # one session ever seen: nothing to wait for, nothing left
    assert clock.slept == [] and batches == [["a"]]
    assert batcher.submit(_call("a", clock.now))
    assert not batcher.submit(_call("b", clock.now))  # a drain is pending already
    batcher.drain()  # both recent sessions are here: no waiting
    assert clock.slept == [] and batches[-1] == ["a", "b"]
    clock.now += 0.002
    batcher.submit(_call("a", clock.now - 0.001))
    batcher.drain()  # b was active a moment ago: wait until 4 ms after a's call (later than the last batch)
    assert clock.slept == pytest.approx([0.003]) and batches[-1] == ["a"]
    batcher.forget("b")  # b was released: no more waiting for it
    batcher.submit(_call("a", clock.now))
    batcher.drain()
    assert len(clock.slept) == 1 and batches[-1] == ["a"]
    clock.now += 1.0  # beyond the horizon everyone is forgotten
    for sid in ("b", "c", "b", "d", "e"):
        batcher.submit(_call(sid, clock.now))
    assert batcher.drain()  # full batch: no waiting; the second "b" is deferred, so a drain must follow
    assert len(clock.slept) == 1 and batches[-1] == ["b", "c", "d"]
    clock.now += 1.0
    assert not batcher.drain()
    assert batches[-1] == ["b", "e"] and len(batcher) == 0
    batcher.drain()  # nothing queued: nothing runs
    assert len(batches) == 6
    with pytest.raises(ValueError):
        PassBatcher(lambda w: None, 0, 0.0)


def test_batcher_waits_for_the_last_batch_to_come_back() -> None:
    """A batch queued during another's pass waits (up to the window) for that pass's sessions."""
    clock = FakeClock()
    batches: list[list[str]] = []
    batcher = PassBatcher(lambda w: batches.append([c.session_id for c in w.calls]), 4, 0.010, clock, clock.sleep)
    for sid in ("a", "b"):
        batcher.submit(_call(sid, clock.now))
    batcher.drain()  # cohort a, b; it ends at 100.0
    batcher.submit(_call("c", clock.now - 0.050))  # c has waited 50 ms already (queued during the pass)
    batcher.submit(_call("d", clock.now - 0.050))
    batcher.drain()  # a and b are on their way back: c and d wait 10 ms after the pass for them
    assert clock.slept == pytest.approx([0.010]) and batches[-1] == ["c", "d"]


def _job(sid: str, n: int) -> PrefillJob:
    return PrefillJob(sid, list(range(1, n + 1)))


def test_prompts_go_in_chunks_beside_verify_calls_and_never_wait() -> None:
    clock = FakeClock()
    passes: list[tuple[list[str], list[tuple[str, int]]]] = []

    def run(work: PassWork) -> None:
        passes.append(([c.session_id for c in work.calls], [(j.session_id, n) for j, n in work.chunks]))
        for job, n in work.chunks:
            job.fed += n

    batcher = PassBatcher(run, 4, 0.010, clock, clock.sleep, prefill_chunk=8)
    batcher.submit(_call("a", clock.now))
    batcher.submit(_call("b", clock.now))
    batcher.drain()
    batcher.submit(_call("a", clock.now))  # b is expected back, but a prompt is queued: no waiting
    batcher.submit_prefill(_job("p", 12))  # 11 tokens to feed: 8 now, 3 next
    batcher.submit_prefill(_job("q", 4))
    assert batcher.drain()
    assert clock.slept == [] and passes[-1] == (["a"], [("p", 8)])
    assert not batcher.drain()  # the rest of p, then q whole, within the budget of 8
    assert passes[-1] == ([], [("p", 3), ("q", 3)])
    one = _job("r", 1)  # a one-token prompt feeds nothing but still goes through a drain
    batcher.submit_prefill(one)
    batcher.drain()
    assert passes[-1] == ([], [("r", 0)])


def test_without_mixing_prompts_run_whole_and_take_turns() -> None:
    passes: list[tuple[list[str], list[tuple[str, int]]]] = []

    def run(work: PassWork) -> None:
        passes.append(([c.session_id for c in work.calls], [(j.session_id, n) for j, n in work.chunks]))
        for job, n in work.chunks:
            job.fed += n

    batcher = PassBatcher(run, 4, 0.0, prefill_chunk=8, mix=False)
    batcher.submit_prefill(_job("p", 30))
    batcher.submit_prefill(_job("q", 5))
    batcher.submit(_call("a", 0.0))
    while batcher.drain():
        batcher.submit(_call("a", 0.0)) if len(passes) < 3 else None
    # verify calls and whole prompts take turns: neither waits for all of the other
    assert passes == [(["a"], []), ([], [("p", 29)]), (["a"], []), ([], [("q", 4)]), (["a"], [])]


def test_sixteen_sessions_keep_forming_full_batches(make_verifier: MakeVerifier) -> None:
    """The regression a fixed 2 ms window had: batches collapsed into passes of one session."""
    verifier = make_verifier(max_batch=16)
    sessions = 12
    for i in range(sessions):
        verifier.prefill(f"s{i}", [5, 6, 7, i + 1], GREEDY)

    def run(i: int) -> None:
        for _ in range(6):
            verifier.verify(f"s{i}", DraftTree.chain([9]))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = verifier.stats()
    assert stats.verify_calls == sessions * 6
    assert stats.forward_passes <= 2 * 6  # about one pass per step of all sessions together


def test_a_prefill_waits_for_at_most_two_passes_while_sessions_keep_verifying(make_verifier: MakeVerifier) -> None:
    """Only one drain is ever queued on the model thread, so a new prompt is not stuck behind a
    backlog of them. (With one drain per call, a pass of k calls left k - 1 more drains queued:
    under steady load the backlog grew, and a prefill waited for hundreds of passes.)"""
    verifier = make_verifier(max_batch=3)  # 8 sessions need three passes a step: drains re-arm themselves
    sessions = 8
    for i in range(sessions):
        verifier.prefill(f"s{i}", [5, 6, 7, i + 1], GREEDY)
    stop = threading.Event()

    def run(i: int) -> None:
        while not stop.is_set():
            verifier.verify(f"s{i}", DraftTree.chain([9]))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(sessions)]
    for t in threads:
        t.start()
    try:
        while verifier.stats().forward_passes < 150:  # long enough for a backlog to have built up
            time.sleep(0.01)
        waits = []
        for j in range(3):
            before = verifier.stats().forward_passes
            verifier.prefill(f"new{j}", [5, 6, 7], GREEDY)
            waits.append(verifier.stats().forward_passes - before)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert max(waits) <= 3, waits  # the pass in progress, the one queued (and a count read mid-pass)


def test_batch_config_validation(make_verifier: MakeVerifier) -> None:
    with pytest.raises(InvalidArgument, match="max_batch must be a positive integer"):
        make_verifier(max_batch=0)
    from target_service.verifier import TargetConfig

    with pytest.raises(InvalidArgument, match="batch_window_ms"):
        TargetConfig(batch_window_ms=-1).validate()


def test_kv_memory_budget_evicts_idle_sessions_and_refuses_when_busy(make_verifier: MakeVerifier) -> None:
    probe = make_verifier()
    probe.prefill("p", [1, 2, 3], GREEDY)
    one = probe.sessions.kv_bytes("p")  # one small session's KV memory (a whole capacity block)
    verifier = make_verifier(max_kv_bytes=2 * one + one // 2)
    verifier.prefill("a", [1, 2, 3], GREEDY)
    verifier.prefill("b", [1, 2, 3], GREEDY)
    verifier.verify("a", DraftTree.chain([4]))  # a is now the most recently used
    result = verifier.prefill("c", [1, 2, 3], GREEDY)
    assert result.evicted_sessions == 1 and "b" not in verifier.sessions and "a" in verifier.sessions
    assert verifier.stats().kv_bytes <= 2 * one + one // 2
    busy = (verifier.sessions.checkout("a"), verifier.sessions.checkout("c"))  # both busy: nothing can go
    with busy[0], busy[1], pytest.raises(ResourceExhausted, match="KV memory budget"):
        verifier.sessions.add(Session("d", None, GREEDY, torch.Generator()), reserve_bytes=one)
    with pytest.raises(ResourceExhausted, match=r"needs \d+ bytes of KV memory; the budget is"):
        verifier.prefill("huge", list(range(1, 400)), GREEDY)  # longer than a chunk: refused at its first
    assert "huge" not in verifier.sessions
    assert verifier._model_thread.run(verifier._batcher.drain) is False  # and nothing of it left to feed
