"""Fuzz every public RPC of target, draft and orchestrator (protos/*.proto) over real gRPC.

Messages are drawn field by field from the protobuf descriptors (edge integers, NaN/inf
floats, huge strings, long repeated fields, unknown enum values) or parsed from random
bytes. Every reply must be OK or a clear client-error status — never UNKNOWN or INTERNAL —
within a deadline, and the server must answer a valid request afterwards. Hostile draft
trees sent straight to the target must be refused with INVALID_ARGUMENT. The module prints
how many inputs it sent: ``.venv/bin/python -m pytest -q tests/fuzz -s``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message as pb_message
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from testkit import stack_config

from orchestrator.service import OrchestratorConfig
from protos import (
    common_pb2,
    draft_pb2,
    draft_pb2_grpc,
    orchestrator_pb2,
    orchestrator_pb2_grpc,
    target_pb2,
    target_pb2_grpc,
)
from specd_cli.stack import ThreadStack, start_thread_stack

# huge generated fields make hypothesis warn that their repr is large; that is the point here
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
}
CALL_DEADLINE_S = 30.0
SESSION = "fuzz-session"  # a prefilled target session / a draft session that exists
FUZZ = settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None
)
FUZZ_SLOW = settings(FUZZ, max_examples=40)  # the orchestrator's calls generate text

INT_EDGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def _scalar(field: FieldDescriptor, session_ids: tuple[str, ...]) -> st.SearchStrategy[Any]:
    t = field.type
    if t in INT_EDGES:
        lo, hi = INT_EDGES[t]
        edges = [v for v in (lo, hi, -1, 0, 1, 2, 7, 64, 255, 49151, 49152, 10**6) if lo <= v <= hi]
        return st.one_of(st.sampled_from(edges), st.integers(lo, hi), st.integers(max(lo, -3), min(hi, 300)))
    if t in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        width = 32 if t == FieldDescriptor.TYPE_FLOAT else 64
        specials = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-45, 1.0, 1.5, -1.0, 3.4e38])
        return st.one_of(specials, st.floats(width=width), st.floats(0.0, 2.0, width=width))
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_STRING:
        huge = st.sampled_from(["x" * 100_000, "\u00e9" * 20_000, "a b " * 5_000, "\ud7ff\U0010ffff" * 1000])
        choices = [st.text(max_size=40), huge, st.sampled_from(["", "\x00", "vanilla", "pld", "sps", "ouroboros"])]
        if field.name == "session_id":
            choices.append(st.sampled_from(session_ids))
        return st.one_of(*choices)
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == FieldDescriptor.TYPE_ENUM:
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), st.integers(-5, 1000))
    raise AssertionError(f"no strategy for field {field.full_name} of type {t}")


def message_strategy(desc: Descriptor, session_ids: tuple[str, ...], depth: int = 0) -> st.SearchStrategy[Any]:
    """Random messages of type ``desc``: each field absent or drawn from its strategy."""
    parts: dict[str, st.SearchStrategy[Any]] = {}
    for field in desc.fields:
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if depth >= 3:
                continue
            inner = message_strategy(field.message_type, session_ids, depth + 1)
        else:
            inner = _scalar(field, session_ids)
        if field.is_repeated:
            # long lists of scalars (20k ids); of messages only 200 (each may hold a huge string)
            lo, hi = (1000, 20_000) if field.type != FieldDescriptor.TYPE_MESSAGE else (50, 200)
            long_list = st.tuples(st.integers(lo, hi), inner).map(lambda nx: [nx[1]] * nx[0])
            inner = st.one_of(st.lists(inner, max_size=6), long_list)
        parts[field.name] = st.one_of(st.none(), inner)
    cls = _message_class(desc)

    def build(values: dict[str, Any]) -> Any:
        msg = cls()
        for name, value in values.items():
            if value is None:
                continue
            field = desc.fields_by_name[name]
            if field.is_repeated:
                target = getattr(msg, name)
                if field.type == FieldDescriptor.TYPE_MESSAGE:
                    for item in value:
                        target.add().CopyFrom(item)
                else:
                    target.extend(value)
            elif field.type == FieldDescriptor.TYPE_MESSAGE:
                getattr(msg, name).CopyFrom(value)
            else:
                setattr(msg, name, value)
        return msg

    return st.fixed_dictionaries(parts).map(build)


def _message_class(desc: Descriptor) -> type[pb_message.Message]:
    for module in (common_pb2, target_pb2, draft_pb2, orchestrator_pb2):
        cls = getattr(module, desc.name, None)
        if cls is not None and cls.DESCRIPTOR is desc:
            return cls  # type: ignore[no-any-return]
    raise AssertionError(f"no class for {desc.full_name}")


def requests(cls: type[pb_message.Message], session_ids: tuple[str, ...]) -> st.SearchStrategy[Any]:
    """Field-wise random messages, plus random bytes that happen to parse as ``cls``."""

    def parse(raw: bytes) -> Any:
        msg = cls()
        try:
            msg.ParseFromString(raw)
        except pb_message.DecodeError:
            return cls()  # bytes that do not parse: the empty message
        return msg

    return st.one_of(message_strategy(cls.DESCRIPTOR, session_ids), st.binary(max_size=512).map(parse))


@dataclass
class Counter:
    sent: int = 0
    by_code: dict[str, int] | None = None

    def record(self, code: grpc.StatusCode) -> None:
        self.sent += 1
        self.by_code = self.by_code or {}
        self.by_code[code.name] = self.by_code.get(code.name, 0) + 1


@pytest.fixture(scope="module")
def counter(request: pytest.FixtureRequest) -> Iterator[Counter]:
    c = Counter()
    yield c
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"\ntests/fuzz: {c.sent} inputs fuzzed; statuses {c.by_code}")


@pytest.fixture(scope="module")
def stack(tiny_target: Path, tiny_draft: Path) -> Iterator[ThreadStack]:
    cfg = stack_config(tiny_target, tiny_draft, dtype="float32")
    # short generations: the fuzz is about the inputs, not about decoding 256 tokens each time
    s = start_thread_stack(dataclasses.replace(cfg, orchestrator=OrchestratorConfig(max_new_tokens=32)))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def channels(stack: ThreadStack) -> Iterator[dict[str, grpc.Channel]]:
    opts = [("grpc.max_send_message_length", 64 * 1024 * 1024)]
    chans = {
        "target": grpc.insecure_channel(f"{stack.host}:{stack.target.port}", opts),
        "draft": grpc.insecure_channel(f"{stack.host}:{stack.draft.port}", opts),
        "orchestrator": grpc.insecure_channel(stack.address, opts),
    }
    target = target_pb2_grpc.TargetServiceStub(chans["target"])
    target.Prefill(target_pb2.PrefillRequest(session_id=SESSION, prompt_tokens=[1, 2, 3]), timeout=30)
    yield chans
    for ch in chans.values():
        ch.close()


def _call(counter: Counter, method: Callable[..., Any], request: Any, stream: bool = False) -> None:
    try:
        reply = method(request, timeout=CALL_DEADLINE_S)
        if stream:
            for _ in reply:
                pass
        counter.record(grpc.StatusCode.OK)
    except grpc.RpcError as err:
        code = err.code()
        counter.record(code)
        assert code in ALLOWED, f"{code.name}: {err.details()} for {str(request)[:300]!r}"
        assert err.details(), f"{code.name} without a message"


def _still_serving(channels: dict[str, grpc.Channel]) -> None:
    target_pb2_grpc.TargetServiceStub(channels["target"]).Info(target_pb2.TargetInfoRequest(), timeout=10)
    draft_pb2_grpc.DraftServiceStub(channels["draft"]).Info(draft_pb2.DraftInfoRequest(), timeout=10)
    orch = orchestrator_pb2_grpc.OrchestratorStub(channels["orchestrator"])
    reply = orch.Generate(orchestrator_pb2.GenerateRequest(prompt="Hi", method="pld", max_new_tokens=4), timeout=30)
    assert len(reply.token_ids) > 0


SESSION_IDS = (SESSION, "no-such-session")
SERVICE_NAMES = {"target": "TargetService", "draft": "DraftService", "orchestrator": "Orchestrator"}
RPCS = [
    # (service, stub class, method, request class, streaming, settings)
    ("target", target_pb2_grpc.TargetServiceStub, "Info", target_pb2.TargetInfoRequest, False, FUZZ),
    ("target", target_pb2_grpc.TargetServiceStub, "Prefill", target_pb2.PrefillRequest, False, FUZZ),
    ("target", target_pb2_grpc.TargetServiceStub, "Verify", target_pb2.VerifyRequest, False, FUZZ),
    ("target", target_pb2_grpc.TargetServiceStub, "Release", target_pb2.ReleaseRequest, False, FUZZ),
    ("target", target_pb2_grpc.TargetServiceStub, "BeamVerify", target_pb2.BeamVerifyRequest, False, FUZZ),
    ("draft", draft_pb2_grpc.DraftServiceStub, "Info", draft_pb2.DraftInfoRequest, False, FUZZ),
    ("draft", draft_pb2_grpc.DraftServiceStub, "Propose", draft_pb2.ProposeRequest, False, FUZZ),
    ("draft", draft_pb2_grpc.DraftServiceStub, "Observe", draft_pb2.ObserveRequest, False, FUZZ),
    ("draft", draft_pb2_grpc.DraftServiceStub, "Release", draft_pb2.DraftReleaseRequest, False, FUZZ),
    ("draft", draft_pb2_grpc.DraftServiceStub, "ProposeBeams", draft_pb2.ProposeBeamsRequest, False, FUZZ),
    (
        "orchestrator",
        orchestrator_pb2_grpc.OrchestratorStub,
        "Generate",
        orchestrator_pb2.GenerateRequest,
        False,
        FUZZ_SLOW,
    ),
    (
        "orchestrator",
        orchestrator_pb2_grpc.OrchestratorStub,
        "GenerateStream",
        orchestrator_pb2.GenerateRequest,
        True,
        FUZZ_SLOW,
    ),
    (
        "orchestrator",
        orchestrator_pb2_grpc.OrchestratorStub,
        "Info",
        orchestrator_pb2.OrchestratorInfoRequest,
        False,
        FUZZ,
    ),
]


def test_every_public_rpc_is_fuzzed() -> None:
    """The list above names every RPC of protos/*.proto: a new RPC must be added to it."""
    declared = {
        (svc.name, m.name)
        for module in (target_pb2, draft_pb2, orchestrator_pb2)
        for svc in module.DESCRIPTOR.services_by_name.values()
        for m in svc.methods
    }
    assert declared == {(SERVICE_NAMES[service], method) for service, _, method, *_ in RPCS}


@pytest.mark.parametrize(
    ("service", "stub_cls", "method", "req_cls", "stream", "cfg"), RPCS, ids=[f"{r[0]}.{r[2]}" for r in RPCS]
)
def test_fuzz_rpc(
    channels: dict[str, grpc.Channel],
    counter: Counter,
    service: str,
    stub_cls: Any,
    method: str,
    req_cls: type[pb_message.Message],
    stream: bool,
    cfg: settings,
) -> None:
    rpc = getattr(stub_cls(channels[service]), method)

    @cfg
    @given(requests(req_cls, SESSION_IDS))
    def run(request: Any) -> None:
        _call(counter, rpc, request, stream)

    run()
    _still_serving(channels)


RAW = settings(FUZZ, max_examples=20)
CORRUPT = b"\xff\xff\xff"  # an invalid tag: never parses


@pytest.mark.parametrize(
    ("service", "stub_cls", "method", "req_cls", "stream", "cfg"), RPCS, ids=[f"{r[0]}.{r[2]}" for r in RPCS]
)
def test_unparseable_bytes(
    channels: dict[str, grpc.Channel],
    counter: Counter,
    service: str,
    stub_cls: Any,
    method: str,
    req_cls: type[pb_message.Message],
    stream: bool,
    cfg: settings,
) -> None:
    """Raw bytes on the wire, parsed by the server: INVALID_ARGUMENT when they do not parse
    (gRPC alone would answer INTERNAL "Exception deserializing request!")."""
    full = f"/{req_cls.DESCRIPTOR.file.package}.{SERVICE_NAMES[service]}/{method}"
    make = channels[service].unary_stream if stream else channels[service].unary_unary
    rpc = make(full, request_serializer=lambda raw: raw, response_deserializer=lambda raw: raw)
    with pytest.raises(grpc.RpcError) as err:
        reply = rpc(CORRUPT, timeout=CALL_DEADLINE_S)
        if stream:
            list(reply)
    counter.record(err.value.code())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a valid message" in err.value.details()

    @RAW
    @given(st.binary(min_size=1, max_size=256))
    def run(raw: bytes) -> None:
        _call(counter, rpc, raw, stream)

    run()
    _still_serving(channels)


def _tree(tokens: list[int], parents: list[int], probs: list[tuple[list[int], list[float]]] | None = None) -> Any:
    tree = common_pb2.DraftTree(tokens=tokens, parents=parents)
    for ids, ps in probs or []:
        tree.draft_probs.add(ids=ids, probs=ps)
    return tree


HOSTILE_TREES = {
    "self-parent cycle": _tree([5, 6], [-1, 1]),
    "forward parent": _tree([5, 6, 7], [2, -1, 0]),
    "two-node cycle": _tree([5, 6], [1, 0]),
    "parent below -1": _tree([5], [-2]),
    "parent out of range": _tree([5, 6], [-1, 2**31 - 1]),
    "chain deeper than max_tree_nodes": _tree([5] * 65, [-1, *range(64)]),
    "huge chain": _tree([5] * 100_000, [-1, *range(99_999)]),
    "token above the vocabulary": _tree([10**9], [-1]),
    "negative token": _tree([-7], [-1]),
    "parents/tokens length mismatch": _tree([5, 6], [-1]),
    "probs summing to 3": _tree([5], [-1], [([5, 6, 7], [1.0, 1.0, 1.0])]),
    "NaN prob": _tree([5], [-1], [([5, 6], [math.nan, 0.5])]),
    "negative prob": _tree([5], [-1], [([5, 6], [-0.5, 1.5])]),
    "infinite prob": _tree([5], [-1], [([5], [math.inf])]),
    "probs without the drafted token": _tree([5], [-1], [([6], [1.0])]),
    "prob id outside the vocabulary": _tree([5], [-1], [([5, 10**9], [0.5, 0.5])]),
    "ids/probs length mismatch": _tree([5], [-1], [([5, 6], [1.0])]),
    "probs for some nodes only": _tree([5, 6], [-1, 0], [([5], [1.0])]),
}


@pytest.mark.parametrize("name", list(HOSTILE_TREES))
def test_hostile_tree_refused(channels: dict[str, grpc.Channel], counter: Counter, name: str) -> None:
    """Straight to the target, in a greedy and in a sampled session (where draft probs are read)."""
    stub = target_pb2_grpc.TargetServiceStub(channels["target"])
    before = stub.Info(target_pb2.TargetInfoRequest(), timeout=10).active_sessions
    sessions = {
        f"hostile-greedy-{name}": common_pb2.SamplingParams(),
        f"hostile-sampled-{name}": common_pb2.SamplingParams(temperature=0.7, has_seed=True, seed=1),
    }
    try:
        for session_id, sampling in sessions.items():
            prefill = target_pb2.PrefillRequest(session_id=session_id, prompt_tokens=[1, 2, 3], sampling=sampling)
            stub.Prefill(prefill, timeout=30)
            with pytest.raises(grpc.RpcError) as err:
                stub.Verify(target_pb2.VerifyRequest(session_id=session_id, tree=HOSTILE_TREES[name]), timeout=30)
            counter.record(err.value.code())
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, err.value.details())
            # the session is untouched and still verifies
            ok = stub.Verify(target_pb2.VerifyRequest(session_id=session_id, tree=_tree([], [])), timeout=30)
            assert ok.context_len == 4  # the 3 prompt tokens + this step's token: nothing of the bad tree
    finally:
        for session_id in sessions:
            stub.Release(target_pb2.ReleaseRequest(session_id=session_id), timeout=10)
    assert stub.Info(target_pb2.TargetInfoRequest(), timeout=10).active_sessions == before
