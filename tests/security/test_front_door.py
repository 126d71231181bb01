"""The orchestrator's front door over real gRPC: API keys, key rotation, per-key rate, TLS,
request limits; and the whole stack with mutual TLS inside gives the plain stack's output."""

from __future__ import annotations

import logging
import os
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from orchestrator.auth import INVALID_KEY, MISSING_KEY, AuthConfig, AuthConfigError, parse_keys
from orchestrator.service import OrchestratorConfig
from orchestrator.servicer import SERVICE_NAME
from protos import orchestrator_pb2, orchestrator_pb2_grpc
from protos.security import PeerTls, TlsConfig, open_channel
from security.helpers import KEY_A, KEY_B, write_keys
from specd_client import (
    AsyncSpecdClient,
    InvalidArgumentError,
    ResourceExhaustedError,
    SpecdClient,
    UnauthenticatedError,
    UnavailableError,
)


def _secure_client(stacks, pki, api_key: str | None = KEY_A) -> SpecdClient:
    return SpecdClient(stacks.secure.address, timeout=60, api_key=api_key, tls_ca=pki.ca)


def test_missing_key_refused(stacks, pki):
    with _secure_client(stacks, pki, api_key=None) as client, pytest.raises(UnauthenticatedError) as err:
        client.generate("hello", max_new_tokens=4)
    assert err.value.code == "UNAUTHENTICATED" and err.value.details == MISSING_KEY
    with _secure_client(stacks, pki, api_key=None) as client, pytest.raises(UnauthenticatedError):
        list(client.stream("hello", max_new_tokens=4))  # streaming calls are guarded too


def test_wrong_key_refused_and_not_logged(stacks, pki, caplog):
    caplog.set_level(logging.INFO, logger="orchestrator.auth")
    wrong = "sk-not-a-key-at-all-0000"
    with _secure_client(stacks, pki, api_key=wrong) as client, pytest.raises(UnauthenticatedError) as err:
        client.info()
    assert err.value.details == INVALID_KEY
    # a Bearer header with another scheme is no key either
    with open_channel(stacks.secure.address, PeerTls.from_files(pki.ca)) as channel:
        stub = orchestrator_pb2_grpc.OrchestratorStub(channel)
        with pytest.raises(grpc.RpcError) as raw:
            stub.Info(orchestrator_pb2.OrchestratorInfoRequest(), metadata=[("authorization", f"Basic {KEY_A}")])
    assert raw.value.code() == grpc.StatusCode.UNAUTHENTICATED and raw.value.details() == MISSING_KEY
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "invalid API key (id " in logged
    assert wrong not in logged and KEY_A not in logged


def test_right_keys_served(stacks, pki):
    for key in (KEY_A, KEY_B):
        with _secure_client(stacks, pki, api_key=key) as client:
            assert client.info().max_new_tokens == 64
            result = client.generate([1000, 2000, 3000, 1000], method="pld", max_new_tokens=6)
            assert result.stats.new_tokens > 0


def test_health_and_reflection_stay_open(stacks, pki):
    with open_channel(stacks.secure.address, PeerTls.from_files(pki.ca)) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = {s.name for r in replies for s in r.list_services_response.service}
        assert SERVICE_NAME in names


def test_plaintext_client_refused_by_tls_front_door(stacks):
    with SpecdClient(stacks.secure.address, timeout=10, api_key=KEY_A) as client, pytest.raises(UnavailableError):
        client.info()


def test_client_trusting_another_ca_refused(stacks, pki):
    with (
        SpecdClient(stacks.secure.address, timeout=10, api_key=KEY_A, tls_ca=pki.rogue_ca) as client,
        pytest.raises(UnavailableError),
    ):
        client.info()


def test_secure_stack_generates_the_plain_stacks_text(stacks, pki):
    prompts = ["Name three rivers.", "Why is the sky blue?"]
    with SpecdClient(stacks.plain.address, timeout=60) as plain, _secure_client(stacks, pki) as secure:
        for method in ("vanilla", "sps", "pld"):
            for prompt in prompts:
                want = plain.generate(prompt, method=method, max_new_tokens=16)
                got = secure.generate(prompt, method=method, max_new_tokens=16)
                assert (got.token_ids, got.text) == (want.token_ids, want.text)
                assert got.stats.target_steps > 0


def test_async_client_with_key_and_tls(stacks, pki):
    import asyncio

    async def run() -> tuple[str, str]:
        async with AsyncSpecdClient(stacks.secure.address, api_key=KEY_B, tls_ca=pki.ca.read_bytes()) as client:
            ok = (await client.generate("Hi", max_new_tokens=4)).text
        async with AsyncSpecdClient(stacks.secure.address, api_key="nope", tls_ca=pki.ca) as client:
            try:
                await client.info()
            except UnauthenticatedError as err:
                return ok, err.details
        return ok, ""

    text, refusal = asyncio.run(run())
    assert text and refusal == INVALID_KEY


def test_rotated_key_file_takes_effect(front_door, pki, tmp_path, caplog):
    """Kubernetes Secret layout: keys -> ..data/keys, ..data -> a timestamped dir; rotation swaps ..data."""
    caplog.set_level(logging.INFO, logger="orchestrator.auth")
    mount = tmp_path / "secret"
    (mount / "v1").mkdir(parents=True)
    write_keys(mount / "v1" / "api-keys", KEY_A)
    os.symlink("v1", mount / "..data")
    os.symlink("..data/api-keys", mount / "api-keys")
    handle = front_door(auth=AuthConfig(api_key_file=str(mount / "api-keys")))
    address = f"127.0.0.1:{handle.port}"
    with SpecdClient(address, timeout=10, api_key=KEY_A) as a, SpecdClient(address, timeout=10, api_key=KEY_B) as b:
        a.info()
        with pytest.raises(UnauthenticatedError):
            b.info()
        (mount / "v2").mkdir()
        write_keys(mount / "v2" / "api-keys", KEY_B)
        os.symlink("v2", mount / "..data.tmp")
        os.replace(mount / "..data.tmp", mount / "..data")  # atomic, as the kubelet does
        b.info()
        with pytest.raises(UnauthenticatedError):
            a.info()
        # a rotation in progress (file briefly gone) keeps the keys last read
        os.remove(mount / "..data")
        b.info()
        os.symlink("v2", mount / "..data")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "API keys reloaded: 1" in logged and "keeping the keys last read" in logged
    assert KEY_A not in logged and KEY_B not in logged


def test_rate_limit_trips_and_recovers(front_door, stacks):
    handle = front_door(auth=AuthConfig(api_key_file=str(stacks.key_file), rate_limit=4.0, rate_burst=2))
    address = f"127.0.0.1:{handle.port}"
    with SpecdClient(address, timeout=10, api_key=KEY_A) as a, SpecdClient(address, timeout=10, api_key=KEY_B) as b:
        a.info()
        a.info()
        with pytest.raises(ResourceExhaustedError) as err:
            a.info()
        assert "rate limit of 4 requests/s (burst 2)" in err.value.details
        assert "retry after 0." in err.value.details
        b.info()  # the bucket is per key
        channel = grpc.insecure_channel(address)
        call = orchestrator_pb2_grpc.OrchestratorStub(channel).Info.with_call
        with pytest.raises(grpc.RpcError) as raw:
            call(orchestrator_pb2.OrchestratorInfoRequest(), metadata=[("authorization", f"Bearer {KEY_A}")])
        retry_after = float(dict(raw.value.trailing_metadata())["retry-after"])
        assert 0 < retry_after <= 0.25
        channel.close()
        time.sleep(retry_after + 0.05)
        a.info()  # recovered


def test_bad_key_files_refused_at_start(front_door, tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("# nothing here\n\n")
    with pytest.raises(AuthConfigError, match=r"holds no keys"):
        front_door(auth=AuthConfig(api_key_file=str(empty)))
    with pytest.raises(AuthConfigError, match=r"cannot be read"):
        front_door(auth=AuthConfig(api_key_file=str(tmp_path / "absent")))
    with pytest.raises(AuthConfigError, match=r"needs --api-key-file"):
        front_door(auth=AuthConfig(rate_limit=1.0))
    with pytest.raises(AuthConfigError, match=r"line 2: one key per line"):
        parse_keys("k1\nk2 k3\n", "keys")
    assert parse_keys("# c\n  k1   # alice\n\nk2\n", "keys") == ("k1", "k2")


def test_limits_over_the_cap_refused_with_the_numbers(front_door, pki):
    tls = TlsConfig.from_files(pki.server_cert, pki.server_key)
    handle = front_door(config=OrchestratorConfig(max_new_tokens=16, max_prompt_tokens=8), tls=tls)
    with SpecdClient(f"localhost:{handle.port}", timeout=30, tls_ca=pki.ca) as client:
        with pytest.raises(InvalidArgumentError, match=r"prompt is 9 tokens; this server's cap is 8 prompt tokens"):
            client.generate(list(range(100, 109)), max_new_tokens=4)
        with pytest.raises(InvalidArgumentError, match=r"max_new_tokens 17 is above this server's cap of 16"):
            client.generate(list(range(100, 108)), max_new_tokens=17)
        assert client.generate(list(range(100, 108)), max_new_tokens=16).stats.new_tokens > 0
