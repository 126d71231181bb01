"""Draft beams of a draft LM through DraftWorker.propose_beams: batched, reordered caches stay exact.

Every layer of the forest carries the draft's sparse q per input beam; the tests recompute each
from a plain forward over that beam's whole sequence, so a wrong row in the batched cache or a
wrong reorder shows up as a different distribution.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from draft_service.service import DraftConfig, DraftWorker
from spec_decode.beam_api import BeamUpdate
from spec_decode.errors import FailedPrecondition, InvalidArgument, NotFound
from spec_decode.forest import BeamForest
from spec_decode.models import load_model
from spec_decode.sampling import truncate_top_k, warp_probs
from spec_decode.types import SamplingParams

PROMPT = [1, 504, 3458, 314, 260]
SAMPLING = SamplingParams(temperature=0.9, top_k=20, seed=7)


@pytest.fixture(scope="module")
def worker(tiny_draft: Path) -> DraftWorker:
    config = DraftConfig(draft_model=str(tiny_draft), device="cpu", dtype="float64", default_draft_top_k=6)
    return DraftWorker(config, load_model(str(tiny_draft), device="cpu", dtype="float64"))


def _check_layers(worker: DraftWorker, forest: BeamForest, beams: list[list[int]]) -> None:
    assert worker.model is not None

    def seq_of(ref: int) -> list[int]:
        return beams[-1 - ref] if ref < 0 else [*seq_of(forest.parents[ref]), forest.tokens[ref]]

    for layer in forest.layers:
        for ref, q in zip(layer.inputs, layer.q, strict=True):
            with torch.inference_mode():
                logits = worker.model.model(input_ids=torch.tensor([seq_of(ref)])).logits[0, -1]
            want = truncate_top_k(warp_probs(logits, SAMPLING), 6)
            assert q.ids == want.ids
            assert q.probs == pytest.approx(want.probs, abs=1e-9)
        for g in layer.candidates:
            assert forest.parents[g] in layer.inputs
            parent_q = layer.q[layer.inputs.index(forest.parents[g])]
            assert forest.tokens[g] in parent_q.ids  # drawn from its parent's sparse q


def test_forest_layers_carry_the_draft_distribution_of_every_beam(worker: DraftWorker) -> None:
    proposal = worker.propose_beams("a", [PROMPT], [], [0.0], depth=3, width=2, max_nodes=64, sampling=SAMPLING)
    forest = proposal.forest
    assert len(forest.layers) == 3 and forest.size == 3 * 4  # 2 * width candidates per layer
    assert len(forest.layers[1].inputs) == 2  # the draft keeps `width` beams
    _check_layers(worker, forest, [PROMPT])
    # The target's answer reorders and extends the beams: row 0 twice, each by two tokens.
    updates = [BeamUpdate(0, (17, 29), -1.0, -1.0), BeamUpdate(0, (41, 5), -2.0, -2.0)]
    forest = worker.propose_beams("a", [], updates, [-1.0, -2.0], 2, 2, 64, SAMPLING).forest
    _check_layers(worker, forest, [[*PROMPT, 17, 29], [*PROMPT, 41, 5]])
    # And again, keeping only the second beam (memory-saving DSBD carries one beam).
    forest = worker.propose_beams("a", [], [BeamUpdate(1, (8,), -3.0, -3.0)], [-3.0], 2, 3, 64, SAMPLING).forest
    _check_layers(worker, forest, [[*PROMPT, 41, 5, 8]])
    assert worker.release("a") and not worker.release("a")


def test_max_nodes_and_depth_bound_the_forest(worker: DraftWorker) -> None:
    forest = worker.propose_beams("b", [PROMPT], [], [0.0], 5, 2, 9, SAMPLING).forest
    assert forest.size <= 9 and len(forest.layers) == 2
    assert worker.propose_beams("b", [], [BeamUpdate(0, (3,), 0.0, 0.0)], [0.0], 0, 2, 9, SAMPLING).forest.size == 0
    worker.release("b")


def test_beam_requests_fail_clearly(worker: DraftWorker, tiny_draft: Path) -> None:
    with pytest.raises(NotFound, match="resend the beam contexts"):
        worker.propose_beams("nope", [], [BeamUpdate(0, (3,), 0.0, 0.0)], [0.0], 2, 2, 64, SAMPLING)
    with pytest.raises(InvalidArgument, match="one length"):
        worker.propose_beams("c", [PROMPT, PROMPT[:-1]], [], [0.0, 0.0], 2, 2, 64, SAMPLING)
    worker.propose_beams("c", [PROMPT], [], [0.0], 1, 2, 64, SAMPLING)
    with pytest.raises(InvalidArgument, match="one non-zero number of tokens"):
        uneven = [BeamUpdate(0, (3,), 0, 0), BeamUpdate(0, (3, 4), 0, 0)]
        worker.propose_beams("c", [], uneven, [0, 0], 1, 2, 64, SAMPLING)
    with pytest.raises(InvalidArgument, match="temperature"):
        worker.propose_beams("c", [PROMPT], [], [0.0], 1, 2, 64, SamplingParams())
    worker.release("c")
    model_free = DraftWorker(DraftConfig())
    with pytest.raises(FailedPrecondition, match="--draft-model"):
        model_free.propose_beams("d", [PROMPT], [], [0.0], 1, 2, 64, SAMPLING)
