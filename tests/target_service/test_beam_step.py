"""The target's beam step on the tiny float64 target: forked and committed KV caches stay exact.

Every beam reports its raw target log-probability; the tests recompute it with a plain
transformers forward over the beam's whole sequence, so a wrong fork, commit or row mapping in
the beam caches shows up as a different number.
"""

from __future__ import annotations

import pytest
import torch
from target_helpers import MakeVerifier

from spec_decode.beam_api import BeamUpdate
from spec_decode.beams import BeamParams
from spec_decode.errors import InvalidArgument
from spec_decode.forest import EMPTY_FOREST, BeamForest, draft_forest
from spec_decode.sampling import warp_probs
from spec_decode.types import EMPTY_TREE, SamplingParams, SparseProbs
from target_service.verifier import TargetVerifier

PROMPT = [1, 504, 3458, 314, 260, 2114]
SAMPLING = SamplingParams(temperature=1.0, top_k=8, seed=3)


def _logprob(model: object, prompt: list[int], tokens: list[int]) -> float:
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([prompt + tokens])).logits[0]  # type: ignore[operator]
    logp = torch.log_softmax(logits.to(torch.float64), dim=-1)  # [L, V]
    return float(sum(logp[len(prompt) - 1 + i, t] for i, t in enumerate(tokens)))


class Beams:
    """The orchestrator's view: every beam's tokens, rebuilt from the target's updates."""

    def __init__(self) -> None:
        self.seqs: list[list[int]] = [[]]

    def apply(self, updates: tuple[BeamUpdate, ...]) -> None:
        self.seqs = [self.seqs[u.parent] + list(u.tokens) for u in updates]


def _self_draft(verifier: TargetVerifier, beams: Beams, scores: list[float], depth: int, width: int) -> BeamForest:
    """A forest drafted by the target model itself (q = p), through plain transformers forwards."""
    model = verifier.loaded.model

    def seq_of(ref: int, forest: BeamForest) -> list[int]:
        if ref < 0:
            return PROMPT + beams.seqs[-1 - ref]
        return [*seq_of(forest.parents[ref], forest), forest.tokens[ref]]

    def next_q(refs: list[int], forest: BeamForest) -> list[SparseProbs]:
        out = []
        for ref in refs:
            with torch.inference_mode():
                logits = model(input_ids=torch.tensor([seq_of(ref, forest)])).logits[0, -1]
            p = warp_probs(logits, SAMPLING)
            keep = p > 0
            out.append(SparseProbs(tuple(keep.nonzero().flatten().tolist()), tuple(p[keep].tolist())))
        return out

    return draft_forest(scores, next_q, depth, width, (), torch.Generator().manual_seed(4), 64)


@pytest.mark.parametrize("engine", ["native", "hf"])
def test_beam_sample_steps_keep_exact_caches(make_verifier: MakeVerifier, engine: str) -> None:
    verifier = make_verifier(engine=engine)  # type: ignore[arg-type]
    verifier.prefill("s", PROMPT, SAMPLING)
    beams = Beams()
    for step in range(4):
        result = verifier.beam_verify("s", EMPTY_FOREST, BeamParams(width=3), ())
        assert all(len(u.tokens) == 1 for u in result.beams) and result.widths == (3,)
        beams.apply(result.beams)
        assert len(beams.seqs) == 3 and all(len(s) == step + 1 for s in beams.seqs)
        scores = [u.score for u in result.beams]
        assert scores == sorted(scores, reverse=True)
    for seq, update in zip(beams.seqs, result.beams, strict=True):
        assert update.logprob == pytest.approx(_logprob(verifier.loaded.model, PROMPT, seq), abs=1e-8)
        # With top-k 8 warping the sampling score is the log-prob under the renormalised top 8.
        assert update.score >= update.logprob


def test_dsbd_step_with_a_perfect_draft_accepts_every_layer(make_verifier: MakeVerifier) -> None:
    verifier = make_verifier()
    verifier.prefill("s", PROMPT, SAMPLING)
    beams = Beams()
    scores = [0.0]
    for _ in range(2):
        forest = _self_draft(verifier, beams, scores, depth=2, width=2)
        result = verifier.beam_verify("s", forest, BeamParams(width=2), ())
        assert result.accepted == result.drafted > 0
        assert len(result.widths) == 3  # two drafted layers and the bonus layer, in one pass
        beams.apply(result.beams)
        scores = [u.score for u in result.beams]
    assert all(len(s) == 6 for s in beams.seqs)
    for seq, update in zip(beams.seqs, result.beams, strict=True):
        assert update.logprob == pytest.approx(_logprob(verifier.loaded.model, PROMPT, seq), abs=1e-8)


def test_memory_saving_variant_keeps_one_beam_with_the_kv_of_one_sequence(make_verifier: MakeVerifier) -> None:
    verifier = make_verifier()
    verifier.prefill("wide", PROMPT, SAMPLING)
    verifier.prefill("best", PROMPT, SAMPLING)
    verifier.prefill("plain", PROMPT, SAMPLING)
    for _ in range(3):
        wide = verifier.beam_verify("wide", EMPTY_FOREST, BeamParams(width=4), ())
        best = verifier.beam_verify("best", EMPTY_FOREST, BeamParams(width=4, keep_best_only=True), ())
        verifier.verify("plain", EMPTY_TREE)  # one token per step, like the beams
    assert len(wide.beams) == 4 and len(best.beams) == 1
    plain_bytes = verifier.sessions.kv_bytes("plain")
    assert best.kv_bytes == plain_bytes == verifier.sessions.kv_bytes("best")
    assert wide.kv_bytes == 4 * plain_bytes


def test_beam_step_errors_name_the_problem(make_verifier: MakeVerifier) -> None:
    verifier = make_verifier()
    verifier.prefill("g", PROMPT, SamplingParams())
    with pytest.raises(InvalidArgument, match="temperature"):
        verifier.beam_verify("g", EMPTY_FOREST, BeamParams(width=2), ())
    verifier.prefill("s", PROMPT, SAMPLING)
    bad = BeamForest((5,), (-3,), ())
    with pytest.raises(InvalidArgument, match="parent -3"):
        verifier.beam_verify("s", bad, BeamParams(width=2), ())
    # The failed call left the session usable.
    assert len(verifier.beam_verify("s", EMPTY_FOREST, BeamParams(width=2), ()).beams) == 2


def test_hidden_states_are_the_rows_that_predicted_each_pending_token(make_verifier: MakeVerifier) -> None:
    from spec_decode.hidden import hidden_from_bytes

    verifier = make_verifier()
    verifier.prefill("s", PROMPT, SAMPLING)
    beams = Beams()
    scores = [0.0]
    for _ in range(2):
        forest = _self_draft(verifier, beams, scores, depth=1, width=2)
        result = verifier.beam_verify("s", forest, BeamParams(width=2), (), return_hidden_states=True)
        beams.apply(result.beams)
        scores = [u.score for u in result.beams]
        assert len(result.hidden_states) == len(result.beams)
        for seq, hidden in zip(beams.seqs, result.hidden_states, strict=True):
            with torch.inference_mode():
                out = verifier.loaded.model(input_ids=torch.tensor([PROMPT + seq]), output_hidden_states=True)
            want = out.hidden_states[-1][0, -2]  # [E] final normed state at the token before the pending one
            torch.testing.assert_close(hidden_from_bytes(hidden).to(torch.float64), want, atol=2e-3, rtol=2e-3)
