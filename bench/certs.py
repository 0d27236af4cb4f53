"""Per-run self-signed certificates (ECDSA P-256 and RSA-2048) made with the openssl binary."""
from __future__ import annotations

import subprocess
from pathlib import Path

KEY_ARGS = {
    "ecdsa": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
    "rsa": ["-newkey", "rsa:2048"],
}


def make_cert(outdir: Path, kind: str) -> dict:
    """Write <kind>.pem, <kind>-key.pem and <kind>-combined.pem (HAProxy's format)."""
    cert, key = outdir / f"{kind}.pem", outdir / f"{kind}-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", *KEY_ARGS[kind], "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60)
    combined = outdir / f"{kind}-combined.pem"
    combined.write_text(cert.read_text() + key.read_text())
    for p in (key, combined):
        p.chmod(0o600)
    return {"cert": str(cert.resolve()), "key": str(key.resolve()),
            "combined": str(combined.resolve())}


def make_all(outdir: Path) -> dict:
    outdir.mkdir(parents=True, exist_ok=True)
    return {kind: make_cert(outdir, kind) for kind in KEY_ARGS}
