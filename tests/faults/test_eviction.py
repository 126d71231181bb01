"""A target with fewer sessions than requests. Its idle sessions (least recently used) are
evicted when others need room, also those of requests still in flight (another orchestrator,
a direct caller): the orchestrator rebuilds an evicted session from the tokens so far, output
unchanged. One orchestrator alone serves at most the target's --max-sessions requests at once
and refuses more with RESOURCE_EXHAUSTED at once. Real gRPC servers on loopback, tiny models."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from testkit import stack_config

from spec_decode.errors import ResourceExhausted
from spec_decode.types import SamplingParams
from specd_cli.stack import ThreadStack, start_thread_stack
from specd_client import ResourceExhaustedError, SpecdClient, SpecdClientError
from target_service.verifier import TargetVerifier

PROMPTS = ("Tell me about rivers.", "Name some fruits, please.", "Count from one to ten.", "Why is the sky blue?")
NEW = 24
LONG = 250  # long enough to be interrupted


@pytest.fixture(scope="module")
def crowded(tiny_target: Path, tiny_draft: Path) -> Iterator[tuple[ThreadStack, TargetVerifier]]:
    cfg = stack_config(tiny_target, tiny_draft)
    cfg = dataclasses.replace(cfg, target=dataclasses.replace(cfg.target, max_sessions=2))
    target = TargetVerifier.from_config(cfg.target)
    stack = start_thread_stack(cfg, target=target)
    yield stack, target
    stack.stop()


def test_session_evicted_mid_request_is_rebuilt(
    crowded: tuple[ThreadStack, TargetVerifier], caplog: pytest.LogCaptureFixture
) -> None:
    stack, target = crowded
    caplog.set_level(logging.WARNING, logger="orchestrator.loop")
    with SpecdClient(stack.address, timeout=60) as client:
        reference = client.generate(PROMPTS[0], method="vanilla", max_new_tokens=LONG, ignore_eos=True).token_ids
        before = target.sessions.evictions
        tokens: list[int] = []
        intruders = 0
        rebuilds = 0
        for event in client.stream(PROMPTS[0], method="sps", max_new_tokens=LONG, ignore_eos=True):
            tokens.extend(event.token_ids)
            if event.stats is not None:
                rebuilds = event.stats.target_rebuilds
            if intruders < 3 and event.token_ids:  # two other sessions push the request's idle one out
                for name in ("intruder-a", "intruder-b"):
                    with contextlib.suppress(ResourceExhausted):  # the request's session was busy
                        target.prefill(f"{name}-{intruders}", [1, 2, 3], SamplingParams())
                intruders += 1
    assert target.sessions.evictions > before
    assert "prefilling the context again" in caplog.text  # the request's own session was evicted
    assert rebuilds >= 1  # and the response says so
    assert tuple(tokens) == reference
    for i in range(3):
        for name in ("intruder-a", "intruder-b"):
            target.release(f"{name}-{i}")
    assert len(target.sessions) == 0


def test_more_requests_than_target_sessions_refused_quickly(crowded: tuple[ThreadStack, TargetVerifier]) -> None:
    stack, target = crowded
    with SpecdClient(stack.address, timeout=60) as client:
        reference = {
            p: client.generate(p, method="vanilla", max_new_tokens=NEW, ignore_eos=True).token_ids for p in PROMPTS
        }
        results: dict[tuple[str, str], tuple[int, ...] | SpecdClientError] = {}
        refusal_s: list[float] = []

        def run(prompt: str, method: str) -> None:
            start = time.monotonic()
            try:
                out = client.generate(prompt, method=method, max_new_tokens=NEW, ignore_eos=True).token_ids
                results[(prompt, method)] = out
            except SpecdClientError as err:
                results[(prompt, method)] = err
                refusal_s.append(time.monotonic() - start)

        threads = [threading.Thread(target=run, args=(p, m)) for p in PROMPTS for m in ("vanilla", "sps")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    done = {key: out for key, out in results.items() if not isinstance(out, SpecdClientError)}
    refused = [err for err in results.values() if isinstance(err, SpecdClientError)]
    assert len(results) == 8 and len(done) >= 2
    assert all(out == reference[prompt] for (prompt, _), out in done.items())  # nothing wrong
    assert all(isinstance(err, ResourceExhaustedError) and "max-sessions" in err.details for err in refused)
    assert max(refusal_s, default=0.0) < 1.0  # refused at once, not queued
    assert len(target.sessions) == 0
