"""The Kubernetes EndpointSlice source: the real ``kubernetes`` client (list + watch) against
a loopback HTTP server that answers the two API calls with documented EndpointSlice JSON
and real watch events; the pool behind it talks to real draft services on 127.0.0.x."""

from __future__ import annotations

import kubernetes
import pytest
from drafter_pool_helpers import FakeKubeApi, endpoint_slice, replicas_on_hosts, wait_until

from orchestrator.discovery import KubernetesSource
from orchestrator.drafters import DrafterPool, PoolConfig

FAST = PoolConfig(probe_timeout_s=0.5, backoff_initial_s=0.05, backoff_max_s=0.2)
SERVICE = "specd-draft"


@pytest.fixture
def api():
    server = FakeKubeApi("specd")
    yield server
    server.close()


def _source(api: FakeKubeApi, **kw) -> KubernetesSource:
    cfg = kubernetes.client.Configuration()
    cfg.host = api.host
    client = kubernetes.client.ApiClient(cfg)
    return KubernetesSource("specd", SERVICE, "grpc", api_client=client, **kw)


def test_pool_follows_endpoint_slices(api):
    with replicas_on_hosts(["127.0.0.2", "127.0.0.3", "127.0.0.4"]) as reps:
        port = reps[0].port
        a, b, c = (f"{r.host}:{port}" for r in reps)
        # two pods, one still starting (ready: false); a slice of another service; unset ready = ready
        api.apply(endpoint_slice("specd-draft-abc", SERVICE, port, [("127.0.0.2", True), ("127.0.0.3", False)]))
        api.apply(endpoint_slice("other-xyz", "other", port, [("127.0.0.9", True)]))
        source = _source(api, backoff_initial_s=0.05)
        pool = DrafterPool(source, FAST)
        try:
            wait_until(lambda: pool.members() == {a}, what="the listed ready endpoint")
            assert pool.wait_live(5.0) and pool.live() == {a}
            lists = len(api.lists())
            assert api.lists()[0]["labelSelector"] == f"kubernetes.io/service-name={SERVICE}"

            # the second pod becomes ready (MODIFIED)
            api.apply(endpoint_slice("specd-draft-abc", SERVICE, port, [("127.0.0.2", True), ("127.0.0.3", None)]))
            wait_until(lambda: pool.live() == {a, b}, what="the pod that became ready")

            # scale-up: the controller adds a second slice (ADDED)
            api.apply(endpoint_slice("specd-draft-def", SERVICE, port, [("127.0.0.4", True)]))
            wait_until(lambda: pool.live() == {a, b, c}, what="scale-up")

            # a pod turns not-ready, then the scale-down deletes its slice (DELETED)
            api.apply(endpoint_slice("specd-draft-def", SERVICE, port, [("127.0.0.4", False)]))
            wait_until(lambda: pool.members() == {a, b}, what="the not-ready endpoint out")
            api.delete("specd-draft-def")
            api.apply(endpoint_slice("specd-draft-abc", SERVICE, port, [("127.0.0.2", True)]))
            wait_until(lambda: pool.members() == {a}, what="scale-down")
            assert len(api.lists()) == lists  # all of it came through the watch

            # a broken watch resumes from the last version seen, without listing again
            watches = len(api.watches())
            last_version = api.watches()[-1]
            api.break_watches()
            wait_until(lambda: len(api.watches()) > watches, what="a new watch")
            resumed = api.watches()[-1]
            assert int(resumed["resourceVersion"]) > int(last_version["resourceVersion"])
            assert len(api.lists()) == lists

            # history compacted while the watch was away: 410 Gone, then a fresh list
            api.compact()
            api.apply(endpoint_slice("specd-draft-abc", SERVICE, port, [("127.0.0.3", True)]), record=False)
            api.break_watches()
            wait_until(lambda: pool.members() == {b}, what="state after the re-list")
            assert len(api.lists()) == lists + 1
            assert pool.wait_live(5.0) and pool.live() == {b}
        finally:
            pool.close()


def test_source_reconnects_after_api_errors(api):
    api.fail_next = 3  # the first three calls get 500
    api.apply(endpoint_slice("specd-draft-abc", SERVICE, 50053, [("10.1.2.3", True), ("fd00::7", True)]))
    seen: list[frozenset[str]] = []
    source = _source(api, backoff_initial_s=0.02, backoff_max_s=0.05)
    source.start(seen.append)
    try:
        wait_until(lambda: bool(seen), what="the first list after the errors")
        assert seen[-1] == {"10.1.2.3:50053", "[fd00::7]:50053"}
        assert len(api.lists()) == 4  # three failed, one answered
    finally:
        source.close()


def test_slice_without_the_named_port_gives_no_endpoints(api):
    api.apply(endpoint_slice("specd-draft-abc", SERVICE, 50053, [("10.1.2.3", True)], port_name="http"))
    seen: list[frozenset[str]] = []
    source = _source(api)
    source.start(seen.append)
    try:
        wait_until(lambda: bool(seen), what="the first list")
        assert seen[-1] == frozenset()
        api.apply(endpoint_slice("specd-draft-abc", SERVICE, 50053, [("10.1.2.3", True)], port_name="grpc"))
        wait_until(lambda: seen[-1] == {"10.1.2.3:50053"}, what="the port named grpc")
    finally:
        source.close()
