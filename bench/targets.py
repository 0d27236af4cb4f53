"""The things under test: the shared upstream, nginx, HAProxy, gateproxy (and proxy.py).

Each `start_*` writes a config into the scratch dir, starts the server pinned to the proxy CPU(s)
and returns a `Target`, or raises `StartError` with the server's own last words.
"""
from __future__ import annotations

import json
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from procs import Proc, free_port

SMALL_BODY = "gateproxy bench: a small response body of exactly sixty-four b\n"  # 64 bytes
BIG_SIZE = 64 * 1024


class StartError(Exception):
    pass


@dataclass(frozen=True)
class Setup:
    """Server-side settings shared by every proxy within one scenario group."""
    cert: str = "ecdsa"      # ecdsa | rsa
    workers: int = 1
    tickets: bool = True     # False: TLS 1.2 resumption only through session IDs


@dataclass
class Ctx:
    scratch: Path
    certs: dict
    cores: dict
    gateproxy_bin: str
    proxypy_bin: str | None = None
    upstream_port: int = 0
    procs: list = field(default_factory=list)


@dataclass
class Target:
    name: str
    proc: Proc
    port: int
    scheme: str = "https"
    admin_port: int | None = None

    def url(self, path: str = "/") -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def stats(self) -> dict | None:
        if self.admin_port is None:
            return None
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/stats",
                                        timeout=3) as r:
                return json.load(r)
        except (OSError, ValueError):
            return None


def _launch(ctx: Ctx, name: str, argv: list[str], port: int, cpus: str,
            extra_port: int | None = None, timeout: float = 15.0, env: dict | None = None) -> Proc:
    proc = Proc(name, argv, ctx.scratch, cpus=cpus, env=env)
    ctx.procs.append(proc)
    ok = proc.wait_port(port, timeout) and (extra_port is None or proc.wait_port(extra_port, 5))
    if not ok:
        tail = proc.stderr_tail()
        proc.stop()
        raise StartError(f"{name} did not start: {tail}")
    return proc


def _nginx_common(ctx: Ctx, tag: str, workers: int) -> str:
    s = ctx.scratch
    temps = "".join(f"  {k}_temp_path {s}/tmp-{tag}-{k};\n"
                    for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return (f"user root;\nworker_processes {workers};\ndaemon off;\npid {s}/{tag}.pid;\n"
            f"error_log {s}/{tag}.error.log warn;\nworker_rlimit_nofile 65536;\n"
            "events { worker_connections 16384; }\n"
            f"http {{\n  access_log off;\n{temps}")


def start_upstream(ctx: Ctx) -> Target:
    """nginx serving / (64 B) and /64k (a 64 KiB file) over plain HTTP, pinned to the load CPU."""
    www = ctx.scratch / "www"
    www.mkdir(exist_ok=True)
    (www / "64k").write_bytes(bytes(range(256)) * (BIG_SIZE // 256))
    port = free_port()
    conf = _nginx_common(ctx, "upstream", 1) + (
        "  sendfile on;\n  keepalive_requests 10000000;\n  keepalive_timeout 300s;\n"
        f"  server {{\n    listen 127.0.0.1:{port} reuseport backlog=4096;\n"
        f"    location = /64k {{ root {www}; default_type application/octet-stream; }}\n"
        f"    location / {{ default_type text/plain; return 200 \"{SMALL_BODY[:-1]}\\n\"; }}\n"
        "  }\n}\n")
    path = ctx.scratch / "upstream.conf"
    path.write_text(conf)
    proc = _launch(ctx, "upstream", ["nginx", "-c", str(path)], port, ctx.cores["load"])
    ctx.upstream_port = port
    return Target("direct", proc, port, scheme="http")


def _cpus(ctx: Ctx, setup: Setup) -> str:
    return ctx.cores["proxy2"] if setup.workers > 1 else ctx.cores["proxy"]


def start_nginx(ctx: Ctx, setup: Setup) -> Target:
    port, cert = free_port(), ctx.certs[setup.cert]
    conf = _nginx_common(ctx, "nginx", setup.workers) + (
        f"  upstream app {{ server 127.0.0.1:{ctx.upstream_port}; keepalive 64; }}\n"
        "  ssl_protocols TLSv1.2 TLSv1.3;\n  ssl_session_cache shared:SSL:10m;\n"
        f"  ssl_session_tickets {'on' if setup.tickets else 'off'};\n"
        f"  server {{\n    listen 127.0.0.1:{port} ssl backlog=4096;\n"
        f"    ssl_certificate {cert['cert']};\n    ssl_certificate_key {cert['key']};\n"
        "    location / { proxy_pass http://app; proxy_http_version 1.1;\n"
        "      proxy_set_header Connection \"\"; }\n  }\n}\n")
    path = ctx.scratch / "nginx.conf"
    path.write_text(conf)
    return Target("nginx", _launch(ctx, "nginx", ["nginx", "-c", str(path)], port,
                                   _cpus(ctx, setup)), port)


def start_haproxy(ctx: Ctx, setup: Setup) -> Target:
    port, cert = free_port(), ctx.certs[setup.cert]
    tickets = "" if setup.tickets else " no-tls-tickets"
    conf = (f"global\n  nbthread {setup.workers}\n  maxconn 8000\n"
            "  ssl-default-bind-options ssl-min-ver TLSv1.2\n"
            "defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n"
            "  timeout server 60s\n  timeout http-keep-alive 60s\n"
            f"frontend fe\n  bind 127.0.0.1:{port} ssl crt {cert['combined']}{tickets}\n"
            "  default_backend app\n"
            f"backend app\n  http-reuse always\n  server s1 127.0.0.1:{ctx.upstream_port}\n")
    path = ctx.scratch / "haproxy.cfg"
    path.write_text(conf)
    return Target("haproxy", _launch(ctx, "haproxy", ["haproxy", "-db", "-f", str(path)], port,
                                     _cpus(ctx, setup)), port)


def gateproxy_yaml(ctx: Ctx, setup: Setup, port: int, admin: int) -> str:
    cert = ctx.certs[setup.cert]
    tickets = "" if setup.tickets else "\n      tickets: {enabled: false}"
    return (f"workers: {setup.workers}\nlisteners:\n  - name: bench\n"
            f"    bind: \"127.0.0.1:{port}\"\n    tls:\n"
            f"      certificates: [{{cert: {cert['cert']}, key: {cert['key']}}}]\n"
            f"      session_cache: {{mode: lru, max_entries: 10000}}{tickets}\n"
            "    routes: [{path_prefix: /, upstream: app}]\n"
            f"upstreams:\n  app: {{servers: [\"127.0.0.1:{ctx.upstream_port}\"]}}\n"
            f"admin: {{bind: \"127.0.0.1:{admin}\"}}\naccess_log: {{path: \"off\"}}\n")


def start_gateproxy(ctx: Ctx, setup: Setup) -> Target:
    port, admin = free_port(), free_port()
    path = ctx.scratch / "gateproxy.yaml"
    path.write_text(gateproxy_yaml(ctx, setup, port, admin))
    argv = [ctx.gateproxy_bin, "run", "-c", str(path)]
    proc = _launch(ctx, "gateproxy", argv, port, _cpus(ctx, setup), extra_port=admin)
    return Target("gateproxy", proc, port, admin_port=admin)


STARTERS = {"nginx": start_nginx, "haproxy": start_haproxy, "gateproxy": start_gateproxy}


def check_target(t: Target) -> None:
    """One GET / through the target; raises StartError unless it returns the upstream's body."""
    import ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        with urllib.request.urlopen(t.url("/"), timeout=5, context=ctx) as r:
            body = r.read().decode(errors="replace")
    except (OSError, ValueError) as exc:
        raise StartError(f"{t.name} started but GET / failed: {exc}") from exc
    if body != SMALL_BODY:
        raise StartError(f"{t.name} started but GET / returned {body[:80]!r}")
