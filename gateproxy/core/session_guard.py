"""The upstream session guard: see, strip and pin the session cookies apps mint for nobody.

Theory of operation
-------------------
Apps like Tomcat, Jetty, Express or PHP create a server-side session for every request that
carries no session cookie and announce it with ``Set-Cookie: JSESSIONID=...``. A prober or
crawler that never sends cookies makes one new session per request. The shell calls these
methods of one :class:`SessionGuard` per process (its pins are shared by the daemon's workers):

* :meth:`SessionGuard.request_cookie_for` before forwarding. With ``pin_probes``, a probe
  client (classed by the shell: ``probe_clients`` CIDRs or ``probe_user_agents``) whose GET or
  HEAD request carries none of the configured session cookies gets the session cookie the app
  gave that client earlier, so the app sees one session per prober (Tomcat's
  ``CrawlerSessionManagerValve``, at the front door). The shell adds it with :func:`add_cookie`.
* :meth:`SessionGuard.on_response` once the response head is in. It *observes*: a response
  that sets a configured session cookie for a request that carried none (as the client sent
  it, before pinning) is one ``minted`` session, counted in total, for probes, per listener,
  per normalised path and per client. It *strips* the configured session cookies from responses
  on ``stateless_paths`` (counted as ``stripped``); the shell applies the returned
  :class:`GuardAction`. And it *pins*: for a probe's cookie-less GET/HEAD it remembers the
  session cookies set, replacing an older pin (the app forgot the pinned session) and dropping
  one the app deletes (``Max-Age=0``).
* :meth:`SessionGuard.own_request_cookie` / :meth:`SessionGuard.on_own_response` for
  gateproxy's *own* health requests (active checks, pass-through fetches): they send back the
  session the app gave them, one per upstream server (pinned under client :data:`OWN_CLIENT`),
  and every session the app mints for them is counted like a probe's and in
  ``minted_by_health_checks``. The checker must not be the leak it exists to prevent.

Bounds. Every table has a hard cap. The per-path and per-client tables hold at most ``top_n``
entries each (:class:`TopTable`, a segmented LRU: keys seen once can only displace other keys
seen once, so a flood of distinct clients or paths cannot push out a steady offender). The
pinned sessions are at most ``max_pinned`` (LRU) and expire after ``pin_idle_timeout`` without
use; a pin longer than :data:`MAX_PIN_BYTES` is not kept (the pins live in a
:class:`~gateproxy.core.pins.PinStore`, shared by every worker of a daemon). Paths are
normalised before counting (:func:`normalise_path`: no query, no ``;jsessionid=`` parameters,
ids collapsed, bounded length) so one endpoint is one row.

Safety. Pinning shares one app session between the requests of one client address (and one
``scope``, the upstream): only probe-classed clients, only GET/HEAD, only when they sent no
session cookie of their own. Cookie values never appear in :meth:`SessionGuard.tables`.

Time is the ``now`` parameter of each call; nothing here reads a clock.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from gateproxy.core.config import SessionGuardConfig
from gateproxy.core.headers import cookie_names_in_request
from gateproxy.core.metrics import GuardCounters
from gateproxy.core.pins import MAX_PIN_BYTES, PinStore, memory_pins, parse_cookie_header

__all__ = [
    "MAX_PIN_BYTES",
    "NO_ACTION",
    "OWN_CLIENT",
    "GuardAction",
    "SessionGuard",
    "TopTable",
    "add_cookie",
    "normalise_path",
]

Headers = Iterable[tuple[bytes, bytes]]

#: The client name of gateproxy's own health requests (active checks, pass-through fetches).
OWN_CLIENT = "gateproxy-health-check"
MAX_PATH_SEGMENTS = 8
MAX_SEGMENT_CHARS = 48
_SAFE_METHODS = frozenset({b"GET", b"HEAD"})
_NUMBER = re.compile(r"[0-9]+")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEXISH = re.compile(r"[0-9a-fA-F]{8,}")
_TOKENISH = re.compile(r"[A-Za-z0-9_-]{16,}")
_MAX_AGE_ZERO = re.compile(rb";\s*max-age\s*=\s*(?:-\d+|0+)\s*(?:;|$)", re.IGNORECASE)


def normalise_path(target: bytes) -> str:
    """One table key per endpoint: ``/users/123/orders?x=1`` gives ``/users/{n}/orders``.

    The query and any ``;param`` (``;jsessionid=...``) are dropped; a segment of digits becomes
    ``{n}``, a UUID, hex string of 8+ or token of 16+ characters with a digit becomes ``{id}``;
    at most 8 segments are kept (then ``/...``) and segments are cut at 48 characters.
    """
    path = target.split(b"?", 1)[0].split(b"#", 1)[0].decode("utf-8", "replace")
    if not path.startswith("/"):
        return path[:MAX_SEGMENT_CHARS] or "/"
    segments = path.split("/")[1:]
    out: list[str] = []
    for segment in segments[:MAX_PATH_SEGMENTS]:
        segment = segment.split(";", 1)[0]
        out.append(_normalise_segment(segment))
    tail = "/..." if len(segments) > MAX_PATH_SEGMENTS else ""
    return "/" + "/".join(out) + tail


def _normalise_segment(segment: str) -> str:
    if _NUMBER.fullmatch(segment):
        return "{n}"
    has_digit = any(c.isdigit() for c in segment)
    if _UUID.fullmatch(segment) or (
        has_digit and (_HEXISH.fullmatch(segment) or _TOKENISH.fullmatch(segment))
    ):
        return "{id}"
    return segment[:MAX_SEGMENT_CHARS]


def add_cookie(headers: Headers, cookie: bytes) -> list[tuple[bytes, bytes]]:
    """``headers`` with ``cookie`` (``NAME=value; ...``) appended to the one ``Cookie`` header,
    or a new ``Cookie`` header when there is none (RFC 6265: at most one Cookie header)."""
    out: list[tuple[bytes, bytes]] = []
    added = False
    for name, value in headers:
        if name == b"cookie" and not added:
            value = value.rstrip(b"; ") + b"; " + cookie if value.strip() else cookie
            added = True
        out.append((name, value))
    if not added:
        out.append((b"cookie", cookie))
    return out


@dataclass(frozen=True, slots=True)
class GuardAction:
    """What the shell does to a response head: drop the ``Set-Cookie`` headers in ``strip``.

    ``minted`` lists the configured session cookies the response sets for a request that had
    none; ``pinned`` is True when the response's session was remembered for a probe client.
    """

    strip: frozenset[bytes] = frozenset()
    minted: tuple[bytes, ...] = ()
    pinned: bool = False

    def apply(self, headers: Headers) -> list[tuple[bytes, bytes]]:
        """``headers`` without the ``Set-Cookie`` headers of the cookies in ``strip``."""
        if not self.strip:
            return list(headers)
        strip = self.strip
        return [
            (n, v) for n, v in headers if n != b"set-cookie" or _set_cookie_name(v) not in strip
        ]


NO_ACTION = GuardAction()


def _set_cookie_name(value: bytes) -> bytes:
    name, eq, _ = value.split(b";", 1)[0].partition(b"=")
    return name.strip() if eq else b""


class TopTable:
    """At most ``capacity`` counters keyed by string: a segmented LRU.

    New keys enter a *probation* segment; a key counted again moves to the *protected* segment
    (about 4/5 of the capacity; when that is full its least recently used key goes back to
    probation). When the table is full, the least recently used probation key is evicted (a
    protected one only when probation is empty). Counts are since the key last entered.
    """

    __slots__ = ("_probation", "_protected", "_protected_cap", "capacity", "evictions")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._protected_cap = capacity - max(1, capacity // 5)
        self._probation: OrderedDict[str, int] = OrderedDict()
        self._protected: OrderedDict[str, int] = OrderedDict()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._probation) + len(self._protected)

    def __contains__(self, key: str) -> bool:
        return key in self._protected or key in self._probation

    def add(self, key: str, count: int = 1) -> None:
        """Add ``count`` to ``key``'s counter (creating it, evicting if full)."""
        if key in self._protected:
            self._protected[key] += count
            self._protected.move_to_end(key)
            return
        previous = self._probation.pop(key, None)
        if previous is not None:
            self._promote(key, previous + count)
            return
        if len(self) >= self.capacity:
            victim = self._probation if self._probation else self._protected
            victim.popitem(last=False)
            self.evictions += 1
        self._probation[key] = count

    def _promote(self, key: str, count: int) -> None:
        if self._protected_cap == 0:
            self._probation[key] = count
            return
        self._protected[key] = count
        if len(self._protected) > self._protected_cap:
            demoted, demoted_count = self._protected.popitem(last=False)
            self._probation[demoted] = demoted_count

    def get(self, key: str) -> int:
        return self._protected.get(key, self._probation.get(key, 0))

    def top(self, n: int | None = None) -> list[tuple[str, int]]:
        """The entries by count, highest first (ties: key order), at most ``n``."""
        items = sorted(
            [*self._protected.items(), *self._probation.items()], key=lambda kv: (-kv[1], kv[0])
        )
        return items if n is None else items[:n]


class SessionGuard:
    """Counts, strips and pins the apps' session cookies (module docstring for the rules)."""

    def __init__(
        self,
        config: SessionGuardConfig,
        *,
        counters: GuardCounters | None = None,
        pins: PinStore | None = None,
    ) -> None:
        """``pins`` is where pins live (default: this process only; ``net.shared`` gives one
        table that every worker of the daemon shares)."""
        self.config = config
        self.counters = counters if counters is not None else GuardCounters()
        self._cookies = frozenset(c.encode() for c in config.cookies)
        self._stateless = tuple(p.encode() for p in config.stateless_paths)
        self.paths = TopTable(config.top_n)
        self.clients = TopTable(config.top_n)
        self.by_listener: dict[str, int] = {}
        if pins is None:  # (not ``pins or ...``: an empty store is falsy)
            pins = memory_pins(max_entries=config.max_pinned, idle_timeout=config.pin_idle_timeout)
        self._pins = pins

    def _carries_session(self, request_headers: Headers) -> bool:
        return not self._cookies.isdisjoint(cookie_names_in_request(request_headers))

    def request_cookie_for(
        self,
        *,
        client: str,
        request_headers: Headers,
        is_probe: bool,
        method: bytes,
        now: float,
        scope: str = "",
    ) -> bytes | None:
        """The ``Cookie`` value to add to this request (see :func:`add_cookie`), or None.

        Only with ``pin_probes``, for a probe's GET/HEAD that carries no session cookie of its
        own, and only when the app gave that client (in ``scope``) a session before.
        """
        if not (self.config.pin_probes and is_probe and method in _SAFE_METHODS):
            return None
        if self._carries_session(request_headers):
            return None
        cookie = self._pins.lookup((client, scope), now=now)
        if cookie is not None:
            self.counters.pinned_reused += 1
        return cookie

    def on_response(
        self,
        *,
        request_headers: Headers,
        response_headers: Headers,
        path: bytes,
        client: str,
        is_probe: bool,
        method: bytes,
        now: float,
        listener: str = "",
        scope: str = "",
    ) -> GuardAction:
        """Observe one response head; return what to strip from it.

        ``request_headers`` are the client's own (before any pinned cookie was added);
        ``path`` is the request target (the query is ignored).
        """
        set_values = self._session_set_cookies(response_headers)
        if not set_values:
            return NO_ACTION
        carried = self._carries_session(request_headers)
        minted = () if carried else tuple(dict.fromkeys(name for name, _ in set_values))
        if minted:
            self._count_minted(path=path, client=client, is_probe=is_probe, listener=listener)
        strip = self._strip_for(path, set_values)
        pinned = False
        if self.config.pin_probes and is_probe and not carried and method in _SAFE_METHODS:
            kept, deleted = _kept_and_deleted(set_values)
            pinned = self._pins.update((client, scope), set_=kept, deleted=deleted, now=now)
        if not (strip or minted or pinned):
            return NO_ACTION
        return GuardAction(strip=strip, minted=minted, pinned=pinned)

    def _session_set_cookies(self, response_headers: Headers) -> list[tuple[bytes, bytes]]:
        found: list[tuple[bytes, bytes]] = []
        for name, value in response_headers:
            if name == b"set-cookie":
                cookie = _set_cookie_name(value)
                if cookie in self._cookies:
                    found.append((cookie, value))
        return found

    # --- gateproxy's own health requests ---------------------------------------------------------

    def own_request_cookie(self, *, upstream: str, server: str, now: float) -> bytes | None:
        """The ``Cookie`` value for one of gateproxy's own health requests to ``server``: the
        session the app set for an earlier one (from any process sharing the pins). Not tied
        to ``pin_probes``: no user is involved, gateproxy is the client."""
        return self._pins.lookup((OWN_CLIENT, own_scope(upstream, server)), now=now)

    def on_own_response(
        self,
        *,
        sent: bytes | None,
        response_headers: Headers,
        path: bytes,
        upstream: str,
        server: str,
        now: float,
    ) -> tuple[bytes, ...]:
        """Observe the response to one of gateproxy's own health requests; the cookies minted.

        A configured session cookie set with a value other than the one ``sent`` is a new app
        session: counted like a probe's (``minted``, ``minted_for_probes``, the top tables with
        client :data:`OWN_CLIENT`) and in ``minted_by_health_checks``, and remembered for the
        next request (``Max-Age=0`` forgets it).
        """
        set_values = self._session_set_cookies(response_headers)
        if not set_values:
            return ()
        kept, deleted = _kept_and_deleted(set_values)
        had = parse_cookie_header(sent)
        minted = tuple(name for name, value in kept.items() if had.get(name) != value)
        if minted:
            self._count_minted(path=path, client=OWN_CLIENT, is_probe=True, listener=None)
            self.counters.minted_by_health_checks += 1
        key = (OWN_CLIENT, own_scope(upstream, server))
        self._pins.update(key, set_=kept, deleted=deleted, now=now)
        return minted

    def _count_minted(
        self, *, path: bytes, client: str, is_probe: bool, listener: str | None
    ) -> None:
        self.counters.minted += 1
        if is_probe:
            self.counters.minted_for_probes += 1
        if listener is not None:
            self.by_listener[listener] = self.by_listener.get(listener, 0) + 1
        self.paths.add(normalise_path(path))
        self.clients.add(client)

    def _strip_for(self, path: bytes, set_values: list[tuple[bytes, bytes]]) -> frozenset[bytes]:
        if not self._stateless:
            return frozenset()
        bare = path.split(b"?", 1)[0]
        if not any(bare.startswith(prefix) for prefix in self._stateless):
            return frozenset()
        self.counters.stripped += len(set_values)
        return frozenset(name for name, _ in set_values)

    def expire(self, *, now: float) -> None:
        """Forget pinned sessions idle for ``pin_idle_timeout`` (also done lazily on use)."""
        self._pins.expire(now=now)

    def tables(self) -> dict[str, object]:
        """The ``session_guard`` tables for ``/stats`` (the counters come from ``counters``)."""
        return {
            "top_paths": [{"path": k, "minted": v} for k, v in self.paths.top()],
            "top_clients": [{"client": k, "minted": v} for k, v in self.clients.top()],
            "top_n": self.config.top_n,
            "by_listener": dict(self.by_listener),
            "pinned": {"entries": len(self._pins), "max_entries": self._pins.max_entries},
        }


def own_scope(upstream: str, server: str) -> str:
    """The pin scope of gateproxy's own health requests: one per server, not per upstream
    (apps keep sessions per server: one pin per upstream would make every other server mint)."""
    return f"{upstream} {server}"


def _kept_and_deleted(
    set_values: list[tuple[bytes, bytes]],
) -> tuple[dict[bytes, bytes], set[bytes]]:
    """The session cookies a response sets (name -> value) and those it deletes (Max-Age=0)."""
    deleted = {n for n, v in set_values if _MAX_AGE_ZERO.search(v)}
    kept = {
        n: v.split(b";", 1)[0].partition(b"=")[2].strip() for n, v in set_values if n not in deleted
    }
    return kept, deleted
