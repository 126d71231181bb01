"""Target and draft services with mutual TLS: only callers with a certificate from the trusted CA
get in — checked with raw stubs on the secure stack's real servers."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import draft_pb2, draft_pb2_grpc, target_pb2, target_pb2_grpc
from protos.security import PeerTls, open_channel
from protos.serving import wait_healthy


def _info(stacks, service: str, tls: PeerTls | None) -> object:
    handle = stacks.secure.target if service == "target" else stacks.secure.draft
    with open_channel(f"127.0.0.1:{handle.port}", tls) as channel:
        if service == "target":
            return target_pb2_grpc.TargetServiceStub(channel).Info(target_pb2.TargetInfoRequest(), timeout=10)
        return draft_pb2_grpc.DraftServiceStub(channel).Info(draft_pb2.DraftInfoRequest(), timeout=10)


def _refused(stacks, service: str, tls: PeerTls | None) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        _info(stacks, service, tls)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
    return err.value


@pytest.mark.parametrize("service", ["target", "draft"])
def test_mtls_service_refuses_unknown_callers(stacks, pki, service):
    _refused(stacks, service, None)  # plaintext client against a TLS server
    _refused(stacks, service, PeerTls.from_files(pki.ca))  # TLS, but no client certificate
    _refused(stacks, service, PeerTls.from_files(pki.ca, pki.rogue_client_cert, pki.rogue_client_key))
    _refused(stacks, service, PeerTls.from_files(pki.rogue_ca, pki.client_cert, pki.client_key))  # wrong server CA
    info = _info(stacks, service, PeerTls.from_files(pki.ca, pki.client_cert, pki.client_key))
    assert info.vocab.fingerprint  # type: ignore[attr-defined]


def test_health_checks_need_the_client_certificate_too(stacks, pki):
    address = f"127.0.0.1:{stacks.secure.target.port}"
    with (
        open_channel(address, PeerTls.from_files(pki.ca)) as channel,
        pytest.raises(grpc.RpcError) as err,
    ):
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    wait_healthy(address, 10, tls=PeerTls.from_files(pki.ca, pki.client_cert, pki.client_key))
