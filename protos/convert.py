"""Converters between protobuf messages and spec_decode dataclasses (the wire seam).

Servicers and gRPC clients use these; domain code never sees a protobuf message.
"""

from __future__ import annotations

import dataclasses

from protos import common_pb2, draft_pb2, orchestrator_pb2, target_pb2
from spec_decode.types import (
    Acceptance,
    ColocatedDraft,
    DraftInfo,
    DraftOptions,
    DraftTree,
    GenerationStats,
    PhaseTimes,
    SamplingParams,
    SparseProbs,
    TargetInfo,
    TargetLimits,
    VerifyResult,
    VocabInfo,
)


def sampling_from_pb(msg: common_pb2.SamplingParams) -> SamplingParams:
    return SamplingParams(
        temperature=msg.temperature,
        top_k=msg.top_k,
        top_p=msg.top_p if msg.top_p != 0.0 else 1.0,
        seed=msg.seed if msg.has_seed else None,
    )


def sampling_to_pb(params: SamplingParams) -> common_pb2.SamplingParams:
    return common_pb2.SamplingParams(
        temperature=params.temperature,
        top_k=params.top_k,
        top_p=params.top_p,
        seed=params.seed or 0,
        has_seed=params.seed is not None,
    )


def tree_from_pb(msg: common_pb2.DraftTree) -> DraftTree:
    return DraftTree(
        tokens=tuple(msg.tokens),
        parents=tuple(msg.parents),
        draft_probs=tuple(SparseProbs(tuple(q.ids), tuple(q.probs)) for q in msg.draft_probs),
    )


def tree_to_pb(tree: DraftTree) -> common_pb2.DraftTree:
    return common_pb2.DraftTree(
        tokens=tree.tokens,
        parents=tree.parents,
        draft_probs=[common_pb2.SparseProbs(ids=q.ids, probs=q.probs) for q in tree.draft_probs],
    )


def vocab_to_pb(vocab: VocabInfo | None) -> common_pb2.VocabInfo:
    if vocab is None:
        return common_pb2.VocabInfo()
    return common_pb2.VocabInfo(
        model=vocab.model,
        fingerprint=vocab.fingerprint,
        vocab_size=vocab.vocab_size,
        eos_token_ids=vocab.eos_token_ids,
    )


def vocab_from_pb(msg: common_pb2.VocabInfo) -> VocabInfo | None:
    if not msg.fingerprint:
        return None
    return VocabInfo(msg.model, msg.fingerprint, msg.vocab_size, tuple(msg.eos_token_ids))


def target_info_to_pb(info: TargetInfo) -> target_pb2.TargetInfo:
    return target_pb2.TargetInfo(
        vocab=vocab_to_pb(info.vocab),
        device=info.device,
        dtype=info.dtype,
        max_sessions=info.limits.max_sessions,
        max_tree_nodes=info.limits.max_tree_nodes,
        max_context=info.limits.max_context,
        active_sessions=info.active_sessions,
        max_draft_top_k=info.limits.max_draft_top_k,
        hidden_size=info.hidden_size,
        draft_head=info.draft_head,
        colocated_drafters=list(info.colocated_drafters),
    )


def target_info_from_pb(msg: target_pb2.TargetInfo) -> TargetInfo:
    vocab = vocab_from_pb(msg.vocab)
    if vocab is None:
        raise ValueError("target service reported no vocabulary")
    limits = TargetLimits(msg.max_sessions, msg.max_tree_nodes, msg.max_context, msg.max_draft_top_k)
    return TargetInfo(
        vocab,
        msg.device,
        msg.dtype,
        limits,
        msg.active_sessions,
        msg.hidden_size,
        msg.draft_head,
        tuple(msg.colocated_drafters),
    )


def verify_to_pb(result: VerifyResult) -> target_pb2.VerifyResponse:
    acc = result.acceptance
    return target_pb2.VerifyResponse(
        accepted_tokens=acc.tokens,
        accepted_nodes=acc.path,
        next_token=acc.next_token,
        bonus=acc.bonus,
        context_len=result.context_len,
        compute_ms=result.compute_s * 1e3,
        target_tokens=result.target_tokens,
        hidden_state=result.hidden_state,
        next_tree=None if result.next_tree is None else tree_to_pb(result.next_tree),
    )


def verify_from_pb(msg: target_pb2.VerifyResponse) -> VerifyResult:
    acc = Acceptance(tuple(msg.accepted_nodes), tuple(msg.accepted_tokens), msg.next_token, msg.bonus)
    next_tree = tree_from_pb(msg.next_tree) if msg.HasField("next_tree") else None
    return VerifyResult(
        acc, msg.context_len, msg.compute_ms / 1e3, tuple(msg.target_tokens), msg.hidden_state, next_tree
    )


def colocated_draft_to_pb(spec: ColocatedDraft | None) -> target_pb2.ColocatedDraft | None:
    if spec is None:
        return None
    return target_pb2.ColocatedDraft(
        width=spec.width,
        length=spec.length,
        max_nodes=spec.max_nodes,
        top_k=spec.top_k,
        drafter=spec.drafter,
        max_ngram=spec.max_ngram,
        min_ngram=spec.min_ngram,
        tree=spec.tree,
    )


def colocated_draft_from_pb(msg: target_pb2.ColocatedDraft, present: bool) -> ColocatedDraft | None:
    if not present:
        return None
    return ColocatedDraft(
        msg.width,
        msg.length,
        msg.max_nodes,
        msg.top_k or 50,
        msg.drafter or "redrafter",
        msg.max_ngram or 3,
        msg.min_ngram or 1,
        msg.tree,
    ).validate()


_OPTION_FIELDS = tuple(f.name for f in dataclasses.fields(DraftOptions))


def draft_options_to_pb(opts: DraftOptions) -> draft_pb2.DraftOptions:
    return draft_pb2.DraftOptions(**{name: getattr(opts, name) for name in _OPTION_FIELDS})


def draft_options_from_pb(msg: draft_pb2.DraftOptions) -> DraftOptions:
    return DraftOptions(**{name: getattr(msg, name) for name in _OPTION_FIELDS})


def draft_info_to_pb(info: DraftInfo) -> draft_pb2.DraftInfo:
    return draft_pb2.DraftInfo(
        vocab=vocab_to_pb(info.vocab),
        drafters=info.drafters,
        device=info.device,
        max_sessions=info.max_sessions,
        active_sessions=info.active_sessions,
        phrase_store=info.phrase_store,
    )


def draft_info_from_pb(msg: draft_pb2.DraftInfo) -> DraftInfo:
    return DraftInfo(
        vocab_from_pb(msg.vocab),
        tuple(msg.drafters),
        msg.device,
        msg.max_sessions,
        msg.active_sessions,
        msg.phrase_store,
    )


def stats_to_pb(stats: GenerationStats) -> orchestrator_pb2.GenerationStats:
    ph = stats.phases
    return orchestrator_pb2.GenerationStats(
        prompt_tokens=stats.prompt_tokens,
        new_tokens=stats.new_tokens,
        target_steps=stats.target_steps,
        draft_tokens=stats.draft_tokens,
        accepted_tokens=stats.accepted_tokens,
        tau=stats.tau,
        acceptance_rate=stats.acceptance_rate,
        wall_s=stats.wall_s,
        tokens_per_s=stats.tokens_per_s,
        phases=orchestrator_pb2.PhaseTimes(
            draft_s=ph.draft_s,
            verify_s=ph.verify_s,
            orchestrate_s=ph.orchestrate_s,
            network_s=ph.network_s,
            prefill_s=ph.prefill_s,
        ),
        accepted_length_histogram=stats.accepted_length_histogram,
        finish_reason=stats.finish_reason,
        drafter_switches=stats.drafter_switches,
        draft_timeouts=stats.draft_timeouts,
        target_rebuilds=stats.target_rebuilds,
    )


def stats_from_pb(msg: orchestrator_pb2.GenerationStats) -> GenerationStats:
    ph = msg.phases
    return GenerationStats(
        prompt_tokens=msg.prompt_tokens,
        new_tokens=msg.new_tokens,
        target_steps=msg.target_steps,
        draft_tokens=msg.draft_tokens,
        accepted_tokens=msg.accepted_tokens,
        wall_s=msg.wall_s,
        phases=PhaseTimes(ph.prefill_s, ph.draft_s, ph.verify_s, ph.orchestrate_s, ph.network_s),
        accepted_length_histogram=tuple(msg.accepted_length_histogram),
        finish_reason=msg.finish_reason,
        drafter_switches=msg.drafter_switches,
        draft_timeouts=msg.draft_timeouts,
        target_rebuilds=msg.target_rebuilds,
    )
