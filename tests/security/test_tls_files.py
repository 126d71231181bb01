"""Loading certificates, keys and secrets: every bad file is refused with its name and the reason."""

from __future__ import annotations

import os

import pytest

from protos.security import PeerTls, TlsConfig, TlsConfigError, peer_tls_from_flags, read_secret, tls_from_flags


def test_good_files_load(pki):
    server = TlsConfig.from_files(pki.server_cert, pki.server_key, client_ca=pki.ca)
    assert server.mutual and b"BEGIN CERTIFICATE" in server.cert_chain
    assert "PRIVATE" not in repr(server)  # key material never printed
    peer = PeerTls.from_files(pki.ca, pki.client_cert, pki.client_key)
    assert peer.cert_chain is not None and peer.root_ca is not None
    assert tls_from_flags(None, None, None) is None and peer_tls_from_flags(None, None, None) is None


def test_missing_unreadable_and_wrong_kind(pki, tmp_path):
    with pytest.raises(TlsConfigError, match=r"TLS certificate file .*nope.crt' does not exist"):
        TlsConfig.from_files(tmp_path / "nope.crt", pki.server_key)
    locked = tmp_path / "locked.key"
    locked.write_bytes(pki.server_key.read_bytes())
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # root reads anything
        pytest.skip("running as root: file permissions are not enforced")
    with pytest.raises(TlsConfigError, match=r"TLS private key file .*locked.key' cannot be read"):
        TlsConfig.from_files(pki.server_cert, locked)


def test_not_pem_or_wrong_block(pki, tmp_path):
    junk = tmp_path / "junk.crt"
    junk.write_text("hello\n")
    with pytest.raises(TlsConfigError, match=r"junk.crt' is not PEM"):
        TlsConfig.from_files(junk, pki.server_key)
    with pytest.raises(TlsConfigError, match=r"holds no PEM CERTIFICATE block"):
        TlsConfig.from_files(pki.server_key, pki.server_key)  # a key where the certificate goes
    with pytest.raises(TlsConfigError, match=r"holds no PEM PRIVATE KEY block"):
        TlsConfig.from_files(pki.server_cert, pki.server_cert)
    broken = tmp_path / "broken-ca.crt"
    broken.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    with pytest.raises(TlsConfigError, match=r"broken-ca.crt' cannot be parsed"):
        PeerTls.from_files(broken)
    with pytest.raises(TlsConfigError, match=r"not a valid PEM certificate"):
        TlsConfig.from_files(broken, pki.server_key)


def test_key_must_match_certificate(pki):
    with pytest.raises(TlsConfigError, match=r"client.key' does not belong to certificate .*server.crt'"):
        TlsConfig.from_files(pki.server_cert, pki.client_key)


def test_flag_combinations(pki):
    with pytest.raises(TlsConfigError, match=r"--tls-cert and --tls-key go together"):
        tls_from_flags(str(pki.server_cert), None, None)
    with pytest.raises(TlsConfigError, match=r"--tls-client-ca .* needs --tls-cert"):
        tls_from_flags(None, None, str(pki.ca))
    with pytest.raises(TlsConfigError, match=r"give both or neither"):
        peer_tls_from_flags(str(pki.ca), str(pki.client_cert), None)


def test_read_secret(tmp_path):
    f = tmp_path / "password"
    f.write_text("s3cret\n")
    assert read_secret(f, "Redis password") == "s3cret"
    f.write_text("\n")
    with pytest.raises(TlsConfigError, match=r"Redis password file .* is empty"):
        read_secret(f, "Redis password")
    with pytest.raises(TlsConfigError, match=r"does not exist"):
        read_secret(tmp_path / "absent", "Redis password")
