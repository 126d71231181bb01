"""The CLI contract: ``specd up --api-key-file FILE --port PORT`` (plus TLS flags) protects the
stack; ``specd generate --address --api-key --tls-ca`` gets in with the right key, and a refused
call exits non-zero printing the gRPC status name and message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from protos.security import PeerTls
from protos.serving import wait_healthy
from security.helpers import KEY_A, write_keys
from specd_cli.demo import free_port

SPECD = [sys.executable, "-m", "specd_cli.main"]


def _run(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "SPECD_API_KEY"} | env
    return subprocess.run([*SPECD, *args], capture_output=True, text=True, timeout=timeout, check=False, env=full_env)


@pytest.fixture(scope="module")
def secure_up(tiny_target: Path, tiny_draft: Path, pki, tmp_path_factory: pytest.TempPathFactory):
    """``specd up`` with API keys and TLS at the front door, mutual TLS between the services."""
    tmp = tmp_path_factory.mktemp("up")
    keys = write_keys(tmp / "api-keys", KEY_A)
    port = free_port()
    cmd = [
        *SPECD, "up", "--target", str(tiny_target), "--draft-model", str(tiny_draft), "--device", "cpu",
        "--port", str(port), "--target-port", str(free_port()), "--draft-port", str(free_port()),
        "--api-key-file", str(keys),
        "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key), "--tls-client-ca", str(pki.ca),
        "--peer-ca", str(pki.ca), "--peer-cert", str(pki.client_cert), "--peer-key", str(pki.client_key),
    ]  # fmt: skip
    log = open(tmp / "up.log", "wb")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"SPECD_LOG_DIR": str(tmp)})
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"specd up exited with {proc.returncode}:\n{(tmp / 'up.log').read_text()}")
            try:
                wait_healthy(address, 2.0, tls=PeerTls.from_files(pki.ca))
                break
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise
        yield address
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def test_generate_with_and_without_the_key(secure_up, pki):
    tls = ("--tls-ca", str(pki.ca))
    ok = _run("generate", "Hi", "--address", secure_up, "--api-key", KEY_A, *tls, "--max-new-tokens", "4", "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["stats"]["new_tokens"] > 0

    wrong = _run("generate", "Hi", "--address", secure_up, "--api-key", "sk-wrong", *tls)
    assert wrong.returncode != 0
    assert "error: UNAUTHENTICATED: invalid API key" in wrong.stderr

    from_env = _run("generate", "Hi", "--address", secure_up, *tls, "--max-new-tokens", "2", SPECD_API_KEY=KEY_A)
    assert from_env.returncode == 0, from_env.stderr


def test_up_refuses_a_bad_key_file_before_starting(tmp_path):
    out = _run("up", "--target", "unused", "--api-key-file", str(tmp_path / "absent"), "--port", str(free_port()))
    assert out.returncode == 2
    assert "specd: error: API key file" in out.stderr and "cannot be read" in out.stderr
