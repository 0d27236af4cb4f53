"""gateproxy: a TLS-terminating HTTP/1.1 reverse proxy that never leaks sessions."""

from gateproxy.compiled import use_pure_python as _use_pure_python

__version__ = "0.1.0"

_use_pure_python()  # (a no-op unless core modules were compiled: see gateproxy.compiled)
