"""The consistent-hash ring, the drafter pool over real draft services on loopback, and the
static / DNS discovery sources."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections import Counter

import pytest
from drafter_pool_helpers import replicas_on_hosts, start_replica, wait_until

from orchestrator.discovery import (
    DnsSource,
    KubernetesSource,
    StaticSource,
    parse_draft_address,
    resolve_ips,
    split_host_port,
)
from orchestrator.drafters import DrafterPool, HashRing, PoolConfig, ReplicaClient
from spec_decode.errors import Unavailable
from spec_decode.types import DraftOptions, SamplingParams

NODES = [f"10.0.0.{i}:50053" for i in range(1, 6)]
KEYS = [uuid.UUID(int=i * 7919 + 13).hex for i in range(20_000)]
FAST = PoolConfig(probe_timeout_s=0.5, backoff_initial_s=0.05, backoff_max_s=0.2)


# ---------------------------------------------------------------- the ring
def test_ring_owner_is_independent_of_order_and_process():
    a, b = HashRing(NODES), HashRing(reversed(NODES))
    owners = [a.owner(k) for k in KEYS[:200]]
    assert owners == [b.owner(k) for k in KEYS[:200]]
    # another interpreter with another str-hash seed places the keys the same way
    code = (
        "import sys; from orchestrator.drafters import HashRing; "
        f"r = HashRing({NODES!r}); print(','.join(r.owner(k) for k in {KEYS[:200]!r}))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip().split(",") == owners


def test_ring_spreads_keys_evenly():
    ring = HashRing(NODES)
    counts = Counter(ring.owner(k) for k in KEYS)
    assert set(counts) == set(NODES)
    share = [c / len(KEYS) for c in counts.values()]
    assert min(share) > 0.75 / len(NODES) and max(share) < 1.25 / len(NODES), counts


def test_joining_node_takes_about_one_in_n_keys_and_only_for_itself():
    before, after = HashRing(NODES), HashRing([*NODES, "10.0.0.6:50053"])
    moved = [k for k in KEYS if before.owner(k) != after.owner(k)]
    assert all(after.owner(k) == "10.0.0.6:50053" for k in moved)
    assert 0.75 / 6 < len(moved) / len(KEYS) < 1.25 / 6


def test_leaving_node_moves_only_its_keys_to_their_next_node():
    before, after = HashRing(NODES), HashRing(NODES[1:])
    for k in KEYS[:5000]:
        owner = before.owner(k)
        if owner != NODES[0]:
            assert after.owner(k) == owner
        else:
            assert after.owner(k) == list(before.walk(k))[1]  # the failover order is the ring order


def test_walk_visits_every_node_once_owner_first():
    ring = HashRing(NODES)
    for k in KEYS[:100]:
        walk = list(ring.walk(k))
        assert walk[0] == ring.owner(k) and sorted(walk) == sorted(NODES)
    assert HashRing([]).owner("x") is None and list(HashRing([]).walk("x")) == []
    with pytest.raises(ValueError):
        HashRing(NODES, vnodes=0)


# ---------------------------------------------------------------- the pool
@pytest.fixture
def three():
    replicas = [start_replica() for _ in range(3)]
    yield replicas
    for r in replicas:
        r.stop()


def _propose(client, session_id: str, offset: int, tokens: list[int]):
    return client.propose(session_id, "prompt_lookup", offset, tokens, 8, DraftOptions(), SamplingParams())


def test_pool_admits_only_replicas_that_pass_a_health_probe(three):
    from grpc_health.v1 import health_pb2

    sick = three[2].handle
    sick.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    pool = DrafterPool(StaticSource(r.address for r in three), FAST)
    try:
        assert pool.wait_live(5.0, count=2)
        assert pool.members() == {r.address for r in three}
        wait_until(lambda: pool.live() == {three[0].address, three[1].address}, what="two live")
        sick.health.set("", health_pb2.HealthCheckResponse.SERVING)
        wait_until(lambda: pool.live() == pool.members(), what="the sick replica re-probed")
        assert pool.info().drafters == ("prompt_lookup", "ouroboros")
    finally:
        pool.close()


def test_pool_gives_each_session_one_replica(three):
    pool = DrafterPool(StaticSource(r.address for r in three), FAST)
    try:
        assert pool.wait_live(5.0, count=3)
        ring = HashRing(pool.live())
        picks = {k: pool.pick(k) for k in KEYS[:300]}
        assert all(p is not None and p.address == ring.owner(k) for k, p in picks.items())
        assert all(pool.pick(k).address == p.address for k, p in picks.items())
        assert {p.address for p in picks.values()} == pool.live()
        # affinity seen from the replicas: every session lives on exactly its picked replica
        by_address = {r.address: r.worker for r in three}
        for k in KEYS[:6]:
            _propose(picks[k].api, k, 0, [5, 6, 7, 5, 6])
        for r in three:
            held = r.worker.info().active_sessions
            assert held == sum(1 for k in KEYS[:6] if picks[k].address == r.address)
        assert sum(w.info().active_sessions for w in by_address.values()) == 6
    finally:
        pool.close()


def test_replica_joining_moves_about_one_in_n_sessions(three):
    pool = DrafterPool(StaticSource(r.address for r in three[:2]), FAST)
    try:
        assert pool.wait_live(5.0, count=2)
        before = {k: pool.pick(k).address for k in KEYS[:3000]}
        pool.update([r.address for r in three])
        assert pool.wait_live(5.0, count=3)
        after = {k: pool.pick(k).address for k in KEYS[:3000]}
        moved = [k for k in before if before[k] != after[k]]
        assert all(after[k] == three[2].address for k in moved)
        assert 0.6 / 3 < len(moved) / len(before) < 1.4 / 3
    finally:
        pool.close()


def test_failed_replica_is_out_until_a_probe_finds_it_back(three):
    pool = DrafterPool(StaticSource(r.address for r in three), FAST)
    try:
        assert pool.wait_live(5.0, count=3)
        victim = three[0]
        session = next(k for k in KEYS if pool.pick(k).address == victim.address)
        replica = pool.pick(session)
        victim.stop()
        with pytest.raises(Unavailable):
            _propose(replica.api, session, 0, [1, 2, 3])
        pool.report_failure(replica, Unavailable("test"))
        assert victim.address not in pool.live()
        fallback = list(HashRing(a.address for a in three).walk(session))[1]
        assert pool.pick(session).address == fallback
        victim.restart()
        wait_until(lambda: victim.address in pool.live(), what="re-probe after restart")
        pool.report_failure(replica, Unavailable("late news from the old channel"))
        assert victim.address in pool.live()  # it was reconnected since: ignored
        assert pool.pick(session).api is not replica.api
        assert _propose(pool.pick(session).api, session, 0, [1, 2, 3]).context_len == 3
    finally:
        pool.close()


def test_leaving_replica_channel_is_closed(three):
    pool = DrafterPool(StaticSource(r.address for r in three), FAST)
    try:
        assert pool.wait_live(5.0, count=3)
        session = next(k for k in KEYS if pool.pick(k).address == three[1].address)
        old = pool.pick(session).api
        assert isinstance(old, ReplicaClient)
        pool.update([three[0].address, three[2].address])
        assert pool.members() == {three[0].address, three[2].address}
        with pytest.raises(Unavailable, match="left the pool"):
            _propose(old, session, 0, [1, 2])
        assert pool.pick(session).address in pool.members()
    finally:
        pool.close()


def test_pool_without_live_replicas():
    replica = start_replica()
    replica.stop()
    pool = DrafterPool(StaticSource([replica.address]), FAST)
    try:
        assert not pool.wait_live(0.3)
        assert pool.pick("s") is None
        with pytest.raises(Unavailable, match="no draft replica is serving"):
            pool.info()
    finally:
        pool.close()


# ---------------------------------------------------------------- DNS
def test_dns_source_follows_the_resolver():
    answers: dict[str, list[str]] = {}
    lookups = Counter()

    def resolve(name: str, port: int) -> list[str]:
        lookups[name] += 1
        if name not in answers:
            raise OSError(f"NXDOMAIN {name}")
        return answers[name]

    with replicas_on_hosts(["127.0.0.2", "127.0.0.3", "127.0.0.4"]) as reps:
        port = reps[0].port
        answers["draft.specd.svc"] = ["127.0.0.2"]
        pool = DrafterPool(DnsSource("draft.specd.svc", port, interval_s=0.02, resolve=resolve), FAST)
        try:
            assert pool.members() == {f"127.0.0.2:{port}"}  # resolved once before start() returned
            assert pool.wait_live(5.0)
            answers["draft.specd.svc"] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]  # scale up
            wait_until(lambda: len(pool.live()) == 3, what="three live after scale-up")
            del answers["draft.specd.svc"]  # a failed lookup keeps the last answer
            n = lookups["draft.specd.svc"]
            wait_until(lambda: lookups["draft.specd.svc"] > n + 2, what="more lookups")
            assert pool.members() == {r.address for r in reps}
            answers["draft.specd.svc"] = ["127.0.0.4"]  # scale down
            wait_until(lambda: pool.members() == {f"127.0.0.4:{port}"}, what="scale-down")
            assert pool.live() == {f"127.0.0.4:{port}"}
        finally:
            pool.close()


def test_dns_source_with_the_system_resolver():
    assert "127.0.0.1" in resolve_ips("localhost", 50053)
    seen: list[frozenset[str]] = []
    source = DnsSource("localhost", 50053, interval_s=60)
    source.start(seen.append)
    source.close()
    assert "127.0.0.1:50053" in seen[0]


# ---------------------------------------------------------------- --draft-address
def test_parse_draft_address_forms():
    assert parse_draft_address("none") is None and parse_draft_address("") is None
    one = parse_draft_address("127.0.0.1:50053")
    assert isinstance(one, StaticSource) and one.addresses == {"127.0.0.1:50053"}
    many = parse_draft_address("a:1, b:2,[::1]:3")
    assert isinstance(many, StaticSource) and many.addresses == {"a:1", "b:2", "[::1]:3"}
    dns = parse_draft_address("dns:draft.specd.svc.cluster.local:50053")
    assert isinstance(dns, DnsSource) and (dns.name, dns.port) == ("draft.specd.svc.cluster.local", 50053)
    k8s = parse_draft_address("k8s:specd/specd-draft:grpc")
    assert isinstance(k8s, KubernetesSource)
    assert (k8s.namespace, k8s.service, k8s.port_name) == ("specd", "specd-draft", "grpc")
    assert k8s.selector == "kubernetes.io/service-name=specd-draft"
    assert split_host_port("[fe80::1]:7") == ("fe80::1", 7)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("localhost", "not HOST:PORT"),
        ("a:1,b", "not HOST:PORT"),
        ("a:99999", "not HOST:PORT"),
        ("dns:name", "dns:NAME:PORT"),
        ("dns:name:http", "dns:NAME:PORT"),
        ("k8s:specd-draft:grpc", "k8s:NAMESPACE/SERVICE:PORTNAME"),
        ("k8s:specd/draft", "k8s:NAMESPACE/SERVICE:PORTNAME"),
    ],
)
def test_parse_draft_address_refuses(spec, needle):
    with pytest.raises(ValueError, match=needle.replace("[", r"\[")):
        parse_draft_address(spec)
