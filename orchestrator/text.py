"""Prompt building (chat template) and incremental detokenization for streaming."""

from __future__ import annotations

from typing import Any

from orchestrator.request import GenerateParams
from spec_decode.errors import InvalidArgument


def prompt_tokens(tokenizer: Any, params: GenerateParams) -> list[int]:
    """Token ids of the prompt: chat-templated unless ``raw`` or already tokenized."""
    if params.prompt_token_ids:
        return list(params.prompt_token_ids)
    if params.raw:
        if params.messages:
            raise InvalidArgument("raw applies to a plain prompt, not to chat messages")
        return list(tokenizer.encode(params.prompt, add_special_tokens=False))
    messages = [{"role": m.role, "content": m.content} for m in params.messages] or [
        {"role": "user", "content": params.prompt}
    ]
    if getattr(tokenizer, "chat_template", None) is None:
        if len(messages) == 1:  # a model without a template: the prompt as it is
            return list(tokenizer.encode(messages[0]["content"], add_special_tokens=False))
        raise InvalidArgument("this target has no chat template; send a raw prompt")
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):  # BatchEncoding in transformers 5
        ids = ids["input_ids"]
    return [int(t) for t in ids]


class IncrementalDetokenizer:
    """Turns a growing token list into text deltas without re-decoding the whole output.

    Keeps two offsets into the token list: text is decoded from ``prefix`` so that
    merges and leading spaces come out right, and only completed characters past
    ``read`` are released (a trailing U+FFFD means a multi-byte character is unfinished).
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tok = tokenizer
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def push(self, new_ids: list[int]) -> str:
        self._ids.extend(new_ids)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        full_text = self._decode(self._ids[self._prefix :])
        if len(full_text) > len(prefix_text) and not full_text.endswith("\ufffd"):
            delta = full_text[len(prefix_text) :]
            self._prefix = self._read
            self._read = len(self._ids)
            return delta
        return ""

    def flush(self) -> str:
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        full_text = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return full_text[len(prefix_text) :]

    def _decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=True))
