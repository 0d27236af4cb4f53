"""``fleet.secret_file`` is read with the config (``gateproxy check`` and ``run``): a missing,
unreadable or short file is one problem at ``fleet.secret_file`` that names the file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from gateproxy.config_files import check_config_file
from gateproxy.core.fleet_seal import MIN_SECRET_LEN
from tests.conftest import CertPaths
from tests.helpers.proxy import proxy_config, tls_listener


def _write(tmp_path: Path, cert: CertPaths, secret_file: str) -> Path:
    listener = tls_listener(cert=cert.cert, key=cert.key, tls={"tickets": {"source": "fleet"}})
    fleet: dict[str, Any] = {"secret_file": secret_file}
    config = proxy_config([listener], {"app": {"servers": ["127.0.0.1:9"]}}, fleet=fleet)
    path = tmp_path / "gateproxy.yaml"
    path.write_text(json.dumps(config))
    return path


def test_a_secret_file_next_to_the_config_is_read(tmp_path: Path, server_cert: CertPaths) -> None:
    (tmp_path / "fleet.secret").write_bytes(os.urandom(MIN_SECRET_LEN))
    checked, _ = check_config_file(_write(tmp_path, server_cert, "fleet.secret"))
    assert checked.problems == ()


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (None, "cannot read the fleet secret"),
        (lambda p: p.mkdir(), "cannot read the fleet secret"),
        (lambda p: p.write_bytes(b"x" * 31), "expected at least 32 bytes, got 31"),
    ],
)
def test_a_missing_unreadable_or_short_secret_is_one_problem(
    tmp_path: Path, server_cert: CertPaths, make: Any, why: str
) -> None:
    secret = tmp_path / "fleet.secret"
    if make is not None:
        make(secret)
    checked, _ = check_config_file(_write(tmp_path, server_cert, "fleet.secret"))
    (problem,) = checked.problems
    assert problem.path == "fleet.secret_file"
    assert why in problem.message and str(secret) in problem.message
