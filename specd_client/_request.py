"""Building a GenerateRequest from keyword arguments (shared by sync and async clients)."""

from __future__ import annotations

from collections.abc import Sequence

from protos import common_pb2, orchestrator_pb2
from specd_client.types import Beam, GenerationResult, GenerationStats, Message, StreamEvent


def build_request(
    prompt: str | Sequence[Message] | Sequence[int],
    *,
    method: str = "vanilla",
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    raw: bool = False,
    num_draft_tokens: int = 0,
    adaptive_draft: bool = False,
    num_branches: int = 0,
    ignore_eos: bool = False,
    phrase_top_k: int = 0,
    phrase_length: int = 0,
    disable_parts: Sequence[str] = (),
    beam_width: int = 0,
    min_beam_width: int = 0,
    width_threshold: float = 0.0,
    length_penalty: float | None = None,
    keep_best_beam: bool = False,
    tree_budget: str = "",
    head_tree: str = "",
) -> orchestrator_pb2.GenerateRequest:
    """``prompt`` is text, a list of :class:`Message`, or a list of token ids.

    ``phrase_top_k``, ``phrase_length`` and ``disable_parts`` (any of "lookahead",
    "phrase_extension", "verification_phrases", "history_phrases") tune method "ouroboros".
    ``beam_width`` (0 = 4), ``min_beam_width``, ``width_threshold`` (0 = fixed width),
    ``length_penalty`` and ``keep_best_beam`` tune methods "beam-sample" and "dsbd".
    ``tree_budget`` ("cost" or "max"; "" = the server's default) sets how many draft nodes
    each step asks for. ``head_tree`` ("nodes" or "beams"; "" = "nodes") sets the tree a ReDrafter
    head drafts (methods "redrafter", "hybrid"): the beam search's most probable nodes, or its
    packed beams.
    """
    known = ("lookahead", "phrase_extension", "verification_phrases", "history_phrases")
    unknown = [p for p in disable_parts if p not in known]
    if unknown:
        raise ValueError(f"unknown Ouroboros parts {unknown}; known: {known}")
    req = orchestrator_pb2.GenerateRequest(
        method=method,
        max_new_tokens=max_new_tokens,
        raw=raw,
        sampling=common_pb2.SamplingParams(
            temperature=temperature, top_k=top_k, top_p=top_p, seed=seed or 0, has_seed=seed is not None
        ),
        num_draft_tokens=num_draft_tokens,
        adaptive_draft=adaptive_draft,
        num_branches=num_branches,
        ignore_eos=ignore_eos,
        tree_budget=tree_budget,
        head_tree=head_tree,
        ouroboros=orchestrator_pb2.OuroborosOptions(
            phrase_top_k=phrase_top_k,
            phrase_length=phrase_length,
            **{f"no_{part}": True for part in disable_parts},
        ),
        beam=common_pb2.BeamParams(
            width=beam_width,
            min_width=min_beam_width,
            threshold=width_threshold,
            length_penalty=length_penalty,
            keep_best_only=keep_best_beam,
        ),
    )
    if isinstance(prompt, str):
        req.prompt = prompt
    elif prompt and all(isinstance(m, Message) for m in prompt):
        req.messages.extend(orchestrator_pb2.ChatMessage(role=m.role, content=m.content) for m in prompt)  # type: ignore[union-attr]
    elif prompt and all(isinstance(t, int) for t in prompt):
        req.prompt_token_ids.extend(prompt)  # type: ignore[arg-type]
    elif prompt:
        raise TypeError("prompt must be a str, a list of Message, or a list of token ids")
    return req


def result_from_pb(resp: orchestrator_pb2.GenerateResponse) -> GenerationResult:
    return GenerationResult(
        text=resp.text,
        token_ids=tuple(resp.token_ids),
        method=resp.method,
        stats=GenerationStats.from_pb(resp.stats),
        session_id=resp.session_id,
        beams=_beams(resp.beams),
        peak_kv_bytes=resp.peak_kv_bytes,
    )


def _beams(msgs: Sequence[orchestrator_pb2.Beam]) -> tuple[Beam, ...]:
    return tuple(Beam(b.text, tuple(b.token_ids), b.score, b.logprob, b.finished) for b in msgs)


def event_from_pb(chunk: orchestrator_pb2.GenerateChunk) -> StreamEvent:
    return StreamEvent(
        text=chunk.text,
        token_ids=tuple(chunk.token_ids),
        done=chunk.done,
        stats=GenerationStats.from_pb(chunk.stats) if chunk.HasField("stats") else None,
        method=chunk.method,
        session_id=chunk.session_id,
        beams=_beams(chunk.beams),
    )
