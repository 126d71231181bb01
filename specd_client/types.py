"""Typed results of the SDK (plain dataclasses; no protobuf in user code)."""

from __future__ import annotations

from dataclasses import dataclass, field

from protos import orchestrator_pb2


@dataclass(frozen=True)
class Message:
    role: str  # system | user | assistant
    content: str


@dataclass(frozen=True)
class PhaseTimes:
    prefill_s: float = 0.0
    draft_s: float = 0.0
    verify_s: float = 0.0
    orchestrate_s: float = 0.0
    network_s: float = 0.0


@dataclass(frozen=True)
class GenerationStats:
    prompt_tokens: int
    new_tokens: int
    target_steps: int
    draft_tokens: int
    accepted_tokens: int
    tau: float
    acceptance_rate: float
    wall_s: float
    tokens_per_s: float
    phases: PhaseTimes = field(default_factory=PhaseTimes)
    accepted_length_histogram: tuple[int, ...] = ()
    finish_reason: str = ""
    drafter_switches: int = 0  # times the session moved to another draft replica
    draft_timeouts: int = 0  # draft calls past the drafter deadline (those steps went target-only)
    target_rebuilds: int = 0  # times the target evicted the session and it was prefilled again

    @classmethod
    def from_pb(cls, msg: orchestrator_pb2.GenerationStats) -> GenerationStats:
        ph = msg.phases
        return cls(
            prompt_tokens=msg.prompt_tokens,
            new_tokens=msg.new_tokens,
            target_steps=msg.target_steps,
            draft_tokens=msg.draft_tokens,
            accepted_tokens=msg.accepted_tokens,
            tau=msg.tau,
            acceptance_rate=msg.acceptance_rate,
            wall_s=msg.wall_s,
            tokens_per_s=msg.tokens_per_s,
            phases=PhaseTimes(ph.prefill_s, ph.draft_s, ph.verify_s, ph.orchestrate_s, ph.network_s),
            accepted_length_histogram=tuple(msg.accepted_length_histogram),
            finish_reason=msg.finish_reason,
            drafter_switches=msg.drafter_switches,
            draft_timeouts=msg.draft_timeouts,
            target_rebuilds=msg.target_rebuilds,
        )

    def as_dict(self) -> dict[str, object]:
        from dataclasses import asdict

        return asdict(self)


@dataclass(frozen=True)
class Beam:
    """A final beam of a beam method (beam-sample, dsbd): ``logprob`` is its target log-probability."""

    text: str
    token_ids: tuple[int, ...]
    score: float
    logprob: float
    finished: bool


@dataclass(frozen=True)
class GenerationResult:
    text: str
    token_ids: tuple[int, ...]
    method: str
    stats: GenerationStats
    session_id: str = ""
    beams: tuple[Beam, ...] = ()  # beam methods: every final beam, best first
    peak_kv_bytes: int = 0  # beam methods: peak target KV memory of the request's beams


@dataclass(frozen=True)
class StreamEvent:
    """New text/tokens of one target step. The last event has ``done`` and ``stats``."""

    text: str
    token_ids: tuple[int, ...]
    done: bool = False
    stats: GenerationStats | None = None
    method: str = ""
    session_id: str = ""
    beams: tuple[Beam, ...] = ()  # last event of a beam method: every final beam, best first
