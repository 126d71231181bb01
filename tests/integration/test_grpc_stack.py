"""The three services as real gRPC servers on loopback; clients are the SDK and raw stubs."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from testkit import greedy_reference, stack_config

from protos import common_pb2, draft_pb2, draft_pb2_grpc, target_pb2, target_pb2_grpc
from specd_cli.stack import build_inprocess, start_thread_stack
from specd_client import (
    AsyncSpecdClient,
    FailedPreconditionError,
    InvalidArgumentError,
    Message,
    SpecdClient,
)


@pytest.fixture(scope="module")
def stack(tiny_target, tiny_draft):
    s = start_thread_stack(stack_config(tiny_target, tiny_draft, max_context=256))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(stack):
    with SpecdClient(stack.address, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def target_stub(stack):
    channel = grpc.insecure_channel(f"127.0.0.1:{stack.target.port}")
    yield target_pb2_grpc.TargetServiceStub(channel)
    channel.close()


def _active_target_sessions(target_stub) -> int:
    return target_stub.Info(target_pb2.TargetInfoRequest()).active_sessions


@pytest.mark.parametrize("method", ["vanilla", "pld", "sps"])
def test_grpc_greedy_equals_transformers(client, tiny_target, method):
    for prompt in ([1000, 2000, 3000, 1000, 2000], [42, 43, 44, 45, 42, 43], [777] * 6):
        expected = greedy_reference(tiny_target, prompt, 20, torch.float64)
        result = client.generate(prompt, method=method, max_new_tokens=20)
        assert list(result.token_ids) == expected
        assert result.method == method
        assert result.stats.target_steps > 0 and result.stats.tau >= 1.0
        assert result.stats.wall_s > 0 and result.stats.tokens_per_s > 0


def test_grpc_matches_inprocess(client, tiny_target, tiny_draft):
    orch = build_inprocess(stack_config(tiny_target, tiny_draft))
    from orchestrator.request import GenerateParams

    local = orch.generate(GenerateParams(prompt="Name three rivers.", method="sps", max_new_tokens=24))
    remote = client.generate("Name three rivers.", method="sps", max_new_tokens=24)
    assert remote.token_ids == local.token_ids and remote.text == local.text


def test_stream_and_stats(client, target_stub):
    events = list(client.stream("Hello there", method="pld", max_new_tokens=16))
    assert events[-1].done and events[-1].stats is not None
    stats = events[-1].stats
    assert sum(len(e.token_ids) for e in events) == stats.new_tokens
    assert stats.phases.verify_s > 0 and stats.phases.network_s >= 0
    assert sum(stats.accepted_length_histogram) == stats.target_steps
    assert _active_target_sessions(target_stub) == 0


def test_chat_messages(client):
    result = client.generate(
        [Message("system", "Be brief."), Message("user", "Hi")], method="vanilla", max_new_tokens=5
    )
    assert result.stats.new_tokens == 5 and result.stats.prompt_tokens > 5


def test_cancel_frees_session(client, target_stub):
    stream = client.stream("Count to one hundred", method="vanilla", max_new_tokens=200, ignore_eos=True)
    next(stream)
    stream.close()  # cancels the RPC
    for _ in range(100):
        if _active_target_sessions(target_stub) == 0:
            break
        import time

        time.sleep(0.05)
    assert _active_target_sessions(target_stub) == 0


def test_async_client(stack):
    async def go():
        async with AsyncSpecdClient(stack.address, timeout=60) as c:
            whole = await c.generate("Hi", method="pld", max_new_tokens=8)
            parts = [e async for e in c.stream("Hi", method="pld", max_new_tokens=8)]
            return whole, parts

    whole, parts = asyncio.run(go())
    assert tuple(t for p in parts for t in p.token_ids) == whole.token_ids


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (dict(prompt=""), "prompt is empty"),
        (dict(max_new_tokens=0), "max_new_tokens must be > 0"),
        (dict(max_new_tokens=10_000), "cap"),
        (dict(temperature=-1.0), "temperature"),
        (dict(temperature=1.0, top_p=1.5), "top_p"),
        (dict(temperature=1.0, top_p=-0.1), "top_p"),
        (dict(method="beam-me-up"), "unknown method"),
        (dict(prompt="word " * 300), "context"),
        (dict(prompt=[1, 2, 60000]), "outside the vocabulary"),
        (dict(max_new_tokens=250), "exceeds"),
        (dict(method="pld", tree_budget="huge"), "tree_budget must be one of cost, max"),
    ],
)
def test_bad_requests(client, kwargs, needle):
    args = {"prompt": "hello", "max_new_tokens": 4, **kwargs}
    prompt = args.pop("prompt")
    with pytest.raises(InvalidArgumentError) as err:
        client.generate(prompt, **args)
    assert needle in err.value.details
    assert client.generate("still serving?", max_new_tokens=2).stats.new_tokens == 2


def test_sps_without_draft_model(tiny_target):
    s = start_thread_stack(stack_config(tiny_target, None))
    try:
        with SpecdClient(s.address, timeout=30) as c:
            with pytest.raises(FailedPreconditionError) as err:
                c.generate("hi", method="sps", max_new_tokens=4)
            assert "draft" in err.value.details
            assert c.generate("hi", method="pld", max_new_tokens=4).stats.new_tokens == 4
            assert set(c.info().methods) == {"vanilla", "pld", "ouroboros", "beam-sample"}  # model-free ones
    finally:
        s.stop()


def _tree(tokens, parents):
    return common_pb2.DraftTree(tokens=tokens, parents=parents)


@pytest.mark.parametrize(
    ("tree", "code", "needle"),
    [
        (_tree([5, 6], [-1, 3]), grpc.StatusCode.INVALID_ARGUMENT, "parent index 3"),
        (_tree([5, 6], [-1, 1]), grpc.StatusCode.INVALID_ARGUMENT, "cycle"),
        (_tree([5, 6], [-1]), grpc.StatusCode.INVALID_ARGUMENT, "parent"),
        (_tree([5, 10**6], [-1, 0]), grpc.StatusCode.INVALID_ARGUMENT, "vocabulary"),
        (_tree([5] * 65, [-1] * 65), grpc.StatusCode.INVALID_ARGUMENT, "65 nodes"),
    ],
)
def test_target_rejects_hostile_trees(target_stub, tree, code, needle):
    target_stub.Prefill(target_pb2.PrefillRequest(session_id="hostile", prompt_tokens=[1, 2, 3]))
    try:
        with pytest.raises(grpc.RpcError) as err:
            target_stub.Verify(target_pb2.VerifyRequest(session_id="hostile", tree=tree))
        assert err.value.code() == code and needle in err.value.details()
        # the session survives a rejected tree
        ok = target_stub.Verify(target_pb2.VerifyRequest(session_id="hostile", tree=_tree([], [])))
        assert ok.context_len == 4
    finally:
        target_stub.Release(target_pb2.ReleaseRequest(session_id="hostile"))


def test_draft_propose_caps_depth_and_refuses_a_negative_one(stack):
    """Propose's max_depth over gRPC: the tree is no deeper than asked, and a negative depth is an
    INVALID_ARGUMENT that names the field (the session is not touched)."""
    with grpc.insecure_channel(f"127.0.0.1:{stack.draft.port}") as channel:
        stub = draft_pb2_grpc.DraftServiceStub(channel)
        tokens = [7, 8, 9, 1, 7, 8, 9, 2, 7, 8, 9, 3, 7, 8]
        options = draft_pb2.DraftOptions(num_tokens=4, num_branches=3)
        ask = draft_pb2.ProposeRequest(
            session_id="deep", drafter="prompt_lookup", tokens=tokens, max_nodes=16, options=options
        )
        try:
            full = stub.Propose(ask).tree
            ask.max_depth = 2  # offset 0 again: the same context
            shallow = stub.Propose(ask).tree
            assert len(full.tokens) == 10 and max(full.parents) > 0  # 9 -> {3, 2, 1} -> 7 -> 8
            assert list(shallow.tokens) == [9, 3, 2, 1] and list(shallow.parents) == [-1, 0, 0, 0]
            ask.max_depth = -1
            with pytest.raises(grpc.RpcError) as err:
                stub.Propose(ask)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_depth" in err.value.details()
        finally:
            stub.Release(draft_pb2.DraftReleaseRequest(session_id="deep"))


def test_target_unknown_session_and_bad_prefill(target_stub):
    with pytest.raises(grpc.RpcError) as err:
        target_stub.Verify(target_pb2.VerifyRequest(session_id="nope", tree=_tree([], [])))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        target_stub.Prefill(target_pb2.PrefillRequest(session_id="empty", prompt_tokens=[]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as err:
        target_stub.Prefill(target_pb2.PrefillRequest(session_id="", prompt_tokens=[1]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert target_stub.Release(target_pb2.ReleaseRequest(session_id="never-was")).released is False


def test_health_and_reflection(stack):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    for port in (stack.target.port, stack.draft.port, stack.orchestrator.port):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert status.status == health_pb2.HealthCheckResponse.SERVING
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            names = {s.name for r in responses for s in r.list_services_response.service}
            assert any(n.startswith("specd.v1.") for n in names)
