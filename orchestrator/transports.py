"""gRPC clients of the target and draft services, implementing the same protocols
(:class:`spec_decode.api.TargetAPI`, :class:`spec_decode.api.DraftAPI`) as the
in-process domain objects. gRPC status codes come back as :mod:`spec_decode.errors`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from protos import beam_convert, convert, draft_pb2, draft_pb2_grpc, target_pb2, target_pb2_grpc
from protos.security import PeerTls, open_channel
from protos.serving import CHANNEL_OPTIONS, call
from spec_decode.beam_types import BeamForest, BeamParams, BeamProposal, BeamUpdate, BeamVerifyResult
from spec_decode.errors import Unavailable
from spec_decode.types import (
    ColocatedDraft,
    DraftInfo,
    DraftOptions,
    DraftTree,
    PrefillResult,
    ProposeResult,
    SamplingParams,
    TargetInfo,
    VerifyResult,
)

T = TypeVar("T")

# A restarted target is reached again within ~2 s: gRPC's default reconnect backoff grows to
# 120 s, which would keep a dead channel refusing requests long after the target is back.
TARGET_CHANNEL_OPTIONS = [
    *CHANNEL_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


@dataclass(frozen=True)
class RpcTimeouts:
    """Per-call deadlines (seconds) the orchestrator puts on backend calls."""

    info: float = 10.0
    prefill: float = 120.0
    verify: float = 60.0
    propose: float = 10.0
    release: float = 5.0


class GrpcTargetClient:
    """TargetAPI over gRPC; ``tls``: the target's CA (and this client's certificate for mTLS)."""

    def __init__(self, address: str, timeouts: RpcTimeouts | None = None, tls: PeerTls | None = None) -> None:
        self.address = address
        self._channel = open_channel(address, tls, TARGET_CHANNEL_OPTIONS)
        self._stub = target_pb2_grpc.TargetServiceStub(self._channel)
        self._t = timeouts or RpcTimeouts()

    def _call(self, method: Callable[..., T], request: Any, timeout: float) -> T:
        """:func:`call`, with UNAVAILABLE saying which service went away and what it cost."""
        try:
            return call(method, request, timeout)
        except Unavailable as err:
            raise Unavailable(
                f"the target service at {self.address} is unavailable ({err.message}); "
                "a request in flight lost its session: retry it"
            ) from None

    def info(self) -> TargetInfo:
        return convert.target_info_from_pb(self._call(self._stub.Info, target_pb2.TargetInfoRequest(), self._t.info))

    def prefill(
        self,
        session_id: str,
        prompt_tokens: Sequence[int],
        sampling: SamplingParams,
        return_hidden_state: bool = False,
        colocated_draft: ColocatedDraft | None = None,
    ) -> PrefillResult:
        req = target_pb2.PrefillRequest(
            session_id=session_id,
            prompt_tokens=prompt_tokens,
            sampling=convert.sampling_to_pb(sampling),
            return_hidden_state=return_hidden_state,
            colocated_draft=convert.colocated_draft_to_pb(colocated_draft),
        )
        resp = self._call(self._stub.Prefill, req, self._t.prefill)
        next_tree = convert.tree_from_pb(resp.next_tree) if resp.HasField("next_tree") else None
        return PrefillResult(
            resp.context_len, resp.compute_ms / 1e3, resp.evicted_sessions, resp.hidden_state, next_tree
        )

    def verify(
        self,
        session_id: str,
        tree: DraftTree,
        return_target_tokens: bool = False,
        return_hidden_state: bool = False,
        colocated_draft: ColocatedDraft | None = None,
    ) -> VerifyResult:
        req = target_pb2.VerifyRequest(
            session_id=session_id,
            tree=convert.tree_to_pb(tree),
            return_target_tokens=return_target_tokens,
            return_hidden_state=return_hidden_state,
            colocated_draft=convert.colocated_draft_to_pb(colocated_draft),
        )
        return convert.verify_from_pb(self._call(self._stub.Verify, req, self._t.verify))

    def beam_verify(
        self,
        session_id: str,
        forest: BeamForest,
        params: BeamParams,
        eos_token_ids: Sequence[int],
        return_hidden_states: bool = False,
        tokens_left: int = 0,
    ) -> BeamVerifyResult:
        req = target_pb2.BeamVerifyRequest(
            session_id=session_id,
            forest=beam_convert.forest_to_pb(forest),
            params=beam_convert.beam_params_to_pb(params),
            eos_token_ids=eos_token_ids,
            return_hidden_states=return_hidden_states,
            tokens_left=tokens_left,
        )
        return beam_convert.beam_verify_from_pb(self._call(self._stub.BeamVerify, req, self._t.verify))

    def release(self, session_id: str) -> bool:
        resp = self._call(self._stub.Release, target_pb2.ReleaseRequest(session_id=session_id), self._t.release)
        return bool(resp.released)

    def close(self) -> None:
        self._channel.close()


class GrpcDraftClient:
    """DraftAPI over gRPC.

    :meth:`observe` costs no round trip: the feedback rides on the session's next
    Propose (``has_feedback``), so it returns -1 ("sent later") instead of the next length.
    """

    def __init__(self, address: str, timeouts: RpcTimeouts | None = None, tls: PeerTls | None = None) -> None:
        self.address = address
        self._channel = open_channel(address, tls, CHANNEL_OPTIONS)
        self._stub = draft_pb2_grpc.DraftServiceStub(self._channel)
        self._t = timeouts or RpcTimeouts()
        self._feedback: dict[str, tuple[int, int, tuple[int, ...]]] = {}

    def info(self) -> DraftInfo:
        return convert.draft_info_from_pb(call(self._stub.Info, draft_pb2.DraftInfoRequest(), self._t.info))

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
        feedback = self._feedback.pop(session_id, None)
        req = draft_pb2.ProposeRequest(
            session_id=session_id,
            drafter=drafter,
            offset=offset,
            tokens=tokens,
            max_nodes=max_nodes,
            options=convert.draft_options_to_pb(options),
            sampling=convert.sampling_to_pb(sampling),
            has_feedback=feedback is not None,
            feedback_num_draft=feedback[0] if feedback else 0,
            feedback_num_accepted=feedback[1] if feedback else 0,
            feedback_target_tokens=feedback[2] if feedback else (),
            hidden_state=hidden_state,
            max_depth=max_depth,
        )
        resp = call(self._stub.Propose, req, self._t.propose)
        return ProposeResult(convert.tree_from_pb(resp.tree), resp.context_len, resp.compute_ms / 1e3)

    def propose_beams(
        self,
        session_id: str,
        contexts: Sequence[Sequence[int]],
        updates: Sequence[BeamUpdate],
        beam_scores: Sequence[float],
        depth: int,
        width: int,
        max_nodes: int,
        sampling: SamplingParams,
        draft_top_k: int = 0,
        eos_token_ids: Sequence[int] = (),
        drafter: str = "model",
        hidden_states: Sequence[bytes] = (),
    ) -> BeamProposal:
        req = draft_pb2.ProposeBeamsRequest(
            session_id=session_id,
            contexts=[draft_pb2.TokenList(tokens=c) for c in contexts],
            updates=[beam_convert.update_to_pb(u) for u in updates],
            beam_scores=beam_scores,
            depth=depth,
            width=width,
            max_nodes=max_nodes,
            sampling=convert.sampling_to_pb(sampling),
            draft_top_k=draft_top_k,
            eos_token_ids=eos_token_ids,
            drafter=drafter,
            hidden_states=hidden_states,
        )
        resp = call(self._stub.ProposeBeams, req, self._t.propose)
        return BeamProposal(beam_convert.forest_from_pb(resp.forest), resp.compute_s)

    def observe(self, session_id: str, num_draft: int, num_accepted: int, target_tokens: Sequence[int] = ()) -> int:
        self._feedback[session_id] = (num_draft, num_accepted, tuple(target_tokens))
        return -1

    def release(self, session_id: str) -> bool:
        self._feedback.pop(session_id, None)
        req = draft_pb2.DraftReleaseRequest(session_id=session_id)
        return bool(call(self._stub.Release, req, self._t.release).released)

    def close(self) -> None:
        self._channel.close()
