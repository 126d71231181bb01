"""Bad input: the right spec_decode.errors class, a useful message, and no harm to any session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from target_helpers import MakeVerifier, inject_failure, kv_layers

from spec_decode.errors import InvalidArgument, NotFound
from spec_decode.models import LoadedModel
from spec_decode.types import EMPTY_TREE, DraftTree, SamplingParams, SparseProbs
from target_service.verifier import TargetConfig, TargetVerifier

GREEDY = SamplingParams()
VOCAB = 49152


@pytest.fixture
def busy(make_verifier: MakeVerifier) -> TargetVerifier:
    """A verifier with two live sessions, "a" and "b", each one verify step in."""
    verifier = make_verifier(max_context=64)
    for sid in ("a", "b"):
        verifier.prefill(sid, [1, 2, 3, 4, 5], GREEDY)
        verifier.verify(sid, DraftTree.chain([6, 7]))
    return verifier


State = tuple[int, int, int, list[torch.Tensor]]


def _state(verifier: TargetVerifier, sid: str) -> State:
    with verifier.sessions.checkout(sid) as s:
        keys = [k.clone() for k, _ in kv_layers(s.cache)]
        return s.prefix_len, s.pending_token, s.kv_bytes, keys


def _assert_unharmed(verifier: TargetVerifier, before: dict[str, State]) -> None:
    for sid, (prefix, pending, kv, keys) in before.items():
        now = _state(verifier, sid)
        assert now[:3] == (prefix, pending, kv), sid
        assert all(a.equal(b) for a, b in zip(now[3], keys, strict=True)), sid
    # ...and both still verify, identically (same state, same tree).
    results = [verifier.verify(sid, DraftTree.chain([8])).acceptance for sid in before]
    assert len(set(results)) == 1


BAD_TREES = [
    (DraftTree((5, 6), (-1, 5)), "parent index 5"),
    (DraftTree((5, 6), (-1, 1)), "cycle"),
    (DraftTree((5,), (0,)), "cycle"),
    (DraftTree((5, 6), (-1, -2)), "out of range"),
    (DraftTree((5, 6), (-1,)), "2 tokens but 1 parent"),
    (DraftTree.chain(list(range(65))), "65 nodes; the limit is 64"),
    (DraftTree.chain([5, VOCAB]), f"token id {VOCAB} is outside the vocabulary"),
    (DraftTree((5, 6), (-1, 0), (SparseProbs((5,), (1.0,)),)), "probabilities for 1 nodes; it has 2"),
    (DraftTree((5,), (-1,), (SparseProbs((5, 6), (0.5, 0.6)),)), "sum to"),
    (DraftTree((5,), (-1,), (SparseProbs(tuple(range(65)), (1 / 65,) * 65),)), "allowed 1..64"),
]


@pytest.mark.parametrize(("tree", "message"), BAD_TREES)
def test_malformed_tree(busy: TargetVerifier, tree: DraftTree, message: str) -> None:
    before = {sid: _state(busy, sid) for sid in ("a", "b")}
    with pytest.raises(InvalidArgument, match=message):
        busy.verify("a", tree)
    _assert_unharmed(busy, before)


def test_context_overflow(busy: TargetVerifier) -> None:
    before = {sid: _state(busy, sid) for sid in ("a", "b")}
    prefix = before["a"][0]
    nodes = 64 - prefix  # prefix + 1 pending + nodes = 65 > 64
    with pytest.raises(
        InvalidArgument, match=rf"{prefix} cached tokens .* = {prefix + 1 + nodes} .* max_context is 64"
    ):
        busy.verify("a", DraftTree.chain([5] * nodes))
    _assert_unharmed(busy, before)
    with pytest.raises(InvalidArgument, match="prompt has 65 tokens; max_context is 64"):
        busy.prefill("c", [1] * 65, GREEDY)
    assert "c" not in busy.sessions


def test_a_session_runs_until_the_context_is_full(make_verifier: MakeVerifier) -> None:
    verifier = make_verifier(max_context=8)
    verifier.prefill("s", [1, 2, 3], GREEDY)  # 2 cached + pending
    while True:
        try:
            result = verifier.verify("s", EMPTY_TREE)
        except InvalidArgument as err:
            assert "max_context is 8" in err.message
            break
    assert result.context_len == 9  # positions 0..7 were scored; the last token is pending


def test_unknown_session(busy: TargetVerifier) -> None:
    with pytest.raises(NotFound, match="'nope'"):
        busy.verify("nope", EMPTY_TREE)
    assert busy.release("nope") is False


def test_duplicate_prefill(busy: TargetVerifier) -> None:
    before = {sid: _state(busy, sid) for sid in ("a", "b")}
    with pytest.raises(InvalidArgument, match="'a' already exists"):
        busy.prefill("a", [9, 9, 9], GREEDY)
    _assert_unharmed(busy, before)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [([], "prompt is empty"), ([1, VOCAB], f"id {VOCAB} is outside"), ([-1], "id -1 is outside")],
)
def test_bad_prompt(busy: TargetVerifier, prompt: list[int], message: str) -> None:
    before = {sid: _state(busy, sid) for sid in ("a", "b")}
    with pytest.raises(InvalidArgument, match=message):
        busy.prefill("c", prompt, GREEDY)
    assert "c" not in busy.sessions
    _assert_unharmed(busy, before)


def test_bad_sampling_params(busy: TargetVerifier) -> None:
    with pytest.raises(InvalidArgument, match="session id is empty"):
        busy.prefill("", [1, 2], GREEDY)
    with pytest.raises(InvalidArgument, match="temperature"):
        busy.prefill("c", [1, 2], SamplingParams(temperature=-1.0))
    with pytest.raises(InvalidArgument, match="top_p"):
        busy.prefill("c", [1, 2], SamplingParams(temperature=1.0, top_p=0.0))
    assert "c" not in busy.sessions


def test_failed_forward_leaves_the_session_unchanged(busy: TargetVerifier, monkeypatch: pytest.MonkeyPatch) -> None:
    before = {sid: _state(busy, sid) for sid in ("a", "b")}
    with monkeypatch.context() as patch:
        inject_failure(busy.engine, patch, "simulated out of memory")
        with pytest.raises(RuntimeError, match="simulated"):
            busy.verify("a", DraftTree.chain([5, 6, 7]))
    _assert_unharmed(busy, before)


def test_config_validation_and_clipping(make_verifier: MakeVerifier, target64: LoadedModel, tiny_target: Path) -> None:
    with pytest.raises(InvalidArgument, match="max_sessions must be a positive integer"):
        TargetConfig(max_sessions=0).validate()
    with pytest.raises(InvalidArgument, match="max_tree_nodes"):
        TargetConfig(max_tree_nodes=-3).validate()
    verifier = make_verifier(max_context=100_000)
    info = verifier.info()
    assert info.limits.max_context == 512  # the tiny model's max_position_embeddings
    assert (info.limits.max_sessions, info.limits.max_tree_nodes, info.limits.max_draft_top_k) == (64, 64, 64)
    assert info.vocab == target64.vocab and info.dtype == "float64" and info.device == "cpu"
    loaded = TargetVerifier.from_config(TargetConfig(model=str(tiny_target), device="cpu", max_sessions=2))
    assert loaded.info().dtype == "float32" and loaded.info().limits.max_sessions == 2
