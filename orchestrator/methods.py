"""Decoding methods the orchestrator serves and what each needs from the drafter."""

from __future__ import annotations

from dataclasses import dataclass

from spec_decode.errors import FailedPrecondition, InvalidArgument


@dataclass(frozen=True)
class Method:
    """A decoding method: which drafter (None = target only) and its default draft length."""

    name: str
    drafter: str | None
    default_num_tokens: int
    needs_draft_model: bool = False
    description: str = ""
    beams: bool = False  # a beam method: orchestrator/beam_loop.py runs it


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("vanilla", None, 0, description="target-only autoregressive decoding (τ = 1)"),
        Method(
            "sps",
            "model",
            5,
            needs_draft_model=True,
            description="speculative sampling with a draft LM (Leviathan/Chen 2023)",
        ),
        Method("pld", "prompt_lookup", 8, description="prompt lookup decoding: n-gram matches in the context"),
        Method(
            "ouroboros",
            "ouroboros",
            8,
            description="Ouroboros phrase drafting: prompt lookup or a draft LM lengthened by a shared phrase pool "
            "that learns from verification and history (Zhao et al. 2024)",
        ),
        Method(
            "redrafter",
            "redrafter",
            4,
            description="ReDrafter: beam search over a recurrent draft head on the target's hidden state, beams "
            "packed into one tree (Zhang et al. 2024); the draft service needs --redrafter-head",
        ),
        Method(
            "hybrid",
            "hybrid",
            8,
            description="Ouroboros phrase drafts and ReDrafter beams merged into one tree per step (phrases where "
            "the text repeats, the head elsewhere); the draft service needs --redrafter-head",
        ),
        Method(
            "beam-sample",
            None,
            0,
            description="target-only beam sampling with width W (transformers' num_beams=W, do_sample=True)",
            beams=True,
        ),
        Method(
            "dsbd",
            "model",
            4,
            needs_draft_model=True,
            description="DSBD: draft-LM beams verified as a forest in one target pass, output beams follow "
            "target beam sampling; dynamic width from a threshold (Qin et al. 2024)",
            beams=True,
        ),
        Method(
            "dsbd-redrafter",
            "redrafter",
            4,
            description="DSBD with draft beams from the ReDrafter head (the target's hidden state per beam); "
            "the draft service needs --redrafter-head",
            beams=True,
        ),
    )
}


def resolve_method(name: str, *, has_draft_service: bool, draft_drafters: tuple[str, ...]) -> Method:
    """The method called ``name`` if this deployment can run it; a clear error otherwise."""
    method = METHODS.get(name or "vanilla")
    if method is None:
        raise InvalidArgument(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    if method.drafter is None:
        return method
    if not has_draft_service:
        raise FailedPrecondition(f"method {method.name!r} needs a draft service; none is configured")
    if method.drafter not in draft_drafters:
        hint = " (start the draft service with --draft-model)" if method.needs_draft_model else ""
        raise FailedPrecondition(
            f"method {method.name!r} needs drafter {method.drafter!r}, which the draft service does not "
            f"offer{hint}; it offers: {', '.join(draft_drafters) or 'none'}"
        )
    return method


def available_methods(has_draft_service: bool, draft_drafters: tuple[str, ...]) -> list[str]:
    return [
        m.name for m in METHODS.values() if m.drafter is None or (has_draft_service and m.drafter in draft_drafters)
    ]
