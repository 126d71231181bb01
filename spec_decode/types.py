"""Frozen value types at the seams between drafter, verifier and orchestrator.

Vocabulary (see docs/ARCHITECTURE.md): a drafter proposes **draft** tokens as a tree; the
target **accepts** a path of them; at the first rejection the target's **recovered**
token replaces the draft token, and when the whole path is accepted the target adds a
**bonus** token. τ = tokens emitted per target step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from spec_decode.errors import InvalidArgument


@dataclass(frozen=True)
class SamplingParams:
    """How logits become the next token. ``temperature == 0`` means greedy.

    ``top_k == 0`` and ``top_p == 1.0`` switch those filters off. The same params are
    applied to the target's p and to the draft's q (see docs/ALGORITHMS.md).
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self) -> SamplingParams:
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise InvalidArgument(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise InvalidArgument(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not math.isfinite(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise InvalidArgument(f"top_p must be in (0, 1], got {self.top_p}")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise InvalidArgument(f"seed must be in [0, 2**63), got {self.seed}")
        return self


@dataclass(frozen=True)
class SparseProbs:
    """A draft distribution q restricted to its support: ``ids[i]`` has prob ``probs[i]``.

    A drafter that samples from a top-k-truncated q has q = 0 elsewhere, so this pair of
    length k is the whole distribution; it never carries a vocabulary-sized vector.
    """

    ids: tuple[int, ...] = ()
    probs: tuple[float, ...] = ()


@dataclass(frozen=True)
class DraftTree:
    """A tree of draft tokens continuing a session's pending token.

    ``tokens[i]`` is node i's token, ``parents[i]`` its parent node (-1: the pending
    token, i.e. the root). Parents precede children (``parents[i] < i``).
    ``draft_probs`` is empty for model-free drafters (each node is then a point mass on
    its own token) or holds, per node, the sparse q the node's token was sampled from; in a
    mixed tree an empty ``SparseProbs()`` marks a node that is a point mass.
    """

    tokens: tuple[int, ...] = ()
    parents: tuple[int, ...] = ()
    draft_probs: tuple[SparseProbs, ...] = ()

    @staticmethod
    def chain(tokens: list[int] | tuple[int, ...], draft_probs: tuple[SparseProbs, ...] = ()) -> DraftTree:
        """A single branch: node i's parent is node i-1."""
        return DraftTree(tuple(tokens), tuple(range(-1, len(tokens) - 1)), draft_probs)

    @property
    def size(self) -> int:
        return len(self.tokens)


EMPTY_TREE = DraftTree()


@dataclass(frozen=True)
class Acceptance:
    """What an acceptance rule decided for one verified tree.

    ``path`` lists the accepted node indices root side first, ``tokens`` their tokens;
    ``next_token`` is the target's own token after the path: recovered if ``bonus`` is
    False (every draft child at that depth was rejected), bonus if the path ends at a
    leaf with nothing rejected (an empty tree counts: its root is a leaf).
    """

    path: tuple[int, ...]
    tokens: tuple[int, ...]
    next_token: int
    bonus: bool

    @property
    def emitted(self) -> tuple[int, ...]:
        """Tokens this step adds to the output: accepted + recovered/bonus."""
        return (*self.tokens, self.next_token)


@dataclass(frozen=True)
class VerifyResult:
    """The target service's answer to one Verify call.

    ``target_tokens`` (only when asked for) holds the target's argmax after every row of the
    pass: row 0 = the pending token, row ``i + 1`` = node ``i``. Drafters learn corrected
    phrases from it (Ouroboros).
    """

    acceptance: Acceptance
    context_len: int
    compute_s: float
    target_tokens: tuple[int, ...] = ()
    hidden_state: bytes = b""  # float16 LE, the final hidden state at the last accepted row (when asked)
    next_tree: DraftTree | None = None  # the co-located draft head's tree for the next step (when asked)


@dataclass(frozen=True)
class VocabInfo:
    """Identity of a model's vocabulary; drafts are only shared between equal ones."""

    model: str
    fingerprint: str
    vocab_size: int
    eos_token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class DraftOptions:
    """Per-request knobs for a drafter. Zero means "the drafter's default"."""

    num_tokens: int = 0
    adaptive: bool = False
    max_ngram: int = 0
    min_ngram: int = 0
    num_branches: int = 0
    draft_top_k: int = 0
    head_tree: str = ""  # redrafter / hybrid: "nodes" or "beams" (HEAD_TREES below)
    # Ouroboros: the pool's namespace (the target's vocabulary fingerprint), phrases tried
    # per key token, n of the learned n-grams, and one switch per part (all on by default).
    phrase_namespace: str = ""
    phrase_top_k: int = 0
    phrase_length: int = 0
    no_lookahead: bool = False
    no_phrase_extension: bool = False
    no_verification_phrases: bool = False
    no_history_phrases: bool = False


@dataclass(frozen=True)
class ProposeResult:
    tree: DraftTree
    context_len: int
    compute_s: float


@dataclass(frozen=True)
class TargetLimits:
    max_sessions: int
    max_tree_nodes: int
    max_context: int
    max_draft_top_k: int


@dataclass(frozen=True)
class TargetInfo:
    vocab: VocabInfo
    device: str
    dtype: str
    limits: TargetLimits
    active_sessions: int = 0
    hidden_size: int = 0
    draft_head: bool = False  # a ReDrafter head runs inside the target service (co-located drafting)
    colocated_drafters: tuple[str, ...] = ()  # what Prefill/Verify can draft the next tree with


# How a ReDrafter head's search becomes a draft tree (spec_decode.redrafter_head.head_tree): "nodes"
# keeps the most probable nodes the search expanded (the default), "beams" the packed surviving
# beams (the reference's tree).
HEAD_TREES = ("nodes", "beams")
COLOCATED_DRAFTERS = ("redrafter", "prompt_lookup")  # what a target may draft with itself


@dataclass(frozen=True)
class ColocatedDraft:
    """Ask the target to draft the next step itself, right after its pass (no draft round trip).

    ``drafter`` names the co-located drafter (the draft service's drafter names):

    - ``"redrafter"``: beam search over the target's ReDrafter head (``width`` beams of ``length``
      tokens, top-``top_k`` warping) from the hidden state of the last accepted row, drafted as
      one tree of its most probable nodes (``tree`` "nodes" or "") or of its packed beams ("beams");
    - ``"prompt_lookup"``: prompt lookup over the session's own tokens (``width`` distinct
      continuations of ``length`` tokens, suffix n-grams of ``max_ngram`` down to ``min_ngram``).

    Either tree has at most ``max_nodes`` nodes.
    """

    width: int
    length: int
    max_nodes: int
    top_k: int = 50
    drafter: str = "redrafter"
    max_ngram: int = 3
    min_ngram: int = 1
    tree: str = ""  # redrafter: "nodes" ("" too) or "beams" (HEAD_TREES)

    def validate(self) -> ColocatedDraft:
        if self.drafter not in COLOCATED_DRAFTERS:
            raise InvalidArgument(
                f"co-located drafter must be one of {', '.join(COLOCATED_DRAFTERS)}, got {self.drafter!r}"
            )
        if self.drafter == "redrafter":
            ok = 1 <= self.width <= 64 and 1 <= self.length <= 16 and 1 <= self.top_k <= 1000
            shape = "1 <= width <= 64, 1 <= length <= 16, 1 <= top_k <= 1000"
        else:
            ok = 1 <= self.width <= 64 and 1 <= self.length <= 1024 and 1 <= self.min_ngram <= self.max_ngram <= 16
            shape = "1 <= width <= 64, 1 <= length <= 1024, 1 <= min_ngram <= max_ngram <= 16"
        if not ok or self.max_nodes < 0:
            raise InvalidArgument(
                f"co-located {self.drafter} draft needs {shape} and max_nodes >= 0; got width={self.width}, "
                f"length={self.length}, max_nodes={self.max_nodes}, top_k={self.top_k}, "
                f"ngram={self.min_ngram}..{self.max_ngram}"
            )
        if self.tree not in ("", *HEAD_TREES):
            raise InvalidArgument(f"co-located draft tree must be one of {', '.join(HEAD_TREES)}, got {self.tree!r}")
        return self


@dataclass(frozen=True)
class DraftInfo:
    vocab: VocabInfo | None
    drafters: tuple[str, ...]
    device: str
    max_sessions: int
    active_sessions: int = 0
    phrase_store: str = ""  # "memory" | "redis" | "" (none)


@dataclass
class PhaseTimes:
    """Seconds spent per phase of the generate loop (mutable accumulator)."""

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
    wall_s: float
    phases: PhaseTimes = field(default_factory=PhaseTimes)
    accepted_length_histogram: tuple[int, ...] = ()
    finish_reason: str = "length"
    drafter_switches: int = 0  # times the session moved to another draft replica (failover, rebalance)
    draft_timeouts: int = 0  # draft calls past the drafter deadline (those steps went target-only)
    target_rebuilds: int = 0  # times the target evicted the session and it was prefilled again

    @property
    def tau(self) -> float:
        return self.new_tokens / self.target_steps if self.target_steps else 0.0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_s if self.wall_s > 0 else 0.0


@dataclass(frozen=True)
class PrefillResult:
    context_len: int  # tokens in the session, the pending one included
    compute_s: float
    evicted_sessions: int = 0
    hidden_state: bytes = b""  # float16 LE, the final hidden state before the pending token (when asked)
    next_tree: DraftTree | None = None  # the co-located draft head's first tree (when asked)
