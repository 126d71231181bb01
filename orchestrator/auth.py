"""The orchestrator's front door: API keys and a per-key request rate, as a gRPC interceptor.

Callers send ``authorization: Bearer KEY`` metadata (the SDK's ``api_key=``). Keys come from a
file, one per line (``#`` starts a comment line; ``KEY  # owner`` labels a key), that is re-read
whenever it changes, so rotating a mounted Kubernetes Secret takes effect without a restart.
A presented key is compared with every key in constant time (SHA-256 digests through
``hmac.compare_digest``, no early exit). Keys are never logged: logs name a key by its id, the
first 8 hex digits of its SHA-256.

Refusals: no key → UNAUTHENTICATED "missing API key (authorization: Bearer ...)"; a key not in
the file → UNAUTHENTICATED "invalid API key"; over the key's rate → RESOURCE_EXHAUSTED with
the wait in the message and in ``retry-after`` trailing metadata (seconds). Health checks and
reflection stay open, so probes and ``grpcurl list`` need no key.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger(__name__)

OPEN_SERVICES = frozenset(
    {"grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"}
)
MISSING_KEY = "missing API key (authorization: Bearer ...)"
INVALID_KEY = "invalid API key"
WARN_INTERVAL_S = 30.0


class AuthConfigError(ValueError):
    """The API key file or the rate limit settings are unusable (raised at start-up)."""


@dataclass(frozen=True)
class AuthConfig:
    """``api_key_file``: None = no keys asked (open front door). ``rate_limit``: requests per
    second allowed per key (0 = unlimited); ``rate_burst``: requests a key may send at once
    (0 = ``max(1, ceil(rate_limit))``)."""

    api_key_file: str | None = None
    rate_limit: float = 0.0
    rate_burst: int = 0

    def validate(self) -> AuthConfig:
        if not math.isfinite(self.rate_limit) or self.rate_limit < 0:
            raise AuthConfigError(f"--rate-limit must be a number of requests/s >= 0, got {self.rate_limit}")
        if self.rate_burst < 0:
            raise AuthConfigError(f"--rate-burst must be >= 0, got {self.rate_burst}")
        if self.rate_limit > 0 and self.api_key_file is None:
            raise AuthConfigError("--rate-limit is per API key: it needs --api-key-file")
        return self

    @property
    def burst(self) -> int:
        return self.rate_burst or max(1, math.ceil(self.rate_limit))


def key_id(key: str) -> str:
    """The name logs use for a key: the first 8 hex digits of its SHA-256."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def parse_keys(text: str, source: str) -> tuple[str, ...]:
    """The keys in an API key file's text (see the module docstring for the format)."""
    keys: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        if len(words) > 1 and not words[1].startswith("#"):
            raise AuthConfigError(f"{source} line {number}: one key per line (a label goes after '#')")
        key = words[0]
        if not all(33 <= ord(c) < 127 for c in key):
            raise AuthConfigError(f"{source} line {number}: a key must be printable ASCII (gRPC metadata)")
        keys.append(key)
    return tuple(keys)


class ApiKeys:
    """The keys of one file, re-read when its modification time, size or inode changes.

    A file that disappears or cannot be read during a rotation keeps the keys last read (with a
    warning); a file that is read and holds no keys refuses every key.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._last_warning = -math.inf
        try:
            stamp = self._stamp()
            keys = parse_keys(self.path.read_text(encoding="utf-8"), f"API key file {str(self.path)!r}")
        except OSError as exc:
            raise AuthConfigError(f"API key file {str(self.path)!r} cannot be read: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise AuthConfigError(f"API key file {str(self.path)!r} is not UTF-8 text") from None
        if not keys:
            raise AuthConfigError(f"API key file {str(self.path)!r} holds no keys")
        self._stamp_seen = stamp
        self._digests = self._index(keys)
        log.info("API keys: %d from %s (ids %s)", len(keys), self.path, ", ".join(key_id(k) for k in keys))

    def __len__(self) -> int:
        return len(self._digests)

    def match(self, presented: str) -> str | None:
        """The id of ``presented`` if it is a current key, else None (constant time in the key's position)."""
        self._reload_if_changed()
        digest = hashlib.sha256(presented.encode()).digest()
        found: str | None = None
        for known, kid in self._digests:
            if hmac.compare_digest(digest, known):
                found = kid  # no break: every key is compared
        return found

    def _stamp(self) -> tuple[int, int, int]:
        st = os.stat(self.path)  # follows symlinks: a Secret mount swaps its ..data link
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _reload_if_changed(self) -> None:
        try:
            stamp = self._stamp()
        except OSError as exc:
            self._warn(f"API key file {self.path} cannot be checked ({exc.strerror}); keeping the keys last read")
            return
        if stamp == self._stamp_seen:
            return
        with self._lock:
            if stamp == self._stamp_seen:
                return
            try:
                keys = parse_keys(self.path.read_text(encoding="utf-8"), f"API key file {str(self.path)!r}")
            except (OSError, UnicodeDecodeError, AuthConfigError) as exc:
                self._warn(f"API key file {self.path} changed but cannot be used ({exc}); keeping the keys last read")
                return
            self._digests = self._index(keys)
            self._stamp_seen = stamp
        if keys:
            log.info("API keys reloaded: %d from %s (ids %s)", len(keys), self.path, ", ".join(map(key_id, keys)))
        else:
            log.warning("API key file %s now holds no keys: every call is refused", self.path)

    @staticmethod
    def _index(keys: tuple[str, ...]) -> tuple[tuple[bytes, str], ...]:
        return tuple((hashlib.sha256(k.encode()).digest(), key_id(k)) for k in keys)

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_warning >= WARN_INTERVAL_S:
            self._last_warning = now
            log.warning(message)


class RateLimiter:
    """One token bucket per key: ``rate`` tokens per second, at most ``burst`` held."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # key id -> (tokens, at)

    def take(self, kid: str) -> float:
        """Spend one token of ``kid``'s bucket: 0.0 if there was one, else the seconds until there is."""
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.get(kid, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            if tokens >= 1.0:
                self._buckets[kid] = (tokens - 1.0, now)
                return 0.0
            self._buckets[kid] = (tokens, now)
            return (1.0 - tokens) / self.rate


@dataclass(frozen=True)
class _Refusal:
    code: grpc.StatusCode
    message: str
    trailing: tuple[tuple[str, str], ...] = ()


class AuthInterceptor(grpc.ServerInterceptor):
    """Checks the API key (and the key's rate) of every call except health checks and reflection."""

    def __init__(self, keys: ApiKeys, limiter: RateLimiter | None = None) -> None:
        self._keys = keys
        self._limiter = limiter

    @classmethod
    def from_config(cls, config: AuthConfig) -> AuthInterceptor | None:
        """The interceptor ``config`` asks for, or None when it asks for no keys."""
        config.validate()
        if config.api_key_file is None:
            return None
        limiter = RateLimiter(config.rate_limit, config.burst) if config.rate_limit > 0 else None
        return cls(ApiKeys(config.api_key_file), limiter)

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        service = handler_call_details.method.lstrip("/").split("/", 1)[0]
        if handler is None or service in OPEN_SERVICES:
            return handler
        refusal = self._check(handler_call_details.invocation_metadata)
        return handler if refusal is None else _refusing(handler, refusal)

    def _check(self, metadata: Any) -> _Refusal | None:
        header = next((value for key, value in metadata or () if key == "authorization"), None)
        if not header or not isinstance(header, str):
            return _Refusal(grpc.StatusCode.UNAUTHENTICATED, MISSING_KEY)
        scheme, _, presented = header.strip().partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            return _Refusal(grpc.StatusCode.UNAUTHENTICATED, MISSING_KEY)
        kid = self._keys.match(presented)
        if kid is None:
            log.info("refused a call with an invalid API key (id %s)", key_id(presented))
            return _Refusal(grpc.StatusCode.UNAUTHENTICATED, INVALID_KEY)
        wait = self._limiter.take(kid) if self._limiter is not None else 0.0
        if wait > 0:
            assert self._limiter is not None
            message = (
                f"API key {kid} is over its rate limit of {self._limiter.rate:g} requests/s "
                f"(burst {self._limiter.burst}); retry after {wait:.2f} s"
            )
            return _Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, message, (("retry-after", f"{wait:.3f}"),))
        return None


def _refusing(handler: grpc.RpcMethodHandler, refusal: _Refusal) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that ends the call with ``refusal``."""

    def refuse(request_or_iterator: Any, context: grpc.ServicerContext) -> Any:
        if refusal.trailing:
            context.set_trailing_metadata(refusal.trailing)
        context.abort(refusal.code, refusal.message)

    kw: dict[str, Any] = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(refuse, **kw)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(refuse, **kw)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(refuse, **kw)
    return grpc.unary_unary_rpc_method_handler(refuse, **kw)
