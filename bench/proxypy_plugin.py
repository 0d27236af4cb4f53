"""proxy.py reverse-proxy plugin routing / and /64k to the bench upstream (port in env
BENCH_UPSTREAM_PORT). Loaded by proxy.py from its own venv with PYTHONPATH=bench/."""
import os

from proxy.http.server import ReverseProxyBasePlugin

UPSTREAM = f"http://127.0.0.1:{os.environ.get('BENCH_UPSTREAM_PORT', '8080')}".encode()


class BenchReverseProxy(ReverseProxyBasePlugin):
    def routes(self):
        return [(r"/64k$", [UPSTREAM + b"/64k"]), (r"/$", [UPSTREAM + b"/"])]
