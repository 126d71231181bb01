"""The hidden state a draft head drafts from: right position, compact on the wire, both engines."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from target_helpers import MakeVerifier, greedy_reference

from orchestrator.transports import GrpcTargetClient
from spec_decode.hidden import hidden_bytes, hidden_from_bytes
from spec_decode.models import LoadedModel
from spec_decode.types import DraftTree, SamplingParams
from target_service.server import serve_target

GREEDY = SamplingParams()


@torch.inference_mode()
def hf_hidden(model: Any, tokens: list[int]) -> torch.Tensor:
    """transformers' final (normed) hidden state after the last of ``tokens``: ``[E]``."""
    out = model(input_ids=torch.tensor([tokens]), output_hidden_states=True)
    return out.hidden_states[-1][0, -1].to(torch.float32)


def close_fp16(got: bytes, want: torch.Tensor) -> None:
    assert len(got) == 2 * want.numel()  # float16: never vocabulary-sized
    torch.testing.assert_close(hidden_from_bytes(got), want.to(torch.float16).float(), atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("engine", ["native", "hf"])
def test_prefill_and_verify_return_the_state_before_the_pending_token(
    make_verifier: MakeVerifier, target64: LoadedModel, engine: str
) -> None:
    verifier = make_verifier(engine=engine)  # type: ignore[arg-type]
    assert verifier.engine.kind == engine
    prompt = [11, 22, 33, 44, 55]
    result = verifier.prefill("s", prompt, GREEDY, return_hidden_state=True)
    close_fp16(result.hidden_state, hf_hidden(target64.model, prompt[:-1]))  # its output is the pending token
    assert verifier.info().hidden_size * 2 == len(result.hidden_state)
    ref = greedy_reference(target64.model, prompt, 4)
    # Accept two tokens of a three-node chain: the state is the one at the last accepted row.
    tree = DraftTree.chain([ref[0], ref[1], ref[2] + 1])
    verified = verifier.verify("s", tree, return_hidden_state=True)
    assert verified.acceptance.path == (0, 1) and verified.acceptance.next_token == ref[2]
    close_fp16(verified.hidden_state, hf_hidden(target64.model, [*prompt, ref[0], ref[1]]))
    # Nothing accepted: the state at the pending token's row.
    missed = verifier.verify("s", DraftTree.chain([ref[3] + 1]), return_hidden_state=True)
    assert missed.acceptance.path == ()
    close_fp16(missed.hidden_state, hf_hidden(target64.model, [*prompt, *ref[:3]]))
    assert verifier.verify("s", DraftTree.chain([1])).hidden_state == b""  # only when asked
    assert verifier.prefill("one", [7], GREEDY, return_hidden_state=True).hidden_state == b""  # nothing fed yet


def test_hidden_state_over_grpc(make_verifier: MakeVerifier, target64: LoadedModel) -> None:
    verifier = make_verifier()
    handle = serve_target(verifier)
    client = GrpcTargetClient(f"127.0.0.1:{handle.port}")
    try:
        assert client.info().hidden_size == target64.model.config.hidden_size
        prompt = [5, 6, 7, 8]
        result = client.prefill("g", prompt, GREEDY, return_hidden_state=True)
        close_fp16(result.hidden_state, hf_hidden(target64.model, prompt[:-1]))
        verified = client.verify("g", DraftTree.chain([9]), return_hidden_state=True)
        assert len(verified.hidden_state) == 2 * target64.model.config.hidden_size
    finally:
        client.close()
        handle.stop(0)


def test_bytes_round_trip() -> None:
    row = torch.tensor([1.0, -2.5, 0.333, 65504.0])
    assert hidden_from_bytes(hidden_bytes(row)).tolist() == row.to(torch.float16).float().tolist()
