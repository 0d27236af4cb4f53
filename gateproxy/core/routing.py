"""Host and path of a request -> the route (and so the upstream) that serves it.

Theory of operation
-------------------
A listener's routes are tried in config order and the **first match wins** (no longest-prefix
search: put specific routes first). :class:`Router` compiles each :class:`RouteConfig` once into
bytes, so matching a request is a few ``startswith`` / ``endswith`` calls per route and no
allocation beyond normalising the Host once.

Host rules (``RouteConfig.host``):

* ``None`` matches every request, including one without a Host.
* ``"example.com"`` matches that host exactly, case-insensitively.
* ``"*.example.com"`` (nginx style) matches any host ending in ``.example.com`` with at least one
  label in front: ``a.example.com`` and ``a.b.example.com``, but not ``example.com``.
  Any other use of ``*`` is rejected with :class:`ValueError` when the router is built.
* The request's Host is lowercased, a ``:port`` suffix is ignored (``[::1]:8443`` -> ``[::1]``) and
  so is one trailing dot (``example.com.``). A request without a Host matches only host-less
  routes.

Path rules (``RouteConfig.path_prefix``):

* A plain, case-sensitive string prefix of the path, like nginx ``location /api``: ``/api``
  matches ``/api``, ``/api/v1`` *and* ``/apix``. Write ``/api/`` to require the slash.
* It is applied to the path part of the request target: the query (``?...``) is cut off first.
  An absolute-form target (``http://host/path?q``) is reduced to its path (``/path``); its
  authority is not used for host matching (the shell passes the host it trusts).
* No percent-decoding or dot-segment normalisation is done: routes choose an upstream, they are
  not an access-control mechanism.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gateproxy.core.config import RouteConfig

__all__ = ["Router", "normalize_host", "request_path"]


@dataclass(frozen=True, slots=True)
class _Compiled:
    exact: bytes | None  # exact host, or None
    suffix: bytes | None  # ".example.com" for "*.example.com", or None
    prefix: bytes
    route: RouteConfig


def normalize_host(host: bytes) -> bytes:
    """Lowercase a Host value and drop a ``:port`` suffix and one trailing dot."""
    host = host.strip().lower()
    if host.startswith(b"["):
        end = host.find(b"]")
        if end != -1:
            return host[: end + 1]
        return host
    colon = host.find(b":")
    if colon != -1:
        host = host[:colon]
    if host.endswith(b"."):
        host = host[:-1]
    return host


def request_path(target: bytes) -> bytes:
    """Return the path part of a request target: no query, no absolute-form scheme and authority."""
    if not target.startswith(b"/"):
        scheme_end = target.find(b"://")
        if scheme_end != -1:
            slash = target.find(b"/", scheme_end + 3)
            target = b"/" if slash == -1 else target[slash:]
    query = target.find(b"?")
    if query != -1:
        target = target[:query]
    return target


def _compile(route: RouteConfig) -> _Compiled:
    prefix = route.path_prefix.encode("utf-8")
    if route.host is None:
        return _Compiled(exact=None, suffix=None, prefix=prefix, route=route)
    pattern = route.host.encode("idna") if not route.host.isascii() else route.host.encode()
    if pattern.startswith(b"*."):
        suffix = normalize_host(pattern[1:])
        if b"*" in suffix or len(suffix) < 2:
            raise ValueError(f"route host {route.host!r}: '*' is only allowed as '*.domain'")
        return _Compiled(exact=None, suffix=suffix, prefix=prefix, route=route)
    if b"*" in pattern:
        raise ValueError(f"route host {route.host!r}: '*' is only allowed as '*.domain'")
    return _Compiled(exact=normalize_host(pattern), suffix=None, prefix=prefix, route=route)


class Router:
    """Routes compiled once; :meth:`match` picks the first route matching a request."""

    __slots__ = ("_compiled",)

    def __init__(self, routes: Sequence[RouteConfig]) -> None:
        self._compiled = tuple(_compile(route) for route in routes)

    def match(self, *, host: bytes | None, path: bytes) -> RouteConfig | None:
        """Return the first route matching ``host`` (a Host value) and ``path`` (a target)."""
        path = request_path(path)
        norm = None if host is None else normalize_host(host)
        for c in self._compiled:
            if not path.startswith(c.prefix):
                continue
            if c.exact is not None:
                if norm != c.exact:
                    continue
            elif c.suffix is not None and (
                norm is None or len(norm) <= len(c.suffix) or not norm.endswith(c.suffix)
            ):
                continue
            return c.route
        return None
