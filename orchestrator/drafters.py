"""Many draft replicas behind one orchestrator: a consistent-hash ring with session affinity.

A session's drafter state (token history, draft-model KV cache) lives on one replica, so
every step of a session goes to the same replica: the ring owner of its session id.
:class:`HashRing` places ``vnodes`` points per replica on a 64-bit ring (blake2b, stable
across processes); adding or removing a replica moves only the sessions it gains or loses,
about 1/N of them. :class:`DrafterPool` keeps one gRPC channel per replica, follows a
discovery source (:mod:`orchestrator.discovery`), admits a replica only after a gRPC health
check, and takes a replica that failed a call out of the ring until a re-probe (with
exponential backoff) finds it serving again. The decode loop (:mod:`orchestrator.loop`) asks
the pool for its session's replica every step; when that changes (failover or rebalance) it
moves the session, and the new replica rebuilds the state from the token history.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from orchestrator.discovery import DrafterSource
from orchestrator.transports import GrpcDraftClient, RpcTimeouts
from spec_decode.api import DraftAPI
from spec_decode.errors import DeadlineExceeded, Unavailable
from spec_decode.types import DraftInfo, DraftOptions, ProposeResult, SamplingParams

log = logging.getLogger(__name__)

VNODES = 160


def ring_hash(key: str) -> int:
    """A stable 64-bit position on the ring (the same in every process, unlike ``hash()``)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


class HashRing:
    """Consistent hashing of keys (session ids) onto nodes (replica addresses).

    Each node owns ``vnodes`` points ``ring_hash(f"{node}#{i}")``; a key belongs to the node
    of the first point clockwise from ``ring_hash(key)``. The ring is immutable: a membership
    change builds a new one.

    Example:
        >>> ring = HashRing(["10.0.0.1:50053", "10.0.0.2:50053"])
        >>> ring.owner("b1946ac9") in ring.nodes
        True
        >>> list(ring.walk("b1946ac9"))[0] == ring.owner("b1946ac9")
        True
    """

    def __init__(self, nodes: Iterable[str], vnodes: int = VNODES) -> None:
        if vnodes <= 0:
            raise ValueError(f"vnodes must be > 0, got {vnodes}")
        self.nodes = frozenset(nodes)
        self.vnodes = vnodes
        points = sorted((ring_hash(f"{node}#{i}"), node) for node in self.nodes for i in range(vnodes))
        self._points = [p for p, _ in points]  # [len(nodes) * vnodes], ascending
        self._owners = [n for _, n in points]  # node of each point

    def owner(self, key: str) -> str | None:
        """The node ``key`` belongs to; None on an empty ring."""
        if not self._points:
            return None
        i = bisect.bisect_right(self._points, ring_hash(key)) % len(self._points)
        return self._owners[i]

    def walk(self, key: str) -> Iterator[str]:
        """Every node once, in ring order from ``key``: the owner, then where it fails over to.

        The second node is the one that owns ``key`` once the first leaves the ring.
        """
        if not self._points:
            return
        start = bisect.bisect_right(self._points, ring_hash(key))
        seen: set[str] = set()
        for i in range(len(self._points)):
            node = self._owners[(start + i) % len(self._points)]
            if node not in seen:
                seen.add(node)
                yield node
                if len(seen) == len(self.nodes):
                    return


@dataclass(frozen=True)
class Replica:
    """A draft replica as the decode loop sees it: where it is and how to call it."""

    address: str
    api: DraftAPI


@runtime_checkable
class DrafterRouter(Protocol):
    """Where a session's drafting goes. The decode loop asks every step."""

    def pick(self, session_id: str, exclude: frozenset[str] = frozenset()) -> Replica | None:
        """The replica that should hold ``session_id`` now, skipping ``exclude``; None if none is left."""
        ...

    def report_failure(self, replica: Replica, err: Exception) -> None:
        """A call to ``replica`` failed with UNAVAILABLE / DEADLINE_EXCEEDED / CANCELLED."""
        ...

    def live(self) -> frozenset[str]:
        """The addresses that get sessions now."""
        ...

    def info(self) -> DraftInfo: ...


class LocalDrafter:
    """One drafter object (in-process :class:`DraftWorker`) as a router: sessions never move."""

    def __init__(self, api: DraftAPI, address: str = "local") -> None:
        self._replica = Replica(address, api)

    def pick(self, session_id: str, exclude: frozenset[str] = frozenset()) -> Replica | None:
        return None if self._replica.address in exclude else self._replica

    def report_failure(self, replica: Replica, err: Exception) -> None:
        """Nothing to do: the loop stops asking this drafter for the rest of the request."""

    def live(self) -> frozenset[str]:
        return frozenset((self._replica.address,))

    def info(self) -> DraftInfo:
        return self._replica.api.info()


def as_router(draft: DraftAPI | DrafterRouter | None) -> DrafterRouter | None:
    """A router for what the orchestrator was given: a pool as it is, a single drafter wrapped."""
    if draft is None or isinstance(draft, DrafterRouter):
        return draft
    return LocalDrafter(draft)


class ReplicaClient(GrpcDraftClient):
    """The gRPC client of one replica: DraftAPI, a health probe on the same channel, and
    UNAVAILABLE (not ValueError) for a call that meets a closed channel (the replica left)."""

    _closed = False

    def healthy(self, timeout: float) -> bool:
        """True when the replica's gRPC health service reports SERVING within ``timeout`` s."""
        try:
            resp = health_pb2_grpc.HealthStub(self._channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except (grpc.RpcError, ValueError):
            return False
        return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)

    def info(self) -> DraftInfo:
        with self._unless_closed():
            return super().info()

    def propose(
        self,
        session_id: str,
        drafter: str,
        offset: int,
        tokens: Sequence[int],
        max_nodes: int,
        options: DraftOptions,
        sampling: SamplingParams,
        hidden_state: bytes = b"",
        max_depth: int = 0,
    ) -> ProposeResult:
        with self._unless_closed():
            return super().propose(
                session_id, drafter, offset, tokens, max_nodes, options, sampling, hidden_state, max_depth
            )

    def release(self, session_id: str) -> bool:
        with self._unless_closed():
            return super().release(session_id)

    def close(self) -> None:
        self._closed = True
        super().close()

    @contextmanager
    def _unless_closed(self) -> Iterator[None]:
        try:
            yield
        except ValueError:  # grpc: "Cannot invoke RPC on closed channel!"
            if self._closed:
                raise Unavailable(f"draft replica {self.address} left the pool") from None
            raise


@dataclass(frozen=True)
class PoolConfig:
    """How the pool treats replicas; every duration in seconds."""

    vnodes: int = VNODES
    probe_timeout_s: float = 1.0  # one health check
    backoff_initial_s: float = 0.5  # first re-probe after a failure
    backoff_max_s: float = 30.0  # re-probe interval cap (doubles per failed probe)
    timeouts: RpcTimeouts = field(default_factory=RpcTimeouts)

    def validate(self) -> PoolConfig:
        if self.vnodes <= 0 or self.probe_timeout_s <= 0 or not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise ValueError(f"invalid drafter pool config: {self}")
        return self


@dataclass
class _Member:
    client: ReplicaClient
    live: bool = False  # in the ring: passed a health probe, no failure since
    failures: int = 0  # failed calls and probes since it was last live
    retry_at: float = 0.0  # monotonic time of its next probe (when not live)


class DrafterPool:
    """The draft replicas one orchestrator spreads sessions over (see the module docstring).

    Membership comes from :meth:`update` (called by a discovery source, or directly). A
    background thread probes members that are not live: new ones at once, failed ones after
    ``backoff_initial_s * 2**(failures - 1)`` seconds (at most ``backoff_max_s``), each time on
    a fresh channel so gRPC's own reconnect backoff cannot delay a replica that is back.
    """

    def __init__(
        self,
        source: DrafterSource | None = None,
        config: PoolConfig | None = None,
        connect: Callable[[str], ReplicaClient] | None = None,
    ) -> None:
        self.config = (config or PoolConfig()).validate()
        self._connect = connect or (lambda address: ReplicaClient(address, self.config.timeouts))
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._members: dict[str, _Member] = {}
        self._ring = HashRing((), self.config.vnodes)
        self._wake = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._probe_forever, name="drafter-pool-probe", daemon=True)
        self._thread.start()
        self._source = source
        if source is not None:
            source.start(self.update)

    # ---------------------------------------------------------------- membership
    def update(self, addresses: Iterable[str]) -> None:
        """Set the members to ``addresses``: new ones are probed, gone ones closed and dropped."""
        wanted = set(addresses)
        with self._lock:
            if self._closed:
                return
            gone = [self._members.pop(a) for a in set(self._members) - wanted]
            added = sorted(wanted - set(self._members))
            for address in added:
                self._members[address] = _Member(self._connect(address))
            self._rebuild()
        for member in gone:
            member.client.close()
        if added or gone:
            log.info("drafter pool: +%s -%s -> %d members", added, sorted(m.client.address for m in gone), len(wanted))
        self._wake.set()

    def members(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._members)

    def live(self) -> frozenset[str]:
        """The members in the ring now (they get sessions)."""
        return self._ring.nodes

    def wait_live(self, timeout: float, count: int = 1) -> bool:
        """Block until at least ``count`` replicas are live; False after ``timeout`` s."""
        with self._changed:
            return self._changed.wait_for(lambda: len(self._ring.nodes) >= count, timeout)

    # ---------------------------------------------------------------- routing
    def pick(self, session_id: str, exclude: frozenset[str] = frozenset()) -> Replica | None:
        ring = self._ring  # immutable; replaced whole on a change
        for address in ring.walk(session_id):
            if address in exclude:
                continue
            member = self._members.get(address)
            if member is not None:
                return Replica(address, member.client)
        return None

    def report_failure(self, replica: Replica, err: Exception) -> None:
        """Take the replica out of the ring until a probe passes (not if it was reconnected since)."""
        address = replica.address
        with self._lock:
            member = self._members.get(address)
            if member is None or not member.live or member.client is not replica.api:
                return
            member.live = False
            member.failures += 1
            member.retry_at = time.monotonic() + self._backoff(member.failures)
            self._rebuild()
        log.warning("drafter pool: %s failed (%s); out of the ring until a health probe passes", address, err)
        self._wake.set()

    def info(self) -> DraftInfo:
        """The info of a live replica (replicas of one deployment run the same drafters)."""
        for address in sorted(self._ring.nodes):
            member = self._members.get(address)
            if member is None:
                continue
            try:
                return member.client.info()
            except (Unavailable, DeadlineExceeded) as err:
                self.report_failure(Replica(address, member.client), err)
        raise Unavailable(f"no draft replica is serving (members: {', '.join(sorted(self.members())) or 'none'})")

    # ---------------------------------------------------------------- probing
    def probe_due(self) -> None:
        """Health-check every member that is not live and whose backoff has passed."""
        now = time.monotonic()
        with self._lock:
            due = [(a, m) for a, m in self._members.items() if not m.live and m.retry_at <= now]
        for address, member in due:
            if member.failures:  # a fresh channel: the old one may sit in gRPC's reconnect backoff
                fresh = self._connect(address)
                with self._lock:
                    if self._members.get(address) is not member:
                        fresh.close()
                        continue
                    old, member.client = member.client, fresh
                old.close()
            ok = member.client.healthy(self.config.probe_timeout_s)
            with self._lock:
                if self._members.get(address) is not member:
                    continue
                if ok:
                    member.live, member.failures = True, 0
                    self._rebuild()
                else:
                    member.failures += 1
                    member.retry_at = time.monotonic() + self._backoff(member.failures)
            if ok:
                log.info("drafter pool: %s is serving; it joins the ring", address)

    def _probe_forever(self) -> None:
        while not self._closed:
            self.probe_due()
            with self._lock:
                waits = [m.retry_at for m in self._members.values() if not m.live]
            delay = min(waits, default=time.monotonic() + 1.0) - time.monotonic()
            self._wake.wait(min(1.0, max(0.01, delay)))
            self._wake.clear()

    def _backoff(self, failures: int) -> float:
        c = self.config
        return float(min(c.backoff_max_s, c.backoff_initial_s * 2 ** min(failures - 1, 30)))

    def _rebuild(self) -> None:
        """Replace the ring if the live set changed (callers hold the lock)."""
        live = frozenset(a for a, m in self._members.items() if m.live)
        if live != self._ring.nodes:
            self._ring = HashRing(live, self.config.vnodes)
            self._changed.notify_all()

    def close(self) -> None:
        """Stop the source and the prober; close every channel."""
        if self._source is not None:
            self._source.close()
        with self._lock:
            self._closed = True
            members, self._members = list(self._members.values()), {}
            self._ring = HashRing((), self.config.vnodes)
        self._wake.set()
        self._thread.join(timeout=5.0)
        for member in members:
            member.client.close()
