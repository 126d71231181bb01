"""proto <-> dataclass for the beam methods (beam-sample, dsbd): forests, updates, params, results."""

from __future__ import annotations

from protos import common_pb2, target_pb2
from spec_decode.beam_types import BeamForest, BeamParams, BeamUpdate, BeamVerifyResult, DraftBeamLayer
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
    return common_pb2.BeamForest(
        tokens=forest.tokens,
        parents=forest.parents,
        layers=[
            common_pb2.DraftBeamLayer(
                inputs=layer.inputs,
                input_scores=layer.input_scores,
                q=[common_pb2.SparseProbs(ids=q.ids, probs=q.probs) for q in layer.q],
                candidates=layer.candidates,
            )
            for layer in forest.layers
        ],
    )


def forest_from_pb(msg: common_pb2.BeamForest) -> BeamForest:
    return BeamForest(
        tokens=tuple(msg.tokens),
        parents=tuple(msg.parents),
        layers=tuple(
            DraftBeamLayer(
                inputs=tuple(layer.inputs),
                input_scores=tuple(layer.input_scores),
                q=tuple(SparseProbs(tuple(q.ids), tuple(q.probs)) for q in layer.q),
                candidates=tuple(layer.candidates),
            )
            for layer in msg.layers
        ),
    )


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
