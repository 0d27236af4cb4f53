"""gateproxy beside a real nginx on the same certificates and ``ssl_session_ticket_key`` file:
a session made on nginx resumes on gateproxy and one made on gateproxy resumes on nginx, TLS 1.2
(tickets) and TLS 1.3, whatever nginx's ``ssl_session_cache``, with SNI and with an ECDSA + RSA
pair. The ticket keys alone are not enough: OpenSSL resumes only sessions made under the same
session id context, which gateproxy computes the way nginx does (``session_id_context: nginx``).
"""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trustme

from tests.conftest import CertPaths
from tests.helpers.clients import Response, https_request
from tests.helpers.nginx import NginxServer, nginx_binary, running_nginx
from tests.helpers.proxy import address, proxy_config, running_proxy
from tests.helpers.tls_sessions import session_of
from tests.helpers.upstreams import RecordingUpstream

pytestmark = pytest.mark.skipif(
    nginx_binary() is None, reason="nginx is not installed (.ci/run installs it as root)"
)

VERSIONS = ("TLSv1.2", "TLSv1.3")


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh nginx-format key file, written by the installed console script (once: it takes
    a second or two to start)."""
    out = tmp_path_factory.mktemp("keys") / "ticket.key"
    script = Path(sys.executable).with_name("gateproxy")
    argv = [str(script), "keys", "new", "--format", "nginx", "--out", str(out)]
    subprocess.run(argv, check=True, capture_output=True, timeout=60)
    return out


def _gateproxy(
    certificates: list[CertPaths], key: Path, upstream: str, **tls: Any
) -> dict[str, Any]:
    listener = {
        "name": "public",
        "bind": "127.0.0.1:0",
        "tls": {
            "certificates": [{"cert": str(c.cert), "key": str(c.key)} for c in certificates],
            "session_cache": {"mode": "off"},  # only the shared tickets can resume
            "tickets": {"key_files": [str(key)], "key_format": "nginx"},
            **tls,
        },
        "routes": [{"path_prefix": "/", "upstream": "app"}],
    }
    return proxy_config([listener], {"app": {"servers": [upstream]}})


async def _both_ways(
    nginx: str, gateproxy: str, ca: trustme.CA, *, server_hostname: str = "localhost"
) -> dict[tuple[str, str], bool]:
    """For each version: does nginx's session resume on gateproxy, and gateproxy's on nginx?"""

    async def get(where: str, version: str, session: ssl.SSLSession | None = None) -> Response:
        resp = await https_request(
            where, ca=ca, tls_version=version, server_hostname=server_hostname, session=session
        )
        assert resp.status == 200
        return resp

    outcomes = {}
    with trio.fail_after(30):
        for version in VERSIONS:
            on_nginx = await get(nginx, version)
            on_gateproxy = await get(gateproxy, version)
            assert not on_nginx.session_reused and not on_gateproxy.session_reused
            resumed = await get(gateproxy, version, session_of(on_nginx))
            outcomes[version, "nginx -> gateproxy"] = resumed.session_reused
            resumed = await get(nginx, version, session_of(on_gateproxy))
            outcomes[version, "gateproxy -> nginx"] = resumed.session_reused
    return outcomes


@pytest.mark.parametrize("session_cache", [None, "none", "off", "shared:SSL:1m"])
async def test_sessions_resume_across_nginx_and_gateproxy(
    tmp_path: Path,
    ca: trustme.CA,
    key: Path,
    server_cert: CertPaths,
    session_cache: str | None,
) -> None:
    nginx_server = NginxServer([server_cert], key, session_cache=session_cache)
    async with (
        RecordingUpstream() as up,
        running_proxy(_gateproxy([server_cert], key, up.address)) as daemon,
        running_nginx(tmp_path / "nginx", [nginx_server]) as (host, port),
    ):
        outcomes = await _both_ways(f"{host}:{port}", address(daemon), ca)
    assert outcomes == dict.fromkeys(outcomes, True)
    assert len(outcomes) == 4


async def test_an_ecdsa_and_rsa_pair_resumes_across_nginx_and_gateproxy(
    tmp_path: Path,
    ca: trustme.CA,
    key: Path,
    server_cert: CertPaths,
    rsa_server_cert: CertPaths,
) -> None:
    """nginx's context covers every certificate of the server block, in its order."""
    pair = [server_cert, rsa_server_cert]
    async with (
        RecordingUpstream() as up,
        running_proxy(_gateproxy(pair, key, up.address)) as daemon,
        running_nginx(tmp_path / "nginx", [NginxServer(pair, key)]) as (host, port),
    ):
        outcomes = await _both_ways(f"{host}:{port}", address(daemon), ca)
    assert outcomes == dict.fromkeys(outcomes, True)


@pytest.mark.parametrize("server_hostname", ["localhost", "example.test"])
async def test_sni_sessions_resume_across_nginx_and_gateproxy(
    tmp_path: Path,
    ca: trustme.CA,
    key: Path,
    server_cert: CertPaths,
    second_cert: CertPaths,
    server_hostname: str,
) -> None:
    """nginx: a default server and an ``example.test`` server; gateproxy: the same certificates,
    the default first. The client checks the host name, so each side served the SNI certificate."""
    servers = [
        NginxServer([server_cert], key),
        NginxServer([second_cert], key, server_name="example.test"),
    ]
    async with (
        RecordingUpstream() as up,
        running_proxy(_gateproxy([server_cert, second_cert], key, up.address)) as daemon,
        running_nginx(tmp_path / "nginx", servers) as (host, port),
    ):
        outcomes = await _both_ways(
            f"{host}:{port}", address(daemon), ca, server_hostname=server_hostname
        )
    assert outcomes == dict.fromkeys(outcomes, True)


async def test_pythons_session_id_context_does_not_resume_with_nginx(
    tmp_path: Path, ca: trustme.CA, key: Path, server_cert: CertPaths
) -> None:
    """The field defect, kept as an option: same keys, Python's context, no resumption."""
    nginx_server = NginxServer([server_cert], key)
    async with RecordingUpstream() as up:
        config = _gateproxy([server_cert], key, up.address, session_id_context="python")
        async with (
            running_proxy(config) as daemon,
            running_nginx(tmp_path / "nginx", [nginx_server]) as (host, port),
        ):
            outcomes = await _both_ways(f"{host}:{port}", address(daemon), ca)
    assert outcomes == dict.fromkeys(outcomes, False)
