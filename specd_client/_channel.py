"""Channel security and call metadata shared by the sync and async clients."""

from __future__ import annotations

import grpc

from protos.security import PeerTls, PemSource


def channel_credentials(
    tls: bool, tls_ca: PemSource | None, tls_cert: PemSource | None, tls_key: PemSource | None
) -> grpc.ChannelCredentials | None:
    """TLS credentials, or None for a plaintext channel.

    TLS is used when ``tls`` is true or any of ``tls_ca`` / ``tls_cert`` / ``tls_key`` is given;
    each is a path or the PEM bytes. Without ``tls_ca`` the system's root CAs verify the server;
    ``tls_cert`` + ``tls_key`` is this client's certificate for mutual TLS.
    """
    if not tls and tls_ca is None and tls_cert is None and tls_key is None:
        return None
    return PeerTls.from_files(tls_ca, tls_cert, tls_key).channel_credentials()


def channel_options(tls_server_name: str | None) -> list[tuple[str, str]]:
    """``tls_server_name``: the name the server's certificate must carry when it is not the
    address's host (e.g. connecting to an IP address or through a port-forward)."""
    return [("grpc.ssl_target_name_override", tls_server_name)] if tls_server_name else []


def auth_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    """``authorization: Bearer KEY`` metadata for every call, or none without a key (None or "")."""
    if not api_key:
        return ()
    key = api_key.strip()
    if not key or not all(33 <= ord(c) < 127 for c in key):
        raise ValueError("api_key must be printable ASCII characters without spaces")
    return (("authorization", f"Bearer {key}"),)
