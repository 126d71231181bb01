"""Target-service fixtures: the tiny target in float64 (no float ties can flip an argmax)."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from target_helpers import MakeVerifier
from testkit import snap_linears_to_q4_1

from spec_decode.models import LoadedModel, load_model
from target_service.verifier import TargetConfig, TargetVerifier


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread (and do not fight other processes for the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def target64(tiny_target: Path) -> LoadedModel:
    """The tiny random Llama target, float64 weights, on CPU."""
    return load_model(str(tiny_target), device="cpu", dtype="float64")


@pytest.fixture
def make_verifier(target64: LoadedModel, tiny_target: Path) -> MakeVerifier:
    """Build a fresh verifier (empty session table) over the shared float64 model."""

    def make(**limits: int) -> TargetVerifier:
        return TargetVerifier(target64, TargetConfig(model=str(tiny_target), device="cpu", dtype="float64", **limits))

    return make


@pytest.fixture
def verifier(make_verifier: MakeVerifier) -> TargetVerifier:
    return make_verifier()


@pytest.fixture(scope="module")
def q4_target(tiny_target: Path) -> LoadedModel:
    """The tiny target (fp32) with every linear weight snapped to a Q4_1 grid, like a GGUF checkpoint."""
    loaded = load_model(str(tiny_target), device="cpu", dtype="float32")
    model = copy.deepcopy(loaded.model)
    snap_linears_to_q4_1(model)
    return LoadedModel(model, loaded.tokenizer, loaded.vocab, loaded.device, loaded.dtype)
