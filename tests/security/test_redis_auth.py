"""The phrase store against a password-protected redis-server (and through TLS): the password
comes from ``--phrase-store-password-file``; a wrong one fails soft with a clear warning."""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from testkit import RedisServer

from phrase_store import PhraseStore, open_phrase_store, open_store
from phrase_store.redis_store import url_with_password
from specd_cli.main import _draft_config, build_parser

PASSWORD = "p@ss:w/rd#1"  # characters that must be percent-encoded in a URL


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A redis-server with ``requirepass`` on loopback."""
    server = RedisServer(tmp_path_factory.mktemp("redis"), password=PASSWORD)
    server.start()
    yield server.port
    server.stop()


class TlsProxy:
    """TLS in front of a plaintext port (as stunnel or a managed Redis would offer it)."""

    def __init__(self, cert: Path, key: Path, backend_port: int) -> None:
        self._ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ctx.load_cert_chain(cert, key)
        self._backend = backend_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            client = self._ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()  # e.g. a client that does not trust our certificate
            return
        backend = socket.create_connection(("127.0.0.1", self._backend))
        threading.Thread(target=_pump, args=(backend, client), daemon=True).start()
        _pump(client, backend)

    def close(self) -> None:
        self._listener.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.close()


def _roundtrip(store: PhraseStore) -> dict[int, list[tuple[int, ...]]]:
    store.add([(5, 6, 7), (5, 8)])
    return store.get([5], k=4)


def _namespace() -> str:
    return uuid.uuid4().hex * 2


def test_password_file_flag_reaches_the_store(redis_port, tmp_path):
    secret = tmp_path / "redis-password"
    secret.write_text(PASSWORD + "\n")
    url = f"redis://127.0.0.1:{redis_port}/0"
    args = build_parser().parse_args(["draft", "--phrase-store", url, "--phrase-store-password-file", str(secret)])
    store = open_store(_draft_config(args).phrase_store, _namespace())
    try:
        assert _roundtrip(store) == {5: [(8,), (6, 7)]}
        assert store.stats().errors == 0
    finally:
        store.clear()
        store.close()


@pytest.mark.parametrize("password", [None, "wrong-password"])
def test_wrong_or_missing_password_fails_soft(redis_port, caplog, password):
    caplog.set_level(logging.WARNING, logger="phrase_store.redis_store")
    url = f"redis://127.0.0.1:{redis_port}/0"
    store = open_phrase_store(url_with_password(url, password) if password else url, _namespace())
    try:
        assert _roundtrip(store) == {}  # no exception: drafting goes on without phrases
        assert store.stats().errors >= 2
    finally:
        store.close()
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "AuthenticationError" in logged and "check the URL's password or --phrase-store-password-file" in logged
    assert "wrong-password" not in logged and PASSWORD not in logged


def test_rediss_with_custom_ca_and_password(redis_port, pki, tmp_path):
    proxy = TlsProxy(pki.server_cert, pki.server_key, redis_port)
    try:
        url = url_with_password(f"rediss://localhost:{proxy.port}/0?ssl_ca_certs={pki.ca}", PASSWORD)
        store = open_phrase_store(url, _namespace())
        try:
            assert _roundtrip(store) == {5: [(8,), (6, 7)]}
            assert store.stats().errors == 0
        finally:
            store.clear()
            store.close()
        untrusting = open_phrase_store(url.replace(str(pki.ca), str(pki.rogue_ca)), _namespace())
        try:
            assert _roundtrip(untrusting) == {}  # certificate not trusted: fails soft, nothing sent
            assert untrusting.stats().errors >= 1
        finally:
            untrusting.close()
    finally:
        proxy.close()


def test_password_file_needs_a_redis_url(tmp_path):
    from spec_decode.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match=r"needs a redis:// or rediss:// URL"):
        url_with_password("memory://", "x")
    assert url_with_password("redis://bob:old@h:1/2", "n:ew") == "redis://bob:n%3Aew@h:1/2"
