"""A generation request after prompt resolution, validated against the deployment's limits."""

from __future__ import annotations

from dataclasses import dataclass, field

from spec_decode.beams import BeamParams
from spec_decode.budget import TREE_BUDGETS
from spec_decode.errors import InvalidArgument
from spec_decode.types import HEAD_TREES, DraftOptions, SamplingParams


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class OuroborosParams:
    """Ouroboros knobs (zero = default); one switch per part of the method, all on by default."""

    phrase_top_k: int = 0
    phrase_length: int = 0
    no_lookahead: bool = False
    no_phrase_extension: bool = False
    no_verification_phrases: bool = False
    no_history_phrases: bool = False

    PARTS = ("lookahead", "phrase_extension", "verification_phrases", "history_phrases")

    @classmethod
    def without(cls, parts: list[str] | tuple[str, ...]) -> OuroborosParams:
        """Params with the named parts switched off (names from ``PARTS``)."""
        unknown = [p for p in parts if p not in cls.PARTS]
        if unknown:
            raise InvalidArgument(f"unknown Ouroboros part(s) {unknown}; parts: {', '.join(cls.PARTS)}")
        return cls(**{f"no_{p}": True for p in parts})


@dataclass(frozen=True)
class GenerateParams:
    """What a client asks for. Exactly one of ``prompt``, ``messages``, ``prompt_token_ids``."""

    prompt: str = ""
    messages: tuple[ChatMessage, ...] = ()
    prompt_token_ids: tuple[int, ...] = ()
    raw: bool = False
    method: str = "vanilla"
    max_new_tokens: int = 128
    sampling: SamplingParams = field(default_factory=SamplingParams)
    num_draft_tokens: int = 0
    adaptive_draft: bool = False
    num_branches: int = 0
    ignore_eos: bool = False
    ouroboros: OuroborosParams = field(default_factory=lambda: OuroborosParams())
    beam: BeamParams = field(default_factory=BeamParams)  # beam-sample / dsbd: width, min width, threshold
    tree_budget: str = ""  # "cost" | "max" | "" (the orchestrator's default): spec_decode/budget.py
    head_tree: str = ""  # ReDrafter methods: "nodes" | "beams" | "" (= "nodes"): spec_decode/redrafter_head.py

    def validate(self, *, max_new_tokens_cap: int) -> GenerateParams:
        given = sum(bool(x) for x in (self.prompt, self.messages, self.prompt_token_ids))
        if given == 0:
            raise InvalidArgument("prompt is empty: send a prompt, chat messages or prompt_token_ids")
        if given > 1:
            raise InvalidArgument("send exactly one of prompt, messages, prompt_token_ids")
        if self.max_new_tokens <= 0:
            raise InvalidArgument(f"max_new_tokens must be > 0, got {self.max_new_tokens}")
        if self.max_new_tokens > max_new_tokens_cap:
            raise InvalidArgument(
                f"max_new_tokens {self.max_new_tokens} is above this server's cap of {max_new_tokens_cap}"
            )
        if self.num_draft_tokens < 0:
            raise InvalidArgument(f"num_draft_tokens must be >= 0, got {self.num_draft_tokens}")
        if self.ouroboros.phrase_top_k < 0 or self.ouroboros.phrase_length < 0:
            raise InvalidArgument("ouroboros phrase_top_k and phrase_length must be >= 0")
        if self.num_branches < 0:
            raise InvalidArgument(f"num_branches must be >= 0, got {self.num_branches}")
        if self.tree_budget and self.tree_budget not in TREE_BUDGETS:
            raise InvalidArgument(
                f"tree_budget must be one of {', '.join(TREE_BUDGETS)} (or empty for the server's default), "
                f"got {self.tree_budget!r}"
            )
        if self.head_tree not in ("", *HEAD_TREES):
            raise InvalidArgument(
                f"head_tree must be one of {', '.join(HEAD_TREES)} (or empty for nodes), got {self.head_tree!r}"
            )
        for i, msg in enumerate(self.messages):
            if msg.role not in ("system", "user", "assistant"):
                raise InvalidArgument(f"messages[{i}].role {msg.role!r} must be system, user or assistant")
        self.sampling.validate()
        if self.method in ("beam-sample", "dsbd", "dsbd-redrafter"):
            self.beam.validate()
            if self.sampling.greedy:
                raise InvalidArgument(f"method {self.method!r} is beam sampling: it needs temperature > 0")
        return self

    def draft_options(self, default_num_tokens: int, phrase_namespace: str = "") -> DraftOptions:
        o = self.ouroboros
        return DraftOptions(
            num_tokens=self.num_draft_tokens or default_num_tokens,
            adaptive=self.adaptive_draft,
            num_branches=self.num_branches,
            head_tree=self.head_tree,
            phrase_namespace=phrase_namespace,
            phrase_top_k=o.phrase_top_k,
            phrase_length=o.phrase_length,
            no_lookahead=o.no_lookahead,
            no_phrase_extension=o.no_phrase_extension,
            no_verification_phrases=o.no_verification_phrases,
            no_history_phrases=o.no_history_phrases,
        )
