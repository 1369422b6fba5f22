"""Throwaway X.509 material for TLS tests: a CA, a server certificate for 127.0.0.1/localhost and
a client certificate, made with the openssl CLI (Debian package openssl)."""

from __future__ import annotations

import subprocess
from pathlib import Path


def make_test_certs(directory: Path, ca_name: str = "test-ca") -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
        "-subj", f"/CN={ca_name}", "-keyout", "ca.key", "-out", "ca.crt")
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", f"{name}.crt")
    for key in directory.glob("*.key"):
        key.chmod(0o600)
    return {n: directory / n for n in ("ca.crt", "server.crt", "server.key", "client.crt", "client.key")}
