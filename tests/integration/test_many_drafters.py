"""Many draft replicas behind one orchestrator: real gRPC draft services (tiny draft model) on
loopback, the real target, real decode loops. Session affinity, failover mid-request,
target-only when every drafter is gone, rebalance when a replica joins — and the greedy
output equal to transformers' own greedy decoding in every case."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch
from testkit import greedy_reference, stack_config

from draft_service.server import serve_draft
from draft_service.service import DraftWorker
from orchestrator.discovery import StaticSource
from orchestrator.drafters import DrafterPool, HashRing, PoolConfig
from orchestrator.request import GenerateParams
from orchestrator.server import serve_orchestrator
from orchestrator.service import Orchestrator
from orchestrator.transports import GrpcTargetClient
from protos.serving import ServerHandle
from spec_decode.models import load_model, load_tokenizer
from specd_cli.demo import free_port
from specd_cli.stack import start_process_stack
from specd_client import SpecdClient
from target_service.server import serve_target
from target_service.verifier import TargetVerifier

PROMPT = (4000, 4100, 4200, 4300, 4000, 4100, 4200, 777, 4000, 4100)
NEW = 40
SPECD = [sys.executable, "-m", "specd_cli.main"]
FAST = PoolConfig(probe_timeout_s=0.5, backoff_initial_s=0.05, backoff_max_s=0.2)


class Replica:
    """One draft service; stop() takes its server away, the worker (its sessions) stays readable."""

    def __init__(self, worker: DraftWorker) -> None:
        self.worker = worker
        self.handle: ServerHandle | None = serve_draft(worker)
        self.address = f"127.0.0.1:{self.handle.port}"

    def sessions(self) -> int:
        return self.worker.info().active_sessions

    def stop(self) -> None:
        if self.handle is not None:
            self.handle.stop(0)
            self.handle = None


@pytest.fixture(scope="module")
def cfg(tiny_target, tiny_draft):
    config = stack_config(tiny_target, tiny_draft)  # pld drafts on the replicas here, not in the target
    return dataclasses.replace(config, orchestrator=dataclasses.replace(config.orchestrator, pld_placement="draft"))


@pytest.fixture(scope="module")
def target(cfg):
    return TargetVerifier.from_config(cfg.target)


@pytest.fixture(scope="module")
def draft_model(cfg):
    return load_model(cfg.draft.draft_model, cfg.draft.device, cfg.draft.dtype)


@pytest.fixture(scope="module")
def tokenizer(cfg):
    return load_tokenizer(cfg.target.model)[0]


@pytest.fixture(scope="module")
def expected(tiny_target):
    return greedy_reference(tiny_target, list(PROMPT), NEW, torch.float64)


@pytest.fixture
def replicas(cfg, draft_model):
    reps = [Replica(DraftWorker(cfg.draft, draft_model)) for _ in range(3)]
    yield reps
    for r in reps:
        r.stop()


def _orchestrator(target, tokenizer, cfg, addresses) -> tuple[Orchestrator, DrafterPool]:
    pool = DrafterPool(StaticSource(addresses), FAST)
    assert pool.wait_live(5.0, count=len(addresses))
    return Orchestrator(target, pool, tokenizer, cfg.orchestrator), pool


def _params(method: str = "sps") -> GenerateParams:
    # tree_budget max: every step drafts, so every step shows where the session lives (a cost
    # budget of 0 nodes skips the draft call, and the session may not exist on any replica yet)
    return GenerateParams(
        prompt_token_ids=PROMPT, method=method, max_new_tokens=NEW, ignore_eos=True, tree_budget="max"
    )


def _holder(replicas: list[Replica]) -> Replica | None:
    """The replica that holds the (only) live session, checked to be the only one."""
    holding = [r for r in replicas if r.handle is not None and r.sessions() > 0]
    assert len(holding) <= 1 and all(r.sessions() <= 1 for r in holding)
    return holding[0] if holding else None


@pytest.mark.parametrize("method", ["sps", "pld"])
def test_session_stays_on_its_ring_owner(target, tokenizer, cfg, replicas, expected, method):
    orch, pool = _orchestrator(target, tokenizer, cfg, [r.address for r in replicas])
    try:
        for _ in range(3):  # three sessions: each sticks to its own owner for every step
            tokens: list[int] = []
            owner = None
            for chunk in orch.stream(_params(method)):
                tokens += chunk.token_ids
                if chunk.done:
                    assert chunk.stats is not None and chunk.stats.drafter_switches == 0
                    assert chunk.stats.draft_tokens > 0
                    break
                holder = _holder(replicas)
                assert holder is not None
                owner = owner or holder.address
                assert holder.address == owner == HashRing(pool.live()).owner(chunk.session_id)
            assert tokens == expected
            assert sum(r.sessions() for r in replicas) == 0  # released at the end
    finally:
        pool.close()


def test_drafter_stopped_mid_request_moves_the_session(target, tokenizer, cfg, replicas, expected):
    orch, pool = _orchestrator(target, tokenizer, cfg, [r.address for r in replicas])
    try:
        stream = orch.stream(_params())
        first = next(stream)
        tokens = list(first.token_ids)
        victim = _holder(replicas)
        assert victim is not None
        fallback = list(HashRing(r.address for r in replicas).walk(first.session_id))[1]
        victim.stop()
        second = next(stream)  # the step that found the drafter gone
        tokens += second.token_ids
        holder = _holder(replicas)
        assert holder is not None and holder.address == fallback
        assert victim.address not in pool.live()
        for chunk in stream:
            tokens += chunk.token_ids
            if chunk.done:
                stats = chunk.stats
        assert tokens == expected
        assert stats.drafter_switches == 1 and stats.new_tokens == NEW
        assert sum(r.sessions() for r in replicas if r is not victim) == 0
    finally:
        pool.close()


def test_all_drafters_stopped_finishes_target_only(target, tokenizer, cfg, replicas, expected):
    orch, pool = _orchestrator(target, tokenizer, cfg, [r.address for r in replicas])
    try:
        stream = orch.stream(_params())
        tokens = list(next(stream).token_ids)
        before = len(tokens)
        for r in replicas:
            r.stop()
        steps_after = 0
        for chunk in stream:
            tokens += chunk.token_ids
            steps_after += not chunk.done
            if chunk.done:
                stats = chunk.stats
        assert tokens == expected
        assert stats.drafter_switches == 2  # owner -> second -> third, then none left
        assert steps_after == len(tokens) - before  # target-only: one token per step
        assert pool.live() == frozenset() and pool.pick("any") is None
    finally:
        pool.close()


def test_joining_replica_takes_over_its_sessions(target, tokenizer, cfg, replicas, expected):
    first, newcomer = replicas[0], replicas[1]
    orch, pool = _orchestrator(target, tokenizer, cfg, [first.address])
    try:
        for _ in range(30):  # a session that the newcomer will own (each does with chance 1/2)
            stream = orch.stream(_params())
            chunk = next(stream)
            if HashRing([first.address, newcomer.address]).owner(chunk.session_id) == newcomer.address:
                break
            stream.close()
        else:
            pytest.fail("no session id hashed to the new replica in 30 tries")
        tokens = list(chunk.token_ids)
        assert _holder(replicas) is first
        pool.update([first.address, newcomer.address])
        assert pool.wait_live(5.0, count=2)
        chunk = next(stream)  # the next step moves the session, releasing it on the old replica
        tokens += chunk.token_ids
        assert _holder(replicas) is newcomer and first.sessions() == 0
        for chunk in stream:
            tokens += chunk.token_ids
            if chunk.done:
                stats = chunk.stats
        assert tokens == expected
        assert stats.drafter_switches == 1
    finally:
        pool.close()


def test_grpc_orchestrator_over_three_drafters(target, tokenizer, cfg, replicas, tiny_target):
    t_handle = serve_target(target)
    t_client = GrpcTargetClient(f"127.0.0.1:{t_handle.port}")
    pool = DrafterPool(StaticSource(r.address for r in replicas), FAST)
    assert pool.wait_live(5.0, count=3)
    o_handle = serve_orchestrator(Orchestrator(t_client, pool, tokenizer, cfg.orchestrator))
    try:
        with SpecdClient(f"127.0.0.1:{o_handle.port}", timeout=120) as client:
            for prompt in ([1000, 2000, 3000, 1000, 2000], [42, 43, 44, 45, 42, 43]):
                result = client.generate(prompt, method="sps", max_new_tokens=16)
                assert list(result.token_ids) == greedy_reference(tiny_target, prompt, 16, torch.float64)
                assert result.stats.drafter_switches == 0 and result.stats.draft_tokens > 0
            assert set(client.info().methods) >= {"sps", "pld"}
    finally:
        o_handle.stop(1.0)
        pool.close()
        t_client.close()
        t_handle.stop(1.0)


# ---------------------------------------------------------------- the CLI
def _consecutive_free_ports(n: int) -> int:
    import socket

    for _ in range(50):
        base = free_port()
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {n} consecutive free ports")


def test_cli_refuses_a_bad_draft_address(tiny_target):
    out = subprocess.run(
        [*SPECD, "orchestrator", "--target", str(tiny_target), "--draft-address", "k8s:specd-draft:grpc"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 2, out.stderr
    assert "k8s:NAMESPACE/SERVICE:PORTNAME" in out.stderr


def test_up_with_two_drafters(tiny_target, tmp_path):
    stack = start_process_stack(
        target=str(tiny_target),
        draft_model=None,
        port=free_port(),
        target_port=free_port(),
        draft_port=_consecutive_free_ports(2),
        device="cpu",
        log_dir=tmp_path,
        timeout=120,
        drafters=2,
    )
    try:
        assert set(stack.alive()) == {"target", "draft", "draft-2", "orchestrator"}
        with SpecdClient(stack.address, timeout=120) as client:
            for prompt in ([1000, 2000, 3000, 1000, 2000], [42, 43, 44, 45, 42, 43]):
                result = client.generate(prompt, method="pld", max_new_tokens=12)
                assert list(result.token_ids) == greedy_reference(tiny_target, prompt, 12, torch.float32)
        assert all(stack.alive().values())
    finally:
        stack.stop()
    log = (tmp_path / "orchestrator.log").read_text()
    assert "-> 2 members" in log and log.count("joins the ring") == 2
