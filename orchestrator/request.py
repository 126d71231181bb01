"""A generation request after prompt resolution, validated against the deployment's limits."""

from __future__ import annotations

from dataclasses import dataclass, field

from spec_decode.errors import InvalidArgument
from spec_decode.types import DraftOptions, SamplingParams


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


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
        if self.num_branches < 0:
            raise InvalidArgument(f"num_branches must be >= 0, got {self.num_branches}")
        for i, msg in enumerate(self.messages):
            if msg.role not in ("system", "user", "assistant"):
                raise InvalidArgument(f"messages[{i}].role {msg.role!r} must be system, user or assistant")
        self.sampling.validate()
        return self

    def draft_options(self, default_num_tokens: int) -> DraftOptions:
        return DraftOptions(
            num_tokens=self.num_draft_tokens or default_num_tokens,
            adaptive=self.adaptive_draft,
            num_branches=self.num_branches,
        )
