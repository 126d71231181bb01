"""proto <-> dataclass for the beam methods (beam-sample, dsbd): forests, updates, params, results."""

from __future__ import annotations

from protos import common_pb2, target_pb2
from spec_decode.beam_types import BeamForest, BeamParams, BeamUpdate, BeamVerifyResult, DraftBeamLayer
from spec_decode.errors import InvalidArgument
from spec_decode.types import SparseProbs

_DEFAULT = BeamParams()


def beam_params_to_pb(params: BeamParams) -> common_pb2.BeamParams:
    return common_pb2.BeamParams(
        width=params.width,
        min_width=params.min_width,
        threshold=params.threshold,
        length_penalty=params.length_penalty,
        keep_best_only=params.keep_best_only,
    )


def beam_params_from_pb(msg: common_pb2.BeamParams) -> BeamParams:
    """Zero values mean the defaults (width 4, min width 1, threshold 0, length penalty 1)."""
    return BeamParams(
        width=msg.width or _DEFAULT.width,
        min_width=msg.min_width or _DEFAULT.min_width,
        threshold=msg.threshold,
        length_penalty=msg.length_penalty if msg.HasField("length_penalty") else _DEFAULT.length_penalty,
        keep_best_only=msg.keep_best_only,
    )


def forest_to_pb(forest: BeamForest) -> common_pb2.BeamForest:
    """The forest with its layers flattened into parallel lists (see protos/common.proto)."""
    layers = forest.layers
    return common_pb2.BeamForest(
        tokens=forest.tokens,
        parents=forest.parents,
        layer_inputs=[len(layer.inputs) for layer in layers],
        layer_candidates=[len(layer.candidates) for layer in layers],
        inputs=[ref for layer in layers for ref in layer.inputs],
        input_scores=[score for layer in layers for score in layer.input_scores],
        q_sizes=[len(q.ids) for layer in layers for q in layer.q],
        q_ids=[t for layer in layers for q in layer.q for t in q.ids],
        q_probs=[p for layer in layers for q in layer.q for p in q.probs],
        candidates=[g for layer in layers for g in layer.candidates],
    )


def forest_from_pb(msg: common_pb2.BeamForest) -> BeamForest:
    """Rebuild the layers; lists whose lengths do not add up raise InvalidArgument."""
    n_inputs, n_cands, sizes = list(msg.layer_inputs), list(msg.layer_candidates), list(msg.q_sizes)
    if len(n_inputs) != len(n_cands) or min([*n_inputs, *n_cands, *sizes], default=0) < 0:
        raise InvalidArgument("beam forest: layer_inputs and layer_candidates must be counts, one per layer")
    if not sum(n_inputs) == len(msg.inputs) == len(msg.input_scores) == len(sizes):
        raise InvalidArgument("beam forest: inputs, input_scores and q_sizes must hold sum(layer_inputs) entries")
    if sum(n_cands) != len(msg.candidates) or not sum(sizes) == len(msg.q_ids) == len(msg.q_probs):
        raise InvalidArgument("beam forest: candidates or q_ids/q_probs do not match their counts")
    layers = []
    i = c = q = 0
    for count, cands in zip(n_inputs, n_cands, strict=True):
        qs = []
        for size in sizes[i : i + count]:
            qs.append(SparseProbs(tuple(msg.q_ids[q : q + size]), tuple(msg.q_probs[q : q + size])))
            q += size
        layers.append(
            DraftBeamLayer(
                tuple(msg.inputs[i : i + count]),
                tuple(msg.input_scores[i : i + count]),
                tuple(qs),
                tuple(msg.candidates[c : c + cands]),
            )
        )
        i, c = i + count, c + cands
    return BeamForest(tuple(msg.tokens), tuple(msg.parents), tuple(layers))


def update_to_pb(update: BeamUpdate) -> common_pb2.BeamUpdate:
    return common_pb2.BeamUpdate(parent=update.parent, tokens=update.tokens, score=update.score, logprob=update.logprob)


def update_from_pb(msg: common_pb2.BeamUpdate) -> BeamUpdate:
    return BeamUpdate(msg.parent, tuple(msg.tokens), msg.score, msg.logprob)


def beam_verify_to_pb(result: BeamVerifyResult) -> target_pb2.BeamVerifyResponse:
    return target_pb2.BeamVerifyResponse(
        beams=[update_to_pb(u) for u in result.beams],
        finished=[update_to_pb(u) for u in result.finished],
        widths=result.widths,
        accepted=result.accepted,
        drafted=result.drafted,
        compute_s=result.compute_s,
        kv_bytes=result.kv_bytes,
        hidden_states=result.hidden_states,
    )


def beam_verify_from_pb(msg: target_pb2.BeamVerifyResponse) -> BeamVerifyResult:
    return BeamVerifyResult(
        beams=tuple(update_from_pb(u) for u in msg.beams),
        finished=tuple(update_from_pb(u) for u in msg.finished),
        widths=tuple(msg.widths),
        accepted=msg.accepted,
        drafted=msg.drafted,
        compute_s=msg.compute_s,
        kv_bytes=msg.kv_bytes,
        hidden_states=tuple(msg.hidden_states),
    )
