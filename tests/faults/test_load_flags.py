"""The load flags of the orchestrator refuse nonsense before anything starts."""

from __future__ import annotations

import pytest

from orchestrator.service import Admission, OrchestratorConfig
from spec_decode.errors import InvalidArgument, ResourceExhausted
from specd_cli.main import main


def test_draft_timeout_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["orchestrator", "--draft-timeout-ms", "0", "--target-address", "127.0.0.1:1", "--wait", "0.1"])
    assert code == 2
    assert "--draft-timeout-ms must be > 0" in capsys.readouterr().err


def test_negative_request_cap_refused() -> None:
    with pytest.raises(InvalidArgument, match="max_concurrent_requests"):
        OrchestratorConfig(max_concurrent_requests=-1).validate()


def test_admission_refuses_beyond_the_cap_and_frees_slots() -> None:
    admission = Admission(2)
    first, second = admission.slot(), admission.slot()
    first.__enter__()
    second.__enter__()
    with pytest.raises(ResourceExhausted, match="cap of 2 requests"), admission.slot():
        pass
    second.__exit__(None, None, None)
    first.__exit__(None, None, None)
    with admission.slot(), admission.slot():  # both slots came back
        pass
    unlimited = Admission(0)
    with unlimited.slot(), unlimited.slot(), unlimited.slot():
        pass
