"""Faults survived: real target, draft, orchestrator and redis-server processes on loopback.

Every request a test sends either completes with the correct tokens (the target's own greedy
output, which drafting never changes) or fails with the status the fault implies, and the
stack serves again afterwards. The module prints the tally (docs/RELIABILITY.md quotes it):
``.venv/bin/python -m pytest -q tests/faults -s``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fault_stack import FaultStack, Tally, start_fault_stack
from testkit import RedisServer

from specd_client import (
    CancelledError,
    DeadlineExceededError,
    ResourceExhaustedError,
    SpecdClient,
    SpecdClientError,
    UnavailableError,
)

PROMPT = "Tell me about rivers and the sea, and rivers again."
NEW = 24
DRAFT_TIMEOUT_MS = 300
CAP = 3  # --max-concurrent-requests
LONG = 400  # a generation long enough to interrupt (the tiny models hold 512 positions)


@pytest.fixture(scope="module")
def tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    t = Tally()
    yield t
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"\ntests/faults: {t.summary()}")


@pytest.fixture(scope="module")
def redis_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(
    tiny_target: Path, tiny_draft: Path, redis_srv: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FaultStack]:
    s = start_fault_stack(
        tiny_target,
        tiny_draft,
        tmp_path_factory.mktemp("fault-logs"),
        phrase_store=redis_srv.url,
        target_args=("--max-sessions", "8"),
        orchestrator_args=("--draft-timeout-ms", str(DRAFT_TIMEOUT_MS), "--max-concurrent-requests", str(CAP)),
    )
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(stack: FaultStack) -> Iterator[SpecdClient]:
    with SpecdClient(stack.address, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def reference(client: SpecdClient) -> tuple[int, ...]:
    """The target's own greedy tokens for PROMPT (vanilla: no drafter involved)."""
    return client.generate(PROMPT, method="vanilla", max_new_tokens=NEW, ignore_eos=True).token_ids


def generate_ok(
    client: SpecdClient, tally: Tally, reference: tuple[int, ...], method: str, stats: list[Any] | None = None
) -> int:
    """One Generate that must complete with the reference tokens; returns its draft tokens."""
    tally.sent += 1
    try:
        result = client.generate(PROMPT, method=method, max_new_tokens=NEW, ignore_eos=True)
    except SpecdClientError:
        tally.lost += 1
        raise
    if result.token_ids != reference:
        tally.lost += 1
        raise AssertionError(f"{method}: wrong output {result.token_ids} != {reference}")
    tally.completed += 1
    if stats is not None:
        stats.append(result.stats)
    return result.stats.draft_tokens


def wait_drafting(client: SpecdClient, tally: Tally, reference: tuple[int, ...], timeout: float = 20.0) -> None:
    """Until the drafter is back in use (a request drafts tokens again)."""
    deadline = time.monotonic() + timeout
    while generate_ok(client, tally, reference, "sps") == 0:
        assert time.monotonic() < deadline, "the drafter was not used again"
        time.sleep(0.2)


def test_cancel_and_deadline_free_sessions_at_once(
    stack: FaultStack, client: SpecdClient, tally: Tally, reference: tuple[int, ...]
) -> None:
    tally.sent += 1
    stream = client.stream(PROMPT, method="sps", max_new_tokens=LONG, ignore_eos=True)
    next(stream)
    stream.close()  # the client cancels the call
    tally.failed_clearly += 1
    assert stack.wait_sessions_freed(timeout=2.0) < 2.0
    tally.faults.append("client cancel")

    tally.sent += 1
    with pytest.raises(DeadlineExceededError):
        client.generate(PROMPT, method="sps", max_new_tokens=LONG, ignore_eos=True, timeout=0.3)
    tally.failed_clearly += 1
    assert stack.wait_sessions_freed(timeout=2.0) < 2.0
    tally.faults.append("client deadline")
    generate_ok(client, tally, reference, "sps")


def test_slow_drafter_is_skipped_after_the_draft_timeout(
    stack: FaultStack, client: SpecdClient, tally: Tally, reference: tuple[int, ...]
) -> None:
    stack.draft.freeze()  # a drafter that answers nothing: every Propose runs into the deadline
    try:
        start = time.monotonic()
        seen: list[Any] = []
        draft_tokens = generate_ok(client, tally, reference, "sps", seen)
        elapsed = time.monotonic() - start
    finally:
        stack.draft.thaw()
    assert draft_tokens == 0  # the whole request went on target-only
    assert seen[0].draft_timeouts == 1  # reported in the response: one timed-out Propose
    # one timed-out Propose, then the drafter is out of the ring: not one timeout per step
    assert elapsed < DRAFT_TIMEOUT_MS / 1e3 + 3.0, elapsed
    wait_drafting(client, tally, reference)  # a health probe lets it back in
    tally.faults.append("slow (frozen) drafter")


def test_slow_drafter_under_a_beam_request_is_counted_and_skipped(
    stack: FaultStack, client: SpecdClient, tally: Tally, reference: tuple[int, ...]
) -> None:
    """dsbd with a drafter that answers nothing: the step goes on target-only, the response counts
    the timed-out ProposeBeams, and the request still returns its beams."""
    stack.draft.freeze()
    try:
        tally.sent += 1
        result = client.generate(
            PROMPT, method="dsbd", max_new_tokens=6, temperature=1.0, seed=3, beam_width=2, ignore_eos=True
        )
        tally.completed += 1
    finally:
        stack.draft.thaw()
    assert result.stats.draft_timeouts >= 1
    assert len(result.beams) == 2 and all(len(b.token_ids) == 6 for b in result.beams)
    wait_drafting(client, tally, reference)
    tally.faults.append("slow (frozen) drafter, beam request")


def test_drafter_killed_mid_stream(
    stack: FaultStack, client: SpecdClient, tally: Tally, reference: tuple[int, ...]
) -> None:
    tally.sent += 1
    tokens: list[int] = []
    killed = False
    for event in client.stream(PROMPT, method="sps", max_new_tokens=NEW, ignore_eos=True):
        tokens.extend(event.token_ids)
        if not killed:
            stack.draft.kill()
            killed = True
    assert tuple(tokens) == reference  # finished target-only, output unchanged
    tally.completed += 1
    generate_ok(client, tally, reference, "sps")  # while it is gone
    stack.draft.start()
    wait_drafting(client, tally, reference)
    tally.faults.append("drafter killed")


def test_redis_outage_and_return(
    stack: FaultStack, client: SpecdClient, tally: Tally, reference: tuple[int, ...], redis_srv: RedisServer
) -> None:
    generate_ok(client, tally, reference, "ouroboros")
    assert redis_srv.keys() > 0  # the phrase pool lives in Redis
    redis_srv.stop()
    for _ in range(3):  # drafting goes on without the pool
        generate_ok(client, tally, reference, "ouroboros")
    redis_srv.start()  # empty: no persistence
    assert redis_srv.keys() == 0
    deadline = time.monotonic() + 10
    while redis_srv.keys() == 0:  # the same store reconnects and writes phrases again
        assert time.monotonic() < deadline, "the drafter never wrote to Redis again"
        generate_ok(client, tally, reference, "ouroboros")
        time.sleep(0.2)
    tally.faults.append("Redis stopped and restarted")


def test_full_orchestrator_refuses_quickly(
    stack: FaultStack, client: SpecdClient, tally: Tally, reference: tuple[int, ...]
) -> None:
    stack.target.freeze()  # every admitted request hangs in Prefill: the orchestrator is full
    results: list[tuple[int, ...] | Exception] = []

    def one() -> None:
        try:
            results.append(client.generate(PROMPT, method="sps", max_new_tokens=NEW, ignore_eos=True).token_ids)
        except SpecdClientError as err:
            results.append(err)

    threads = [threading.Thread(target=one) for _ in range(CAP)]
    try:
        for thread in threads:
            thread.start()
        tally.sent += CAP
        time.sleep(1.0)  # all CAP admitted and waiting for the target
        refusals = []
        for _ in range(3):
            tally.sent += 1
            start = time.monotonic()
            with pytest.raises(ResourceExhaustedError, match="max-concurrent-requests"):
                client.generate(PROMPT, method="sps", max_new_tokens=NEW, ignore_eos=True)
            refusals.append(time.monotonic() - start)
            tally.failed_clearly += 1
    finally:
        stack.target.thaw()
    for thread in threads:
        thread.join(30)
    assert max(refusals) < 0.5, refusals  # refused at once, not queued
    assert results == [reference] * CAP, results  # the admitted ones finish correctly
    tally.completed += CAP
    generate_ok(client, tally, reference, "sps")
    tally.faults.append(f"orchestrator full (refusal in {max(refusals) * 1e3:.0f} ms at most)")


def test_target_restart(stack: FaultStack, client: SpecdClient, tally: Tally, reference: tuple[int, ...]) -> None:
    tally.sent += 1
    with pytest.raises(UnavailableError, match="target service") as err:
        for _ in client.stream(PROMPT, method="sps", max_new_tokens=LONG, ignore_eos=True):
            if stack.target.proc is not None and stack.target.proc.poll() is None:
                stack.target.kill()  # in flight: the stream must end UNAVAILABLE, not hang
    assert "retry" in err.value.details
    tally.failed_clearly += 1

    tally.sent += 1  # while the target is down: a clear refusal, quickly
    start = time.monotonic()
    with pytest.raises(UnavailableError):
        client.generate(PROMPT, method="sps", max_new_tokens=NEW, ignore_eos=True)
    assert time.monotonic() - start < 5.0
    tally.failed_clearly += 1

    stack.target.start()
    deadline = time.monotonic() + 10  # the orchestrator's channel reconnects within ~2 s
    while True:
        tally.sent += 1
        try:
            result = client.generate(PROMPT, method="sps", max_new_tokens=NEW, ignore_eos=True)
            break
        except (UnavailableError, CancelledError):
            tally.failed_clearly += 1
            assert time.monotonic() < deadline, "the orchestrator did not reach the restarted target"
            time.sleep(0.2)
    assert result.token_ids == reference
    tally.completed += 1
    assert stack.wait_sessions_freed(timeout=2.0) < 2.0  # nothing leaked on either side
    tally.faults.append("target killed and restarted")
