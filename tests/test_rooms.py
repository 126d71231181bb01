"""The rooms of docs/ARCHITECTURE.md: what each package must not import, checked on the source.

Every ``.py`` file of a package is parsed with :mod:`ast` and every import in it is collected,
at module top and lazy ones inside functions alike (``import x``, ``from x import y``; relative
imports stay inside the package). A module matches a forbidden name when it is that name or
inside it (``google.protobuf.message`` matches ``google.protobuf``).

``RULES`` is the "must not import" column of the rooms table; change both together.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SERVICES = ("target_service", "draft_service", "orchestrator")
GRPC = ("grpc", "grpc_health", "grpc_reflection", "grpc_status", "grpc_tools")
PROTOBUF = ("google.protobuf",)

RULES: dict[str, tuple[str, ...]] = {
    "spec_decode": (*GRPC, *PROTOBUF, "protos", *SERVICES, "specd_cli", "specd_kernels"),
    "specd_kernels": (*GRPC, *PROTOBUF, "protos", *SERVICES, "specd_cli"),
    "target_service": ("orchestrator", "draft_service"),
    "draft_service": ("orchestrator", "target_service"),
    "orchestrator": ("target_service", "draft_service"),
    "phrase_store": ("torch", *SERVICES),
    "specd_client": ("torch", "spec_decode", *SERVICES),
    "specd_metrics": ("torch", *GRPC, *SERVICES),
    "protos": ("torch",),
}

# Packages that run without torch (the SDK, the phrase store, metrics, the wire): their rule must
# also hold for everything importing each of their modules loads, directly or through others.
LIGHT = ("phrase_store", "protos", "specd_client", "specd_metrics")

# Known violations, each with why it is tolerated: (file from the repository root, imported module),
# e.g. ("orchestrator/x.py", "draft_service.y"): "why". Today there are none.
# An entry that no longer matches anything fails the test, so the list can only shrink.
ALLOWED: dict[tuple[str, str], str] = {}


def imported_modules(path: Path) -> set[str]:
    """Every absolute module name that ``path`` imports, wherever the import statement sits."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names if alias.name != "*")
    return found


def matches(module: str, forbidden: str) -> bool:
    return module == forbidden or module.startswith(forbidden + ".")


def violations(package: str) -> dict[tuple[str, str], str]:
    """``{(file, module): forbidden name}`` for every import of ``package`` that its rule forbids."""
    out: dict[tuple[str, str], str] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        reported: list[str] = []  # one line per import: not also google.protobuf.message after google.protobuf
        for module in sorted(imported_modules(path)):
            hit = next((f for f in RULES[package] if matches(module, f)), None)
            if hit is not None and not any(matches(module, r) for r in reported):
                reported.append(module)
                out[(rel, module)] = hit
    return out


def test_import_collection_sees_lazy_and_from_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "import os.path\n"
        "from google.protobuf import message\n"
        "from . import sibling\n"
        "def f():\n"
        "    from draft_service.redrafter import ReDrafterDrafter\n"
        "    import torch.nn as nn\n"
        "class C:\n"
        "    def g(self):\n"
        "        if True:\n"
        "            import grpc_health.v1\n"
    )
    found = imported_modules(source)
    assert {"os.path", "google.protobuf", "draft_service.redrafter", "torch.nn", "grpc_health.v1"} <= found
    assert not any(m.startswith("sibling") for m in found)  # relative: stays in the package
    assert matches("google.protobuf.message", "google.protobuf") and not matches("google.auth", "google.protobuf")
    assert not matches("grpcio_extra", "grpc") and matches("grpc.aio", "grpc")


@pytest.mark.parametrize("package", sorted(RULES))
def test_package_imports_nothing_its_room_forbids(package: str) -> None:
    assert (ROOT / package).is_dir(), f"{package} is in RULES but not in the repository"
    found = violations(package)
    allowed = {key: why for key, why in ALLOWED.items() if key[0].split("/")[0] == package}
    unexpected = {key: hit for key, hit in found.items() if key not in allowed}
    assert not unexpected, f"{package} must not import {sorted(set(unexpected.values()))} (docs/ARCHITECTURE.md): " + (
        "; ".join(f"{file} imports {module}" for file, module in sorted(unexpected))
    )
    stale = sorted(set(allowed) - set(found))
    assert not stale, f"ALLOWED entries that no longer occur, remove them: {stale}"


_LOADED = """
import importlib, json, pkgutil, sys
package = importlib.import_module(sys.argv[1])
for info in pkgutil.walk_packages(package.__path__, sys.argv[1] + "."):
    importlib.import_module(info.name)
print(json.dumps(sorted(sys.modules)))
"""


@pytest.mark.parametrize("package", LIGHT)
def test_light_package_loads_nothing_its_room_forbids(package: str) -> None:
    """Importing every module of ``package`` in a fresh interpreter loads no forbidden module,
    also not through another package (e.g. a spec_decode module that imports torch)."""
    run = subprocess.run(
        [sys.executable, "-c", _LOADED, package], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, f"importing the modules of {package} failed:\n{run.stderr[-2000:]}"
    loaded = json.loads(run.stdout.splitlines()[-1])
    bad = sorted({f for f in RULES[package] for m in loaded if matches(m, f)})
    assert not bad, f"importing {package} loads {bad}, which its room forbids (docs/ARCHITECTURE.md)"


def test_every_package_of_the_project_has_a_room() -> None:
    """A new top-level package needs a row in the table and here (or a reason not to)."""
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert packages - {"specd_cli"} == set(RULES), "add the package to RULES and to the rooms table"
