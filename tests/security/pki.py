"""A throwaway PKI for the security tests, made with the ``openssl`` command line tool.

Two CAs: ``ca`` (trusted by our servers) and ``rogue`` (trusted by nobody). Server and client
certificates carry subjectAltName 127.0.0.1 and localhost, so they pass hostname checks on loopback.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path  # CA certificate
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path
    rogue_client_cert: Path  # signed by the rogue CA
    rogue_client_key: Path


def openssl_binary() -> str | None:
    return shutil.which("openssl")


def _openssl(*args: str | Path, cwd: Path) -> None:
    out = subprocess.run(["openssl", *map(str, args)], cwd=cwd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(map(str, args))} failed: {out.stderr}")


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    crt, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", crt, "-days", "2", "-subj", f"/CN=specd test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return crt, key


def _leaf(directory: Path, name: str, ca: tuple[Path, Path], usage: str) -> tuple[Path, Path]:
    crt, key, csr, ext = (directory / f"{name}{s}" for s in (".crt", ".key", ".csr", ".ext"))
    ext.write_text(f"subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage={usage}\n")
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", key, "-out", csr, "-subj", f"/CN={name}", cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
        "-out", crt, "-days", "2", "-extfile", ext, cwd=directory,
    )  # fmt: skip
    return crt, key


def make_pki(directory: Path) -> Pki:
    ca = _ca(directory, "ca")
    rogue = _ca(directory, "rogue")
    server = _leaf(directory, "server", ca, "serverAuth,clientAuth")
    client = _leaf(directory, "client", ca, "clientAuth")
    rogue_client = _leaf(directory, "rogue-client", rogue, "clientAuth")
    return Pki(directory, ca[0], *server, *client, rogue[0], *rogue_client)
