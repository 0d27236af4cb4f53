"""gateproxy: a TLS-terminating HTTP/1.1 reverse proxy that never leaks sessions."""

__version__ = "0.1.0"
