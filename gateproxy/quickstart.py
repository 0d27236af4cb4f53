"""``gateproxy demo``: a generated self-signed ECDSA certificate, the built-in demo upstream on
loopback and the proxy in front of it, in one process. Prints the curl line to try it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import trio

from gateproxy.certgen import generate_self_signed, write_cert_pair
from gateproxy.core.config import Config, load_config_data
from gateproxy.daemon import Daemon
from gateproxy.demo import open_demo_listeners, serve_demo_upstream
from gateproxy.errors import first_error
from gateproxy.net.listen_slots import ListenError
from gateproxy.net.listener import bound_address


def demo_config(*, cert: Path, key: Path, upstream: str, port: int, admin_port: int) -> Config:
    """The demo's config: one TLS listener with a health check, one upstream, the admin API."""
    return load_config_data(
        {
            "listeners": [
                {
                    "name": "demo",
                    "bind": f"127.0.0.1:{port}",
                    "tls": {"certificates": [{"cert": str(cert), "key": str(key)}]},
                    "health_checks": [{"path": "/healthz", "upstream": "demo"}],
                    "routes": [{"path_prefix": "/", "upstream": "demo"}],
                }
            ],
            "upstreams": {"demo": {"servers": [upstream]}},
            "admin": {"bind": f"127.0.0.1:{admin_port}"},
        },
        source="<demo>",
    )


def run_demo(*, port: int, admin_port: int) -> int:
    """Run the demo until Ctrl-C."""
    with tempfile.TemporaryDirectory(prefix="gateproxy-demo-") as tmp:
        cert_pem, key_pem = generate_self_signed(hosts=["localhost", "127.0.0.1", "::1"])
        cert, key = write_cert_pair(
            out_dir=Path(tmp), name="demo", cert_pem=cert_pem, key_pem=key_pem
        )
        try:
            trio.run(_demo_main, cert, key, port, admin_port)
        except BaseExceptionGroup as group:
            exc = first_error(group)
            if isinstance(exc, ListenError):  # name the option, not the demo's config key
                raise exc.at("--admin-port" if exc.key_path == "admin.bind" else "--port") from None
            raise exc from None
    return 0


async def _demo_main(cert: Path, key: Path, port: int, admin_port: int) -> None:
    async with trio.open_nursery() as nursery:
        upstream_sockets = await open_demo_listeners("127.0.0.1", 0)
        host, up_port = bound_address(upstream_sockets)
        await nursery.start(serve_demo_upstream, upstream_sockets)
        config = demo_config(
            cert=cert, key=key, upstream=f"{host}:{up_port}", port=port, admin_port=admin_port
        )
        daemon = Daemon(config, base_dir=cert.parent, source="<demo>")
        await nursery.start(daemon.serve)
        port = daemon.addresses["demo"][1]
        admin_port = daemon.admin_address[1] if daemon.admin_address else admin_port
        print(
            f"\ngateproxy demo is running (Ctrl-C to stop).\n"
            f"  upstream: http://{host}:{up_port}  (built-in demo app)\n"
            f"  proxy:    https://127.0.0.1:{port}  (self-signed certificate {cert})\n"
            f"  admin:    http://127.0.0.1:{admin_port}/stats  and  /metrics\n\n"
            f"Try it:\n"
            f"  curl --cacert {cert} https://localhost:{port}/\n"
            f"  curl --cacert {cert} https://localhost:{port}/healthz\n",
            flush=True,
        )
        await _wait_for_daemon_exit(daemon)
        nursery.cancel_scope.cancel()


async def _wait_for_daemon_exit(daemon: Daemon) -> None:
    await daemon.stopped.wait()
