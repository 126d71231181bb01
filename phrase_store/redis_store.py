"""The Redis phrase store: one pool shared by every drafter and orchestrator replica.

Layout for namespace ``ns`` (the first 12 hex digits of the tokenizer fingerprint):

- ``specd:phr:{ns}:{token}``: a LIST of continuations of ``token``, newest first, each encoded
  as decimal token ids joined by commas (``"17,42,9"``); at most ``max_per_key`` long.
- ``specd:phr:{ns}:keys``: a ZSET of key tokens scored by last use (unix seconds; ``get`` and
  writes bump it); trimmed to ``max_keys`` by evicting the lowest scores, with their lists.

Every key carries a TTL of ``ttl_s``, refreshed on write. ``add`` runs one Lua script (atomic,
one round trip); ``get`` is one pipeline (LRANGE per key plus one ``ZADD XX GT``). Needs Redis
>= 6.2 (``ZADD GT``); not for Redis Cluster (the scripts touch keys across slots).

Outages fail soft: any Redis error makes ``get`` return {} and drops ``add``, counts an
error, and logs a warning at most every ``WARN_INTERVAL_S``. After a connection failure
the store skips Redis for ``backoff_s`` (calls cost nothing), then tries again; redis-py
reconnects by itself, so the caller never restarts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from phrase_store.store import (
    Continuation,
    Phrase,
    PhraseStoreConfig,
    PhraseStoreStats,
    check_continuation,
    check_k,
    group_phrases,
    namespace_tag,
    unique_keys,
)
from spec_decode.errors import InvalidArgument

log = logging.getLogger(__name__)

T = TypeVar("T")
KEY_PREFIX = "specd:phr"
WARN_INTERVAL_S = 30.0

# KEYS: index, list key per group. ARGV: max_per_key, max_keys, ttl_ms, now, list key prefix,
# then per group: token, count, continuations (oldest first; the last pushed ends up newest).
_ADD = """
local index, cap, max_keys = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
local ttl_ms, now, prefix = ARGV[3], ARGV[4], ARGV[5]
local a = 6
for i = 2, #KEYS do
  local key, token, n = KEYS[i], ARGV[a], tonumber(ARGV[a + 1])
  for j = a + 2, a + 1 + n do
    redis.call('LREM', key, 1, ARGV[j])
    redis.call('LPUSH', key, ARGV[j])
  end
  a = a + 2 + n
  redis.call('LTRIM', key, 0, cap - 1)
  redis.call('PEXPIRE', key, ttl_ms)
  redis.call('ZADD', index, now, token)
end
redis.call('ZREMRANGEBYSCORE', index, '-inf', '(' .. (tonumber(now) - tonumber(ttl_ms) / 1000))
local excess = redis.call('ZCARD', index) - max_keys
if excess > 0 then
  local evicted = redis.call('ZPOPMIN', index, excess)
  for j = 1, #evicted, 2 do redis.call('UNLINK', prefix .. evicted[j]) end
end
redis.call('PEXPIRE', index, ttl_ms)
return math.max(excess, 0)
"""

# KEYS: index, list key. ARGV: continuation, ttl_ms, now, token. Returns 1 if it was there.
_TOUCH = """
if redis.call('LREM', KEYS[2], 1, ARGV[1]) == 0 then return 0 end
redis.call('LPUSH', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: index. ARGV: list key prefix. Returns {live keys, phrases}; O(keys), for diagnostics.
_SIZES = """
local keys, phrases = 0, 0
for _, token in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local n = redis.call('LLEN', ARGV[1] .. token)
  if n > 0 then keys = keys + 1; phrases = phrases + n end
end
return {keys, phrases}
"""


def url_with_password(url: str, password: str) -> str:
    """``url`` with its password set to ``password`` (percent-encoded; the user name is kept).

    For ``--phrase-store-password-file``: the password stays out of command lines and flags.
    Example: ``url_with_password("rediss://cache:6380/0", "p@ss")`` → ``"rediss://:p%40ss@cache:6380/0"``.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise InvalidArgument("a phrase store password needs a redis:// or rediss:// URL with a host")
    user = quote(unquote(parts.username), safe="") if parts.username else ""
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    port = f":{parts.port}" if parts.port is not None else ""
    return urlunsplit(parts._replace(netloc=f"{user}:{quote(password, safe='')}@{host}{port}"))


def encode(continuation: Continuation) -> bytes:
    return ",".join(map(str, continuation)).encode()


def decode(raw: bytes) -> Continuation:
    return tuple(int(t) for t in raw.split(b","))


class RedisPhraseStore:
    """A phrase pool in Redis for one namespace; thread-safe (redis-py pools connections)."""

    def __init__(self, namespace: str, config: PhraseStoreConfig) -> None:
        self.config = config.validate()
        if config.kind != "redis" or config.url is None:
            raise InvalidArgument(f"RedisPhraseStore needs a redis:// or rediss:// URL, got {config.url!r}")
        self.namespace = namespace
        self._tag = namespace_tag(namespace)
        self._prefix = f"{KEY_PREFIX}:{self._tag}:"  # + token -> list key
        self._index = self._prefix + "keys"
        self._ttl_ms = max(1, round(config.ttl_s * 1000))
        self._client = redis.Redis.from_url(
            config.url,
            socket_timeout=config.socket_timeout_s,
            socket_connect_timeout=config.connect_timeout_s,
            retry=Retry(NoBackoff(), 1),  # one immediate retry replaces a connection the server closed
        )
        self._add = self._client.register_script(_ADD)
        self._touch = self._client.register_script(_TOUCH)
        self._sizes = self._client.register_script(_SIZES)
        self._lock = threading.Lock()  # guards the counters and the outage state below
        self._hits = self._misses = self._added = self._touched = self._errors = 0
        self._skip_until = 0.0  # monotonic time before which Redis is not tried
        self._failing = False
        self._last_warning = -float("inf")
        self._unwarned = 0  # failures since the last warning

    def key_for(self, token: int) -> str:
        """The Redis key holding ``token``'s continuations."""
        return f"{self._prefix}{token}"

    @property
    def index_key(self) -> str:
        return self._index

    # -- operations ------------------------------------------------------------------------------

    def get(self, keys: Sequence[int], k: int) -> dict[int, list[Continuation]]:
        check_k(k)
        wanted = unique_keys(keys)
        if not wanted:
            return {}

        def run() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            for key in wanted:
                pipe.lrange(self.key_for(key), 0, k - 1)
            pipe.zadd(self._index, dict.fromkeys(map(str, wanted), time.time()), xx=True, gt=True)
            return pipe.execute(raise_on_error=False)  # a bad key fails alone; a lost connection raises

        replies = self._call("get", run)
        if replies is None:
            return {}
        out: dict[int, list[Continuation]] = {}
        for key, rows in zip(wanted, replies, strict=False):  # the last reply (ZADD) is not zipped
            try:
                if isinstance(rows, Exception):
                    raise rows
                if rows:
                    out[key] = [decode(raw) for raw in rows]
            except (redis.RedisError, ValueError) as exc:  # WRONGTYPE, or a foreign value in our list
                self._failed("get", exc, outage=False)
        with self._lock:
            self._hits += len(out)
            self._misses += len(wanted) - len(out)
        return out

    def add(self, phrases: Sequence[Phrase]) -> None:
        groups = group_phrases(phrases)
        if not groups:
            return
        c = self.config
        keys = [self._index, *(self.key_for(key) for key in groups)]
        args: list[str | int | bytes] = [c.max_per_key, c.max_keys, self._ttl_ms, repr(time.time()), self._prefix]
        for key, continuations in groups.items():
            args += [key, len(continuations), *map(encode, continuations)]
        if self._call("add", lambda: self._add(keys=keys, args=args)) is not None:
            with self._lock:
                self._added += sum(len(v) for v in groups.values())

    def touch(self, key: int, continuation: Continuation) -> bool:
        (key,) = unique_keys([key])
        raw = encode(check_continuation(continuation))
        keys = [self._index, self.key_for(key)]
        args: list[str | int | bytes] = [raw, self._ttl_ms, repr(time.time()), key]
        found = self._call("touch", lambda: self._touch(keys=keys, args=args)) == 1
        if found:
            with self._lock:
                self._touched += 1
        return found

    def stats(self) -> PhraseStoreStats:
        sizes = self._call("stats", lambda: self._sizes(keys=[self._index], args=[self._prefix]))
        with self._lock:
            return PhraseStoreStats(
                keys=None if sizes is None else int(sizes[0]),
                phrases=None if sizes is None else int(sizes[1]),
                hits=self._hits,
                misses=self._misses,
                added=self._added,
                touched=self._touched,
                errors=self._errors,
            )

    def clear(self) -> None:
        def run() -> None:
            batch: list[bytes] = []
            for name in self._client.scan_iter(match=self._prefix + "*", count=1000):
                batch.append(name)
                if len(batch) >= 1000:
                    self._client.unlink(*batch)
                    batch.clear()
            if batch:
                self._client.unlink(*batch)

        self._call("clear", run)

    def ping(self) -> bool:
        return self._call("ping", lambda: bool(self._client.ping())) is True

    def close(self) -> None:
        self._client.close()

    # -- failing soft ----------------------------------------------------------------------------

    def _call(self, op: str, fn: Callable[[], T]) -> T | None:
        """``fn()``, or None when Redis fails (counted, logged at a limited rate)."""
        if time.monotonic() < self._skip_until:
            self._failed(op, None, outage=True)
            return None
        try:
            result = fn()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            self._skip_until = time.monotonic() + self.config.backoff_s
            self._failed(op, exc, outage=True)
            return None
        except redis.RedisError as exc:  # the server answered with an error (OOM, WRONGTYPE): no backoff
            self._failed(op, exc, outage=False)
            return None
        if self._failing:
            with self._lock:
                recovered, self._failing = self._failing, False
            if recovered:
                log.info("phrase store: Redis reachable again (namespace %s)", self._tag)
        return result

    def _failed(self, op: str, exc: Exception | None, outage: bool) -> None:
        """Count a failed-soft operation; warn (with ``exc``) at most every WARN_INTERVAL_S."""
        now = time.monotonic()
        with self._lock:
            self._errors += 1
            self._unwarned += 1
            self._failing = self._failing or outage
            if exc is None or now - self._last_warning < WARN_INTERVAL_S:
                return
            unwarned, self._unwarned, self._last_warning = self._unwarned, 0, now
        hint = ""
        if isinstance(exc, redis.exceptions.AuthenticationError | redis.exceptions.AuthorizationError):
            hint = " [Redis refused the credentials: check the URL's password or --phrase-store-password-file]"
        log.warning(
            "phrase store: Redis %s failed for namespace %s (%s: %s)%s; %d operation(s) failed soft since the "
            "last warning: reads return no phrases and writes are dropped until Redis is back",
            op,
            self._tag,
            type(exc).__name__,
            exc,
            hint,
            unwarned,
        )
