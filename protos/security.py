"""TLS material for specd's gRPC servers and clients, loaded from PEM files (or bytes).

    server = TlsConfig.from_files("tls.crt", "tls.key", client_ca="ca.crt")  # mTLS
    start_server(..., tls=server)
    peer = PeerTls.from_files("ca.crt", cert="client.crt", key="client.key")
    channel = open_channel("target:50052", peer)

A mounted Kubernetes Secret of type ``kubernetes.io/tls`` is such a set of files
(``tls.crt``, ``tls.key``, ``ca.crt``). Every file is checked when it is loaded — it exists, is
readable, is PEM of the right kind, and the key matches the certificate — so a bad mount fails
at start-up with the file's name, not at the first handshake.

Needs only grpcio and the standard library: the client SDK uses it too.
"""

from __future__ import annotations

import os
import re
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

PemSource = str | os.PathLike[str] | bytes  # a path, or the PEM bytes themselves


class TlsConfigError(ValueError):
    """A certificate, key or secret file is missing, unreadable or not what it should be."""


@dataclass(frozen=True)
class TlsConfig:
    """Server side: the certificate chain and key a server presents; with ``client_ca``,
    mutual TLS (callers must present a certificate signed by that CA)."""

    cert_chain: bytes
    private_key: bytes
    client_ca: bytes | None = None

    @classmethod
    def from_files(cls, cert: PemSource, key: PemSource, client_ca: PemSource | None = None) -> TlsConfig:
        cert_pem = read_pem(cert, "TLS certificate", "CERTIFICATE")
        key_pem = read_pem(key, "TLS private key", "PRIVATE KEY")
        check_key_pair(cert_pem, key_pem, _name(cert), _name(key))
        ca_pem = None
        if client_ca is not None:
            ca_pem = read_pem(client_ca, "client CA", "CERTIFICATE")
            check_ca(ca_pem, _name(client_ca))
        return cls(cert_pem, key_pem, ca_pem)

    @property
    def mutual(self) -> bool:
        return self.client_ca is not None

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.private_key, self.cert_chain)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )

    def __repr__(self) -> str:  # never print key material
        return f"TlsConfig(mutual={self.mutual})"


@dataclass(frozen=True)
class PeerTls:
    """Client side: the CA that signed the server's certificate (None: the system's roots) and,
    for mutual TLS, the client's own certificate chain and key."""

    root_ca: bytes | None = None
    cert_chain: bytes | None = None
    private_key: bytes | None = None

    @classmethod
    def from_files(
        cls, ca: PemSource | None = None, cert: PemSource | None = None, key: PemSource | None = None
    ) -> PeerTls:
        if (cert is None) != (key is None):
            raise TlsConfigError("a client certificate needs its key and a key its certificate: give both or neither")
        ca_pem = None
        if ca is not None:
            ca_pem = read_pem(ca, "CA certificate", "CERTIFICATE")
            check_ca(ca_pem, _name(ca))
        cert_pem = key_pem = None
        if cert is not None and key is not None:
            cert_pem = read_pem(cert, "client certificate", "CERTIFICATE")
            key_pem = read_pem(key, "client private key", "PRIVATE KEY")
            check_key_pair(cert_pem, key_pem, _name(cert), _name(key))
        return cls(ca_pem, cert_pem, key_pem)

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(self.root_ca, self.private_key, self.cert_chain)

    def __repr__(self) -> str:
        return f"PeerTls(custom_ca={self.root_ca is not None}, client_cert={self.cert_chain is not None})"


def tls_from_flags(cert: str | None, key: str | None, client_ca: str | None) -> TlsConfig | None:
    """The server TLS config ``--tls-cert/--tls-key/--tls-client-ca`` ask for (None: plaintext)."""
    if cert is None and key is None:
        if client_ca is not None:
            raise TlsConfigError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key too")
        return None
    if cert is None or key is None:
        raise TlsConfigError("--tls-cert and --tls-key go together: give both")
    return TlsConfig.from_files(cert, key, client_ca)


def peer_tls_from_flags(ca: str | None, cert: str | None, key: str | None) -> PeerTls | None:
    """The client TLS config ``--peer-ca/--peer-cert/--peer-key`` ask for (None: plaintext)."""
    if ca is None and cert is None and key is None:
        return None
    return PeerTls.from_files(ca, cert, key)


def open_channel(address: str, tls: PeerTls | None, options: Sequence[tuple[str, object]] = ()) -> grpc.Channel:
    """A blocking channel to ``address``: TLS when ``tls`` is given, plaintext otherwise."""
    if tls is None:
        return grpc.insecure_channel(address, options=list(options))
    return grpc.secure_channel(address, tls.channel_credentials(), options=list(options))


def read_pem(source: PemSource, what: str, kind: str) -> bytes:
    """PEM bytes from a path (or the bytes themselves), checked to hold a ``-----BEGIN ...{kind}-----``
    block (``kind``: "CERTIFICATE" or "PRIVATE KEY", which also matches "RSA PRIVATE KEY", ...)."""
    data = source if isinstance(source, bytes) else _read(source, what)
    if b"-----BEGIN " not in data:
        raise TlsConfigError(f"{what} {_name(source)} is not PEM (no '-----BEGIN' line)")
    if not re.search(rb"^-----BEGIN [A-Z ]*" + kind.encode() + rb"-----\s*$", data, re.MULTILINE):
        raise TlsConfigError(f"{what} {_name(source)} holds no PEM {kind} block")
    return data


def read_secret(path: str | os.PathLike[str], what: str) -> str:
    """A one-line secret (password, API key) from a file, without the trailing newline."""
    text = _read(path, what).decode("utf-8", errors="strict").strip()
    if not text:
        raise TlsConfigError(f"{what} file {os.fspath(path)!r} is empty")
    if "\n" in text:
        raise TlsConfigError(f"{what} file {os.fspath(path)!r} has more than one line")
    return text


def check_key_pair(cert_pem: bytes, key_pem: bytes, cert_name: str, key_name: str) -> None:
    """Raise unless ``key_pem`` is the private key of the (first) certificate in ``cert_pem``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory(prefix="specd-tls-") as tmp:  # ssl loads key pairs from files only
        cert_file, key_file = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        cert_file.write_bytes(cert_pem)
        key_file.touch(mode=0o600)
        key_file.write_bytes(key_pem)
        try:
            ctx.load_cert_chain(cert_file, key_file)
        except ssl.SSLError as exc:
            reason = exc.reason or str(exc)
            if "MISMATCH" in reason:
                raise TlsConfigError(f"private key {key_name} does not belong to certificate {cert_name}") from None
            raise TlsConfigError(
                f"certificate {cert_name} or key {key_name} is not a valid PEM certificate / private key ({reason})"
            ) from None


def check_ca(ca_pem: bytes, name: str) -> None:
    """Raise unless ``ca_pem`` parses as one or more certificates."""
    try:
        ssl.create_default_context(cadata=ca_pem.decode("ascii", errors="replace"))
    except (ssl.SSLError, ValueError) as exc:
        raise TlsConfigError(f"CA certificate {name} cannot be parsed: {exc}") from None


def _read(path: str | os.PathLike[str], what: str) -> bytes:
    name = os.fspath(path)
    try:
        return Path(name).read_bytes()
    except FileNotFoundError:
        raise TlsConfigError(f"{what} file {name!r} does not exist") from None
    except IsADirectoryError:
        raise TlsConfigError(f"{what} file {name!r} is a directory") from None
    except OSError as exc:
        raise TlsConfigError(f"{what} file {name!r} cannot be read: {exc.strerror}") from None


def _name(source: PemSource) -> str:
    return "(given as bytes)" if isinstance(source, bytes) else repr(os.fspath(source))
