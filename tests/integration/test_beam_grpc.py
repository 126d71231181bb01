"""Beam methods over real gRPC servers on loopback: the same beams as in-process, bit for bit."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from testkit import stack_config

from orchestrator.request import GenerateParams
from protos import common_pb2, orchestrator_pb2, orchestrator_pb2_grpc
from spec_decode.beams import BeamParams
from spec_decode.types import SamplingParams
from specd_cli.stack import build_inprocess, start_thread_stack

PROMPT = [1000, 2000, 3000, 1000, 2000]


@pytest.fixture(scope="module")
def stub(tiny_target: Path, tiny_draft: Path):  # -> OrchestratorStub
    stack = start_thread_stack(stack_config(tiny_target, tiny_draft))
    channel = grpc.insecure_channel(stack.address)
    yield orchestrator_pb2_grpc.OrchestratorStub(channel)
    channel.close()
    stack.stop()


def _request(method: str, keep_best_only: bool = False) -> orchestrator_pb2.GenerateRequest:
    return orchestrator_pb2.GenerateRequest(
        prompt_token_ids=PROMPT,
        method=method,
        max_new_tokens=9,
        ignore_eos=True,
        num_draft_tokens=3,
        sampling=common_pb2.SamplingParams(temperature=1.0, top_k=20, seed=11, has_seed=True),
        beam=common_pb2.BeamParams(width=3, threshold=0.0, keep_best_only=keep_best_only),
    )


@pytest.mark.parametrize("method", ["beam-sample", "dsbd"])
def test_beams_over_grpc_equal_inprocess(stub, tiny_target: Path, tiny_draft: Path, method: str) -> None:
    response = stub.Generate(_request(method))
    local = build_inprocess(stack_config(tiny_target, tiny_draft)).generate(
        GenerateParams(
            prompt_token_ids=tuple(PROMPT),
            method=method,
            max_new_tokens=9,
            ignore_eos=True,
            num_draft_tokens=3,
            sampling=SamplingParams(temperature=1.0, top_k=20, seed=11),
            beam=BeamParams(width=3),
        )
    )
    assert [tuple(b.token_ids) for b in response.beams] == [b.token_ids for b in local.beams]
    assert [b.logprob for b in response.beams] == pytest.approx([b.logprob for b in local.beams], abs=1e-9)
    assert tuple(response.token_ids) == local.token_ids and response.text == local.text
    assert response.stats.target_steps == local.stats.target_steps
    assert response.peak_kv_bytes == local.peak_kv_bytes > 0


def test_streamed_beams_arrive_in_the_last_chunk(stub) -> None:
    chunks = list(stub.GenerateStream(_request("dsbd", keep_best_only=True)))
    assert chunks[-1].done and len(chunks[-1].beams) == 1
    assert [t for c in chunks for t in c.token_ids] == list(chunks[-1].beams[0].token_ids)


def test_beam_errors_reach_the_client_as_statuses(stub) -> None:
    bad = _request("dsbd")
    bad.beam.min_width = 5
    with pytest.raises(grpc.RpcError) as info:
        stub.Generate(bad)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "min beam width" in info.value.details()


def test_forest_round_trips_through_its_flat_wire_form() -> None:
    from protos.beam_convert import forest_from_pb, forest_to_pb
    from spec_decode.errors import InvalidArgument
    from spec_decode.forest import BeamForest, DraftBeamLayer
    from spec_decode.types import SparseProbs

    q = SparseProbs((5, 9), (0.75, 0.25))
    forest = BeamForest(
        (5, 9, 7),
        (-1, -2, 0),
        (
            DraftBeamLayer((-1, -2), (0.0, -1.5), (q, SparseProbs((9,), (1.0,))), (1, 0)),
            DraftBeamLayer((0,), (-0.3,), (SparseProbs((7, 8, 2), (0.5, 0.25, 0.25)),), (2,)),
        ),
    )
    assert forest_from_pb(forest_to_pb(forest)) == forest
    broken = forest_to_pb(forest)
    del broken.q_probs[-1]
    with pytest.raises(InvalidArgument, match="q_ids/q_probs"):
        forest_from_pb(broken)
