"""The ``specd`` CLI as a user runs it: separate processes, JSON output, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from testkit import greedy_reference

from specd_cli.demo import free_port
from specd_cli.stack import start_process_stack

SPECD = [sys.executable, "-m", "specd_cli.main"]


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SPECD, *args], capture_output=True, text=True, timeout=timeout, check=False)


def _prompt_ids(model_dir, text: str) -> list[int]:
    from transformers import AutoTokenizer

    from orchestrator.request import GenerateParams
    from orchestrator.text import prompt_tokens

    return prompt_tokens(AutoTokenizer.from_pretrained(str(model_dir)), GenerateParams(prompt=text))


@pytest.fixture(scope="module")
def process_stack(tiny_target, tiny_draft, tmp_path_factory):
    stack = start_process_stack(
        target=str(tiny_target),
        draft_model=str(tiny_draft),
        port=free_port(),
        target_port=free_port(),
        draft_port=free_port(),
        device="cpu",
        log_dir=tmp_path_factory.mktemp("logs"),
        timeout=120,
    )
    yield stack
    stack.stop()
    assert not any(stack.alive().values())


def test_generate_json_over_process_stack(process_stack, tiny_target):
    out = _run(
        "generate",
        "Why is the sea salty?",
        "--address",
        process_stack.address,
        "--method",
        "sps",
        "--max-new-tokens",
        "12",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    payload = json.loads(out.stdout)
    assert {"text", "token_ids", "method", "stats"} <= payload.keys()
    for key in ("target_steps", "tau", "tokens_per_s", "wall_s"):
        assert key in payload["stats"]
    assert payload["method"] == "sps"
    expected = greedy_reference(tiny_target, _prompt_ids(tiny_target, "Why is the sea salty?"), 12, torch.float32)
    assert payload["token_ids"] == expected


def test_refused_call_exits_nonzero_with_status(process_stack):
    out = _run("generate", "hi", "--address", process_stack.address, "--temperature", "-2")
    assert out.returncode != 0
    assert "INVALID_ARGUMENT" in out.stderr and "temperature" in out.stderr


def test_stream_text_over_process_stack(process_stack):
    out = _run(
        "generate", "Say something", "--address", process_stack.address, "--method", "pld", "--max-new-tokens", "6"
    )
    assert out.returncode == 0, out.stderr
    assert "τ" in out.stderr and "target steps" in out.stderr


def test_generate_inprocess_json(tiny_target):
    out = _run(
        "generate",
        "Hello",
        "--target",
        str(tiny_target),
        "--device",
        "cpu",
        "--max-new-tokens",
        "6",
        "--method",
        "pld",
        "--json",
    )
    assert out.returncode == 0, out.stderr
    payload = json.loads(out.stdout)
    assert payload["stats"]["target_steps"] >= 1 and len(payload["token_ids"]) == 6


def test_unknown_method_inprocess_exits_nonzero(tiny_target):
    out = _run("generate", "Hello", "--target", str(tiny_target), "--device", "cpu", "--method", "nope")
    assert out.returncode == 1 and "INVALID_ARGUMENT" in out.stderr and "unknown method" in out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("method", ["vanilla", "pld"])
def test_smollm2_generate_equals_transformers_greedy(smollm2_dir, method):
    """The real default target: `specd generate` greedy == transformers greedy, token for token."""
    prompt = "List the first five prime numbers and explain what a prime number is."
    out = _run("generate", prompt, "--method", method, "--max-new-tokens", "40", "--json")
    assert out.returncode == 0, out.stderr
    payload = json.loads(out.stdout)
    expected = greedy_reference(smollm2_dir, _prompt_ids(smollm2_dir, prompt), 40, torch.float32)
    assert payload["token_ids"] == expected
    assert payload["stats"]["target_steps"] <= 40


def test_specd_up_serves_and_stops_on_sigterm(tiny_target, tmp_path):
    """`specd up` keeps three processes up, answers through --address, and SIGTERM stops them all."""
    import os
    import signal
    import time

    port, tport, dport = free_port(), free_port(), free_port()
    env = {**os.environ, "SPECD_LOG_DIR": str(tmp_path)}
    up = subprocess.Popen(
        [*SPECD, "up", "--target", str(tiny_target), "--device", "cpu", "--port", str(port),
         "--target-port", str(tport), "--draft-port", str(dport)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    try:
        assert up.stdout is not None
        line = up.stdout.readline()
        deadline = time.monotonic() + 180
        while "specd is up" not in line and time.monotonic() < deadline and up.poll() is None:
            line = up.stdout.readline()
        assert "specd is up" in line, line
        out = _run("generate", "Hi", "--address", f"127.0.0.1:{port}", "--max-new-tokens", "4", "--json")
        assert out.returncode == 0, out.stderr
        assert len(json.loads(out.stdout)["token_ids"]) == 4
        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0
        refused = _run("generate", "Hi", "--address", f"127.0.0.1:{port}", "--max-new-tokens", "4", "--timeout", "3")
        assert refused.returncode != 0 and "UNAVAILABLE" in refused.stderr
    finally:
        if up.poll() is None:
            up.kill()
