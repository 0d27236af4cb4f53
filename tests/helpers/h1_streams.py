"""Hypothesis strategies for HTTP/1.1 byte streams (valid and hostile), and the event
description the differential tests of the parser pair compare (``tests/core/test_h1_*.py``).

The messages are built from parts (:class:`Parts`): all valid in a clean message, one or two
hostile in a hostile one, so a run covers the fast path of ``core.h1_heads``, the h11 slow path,
and the bytes h11 refuses. ``describe`` turns an event of gateproxy's (``core.http_events``) or
of h11's into the same plain tuple, so a transcript of one parser can be compared with h11's.
"""

from __future__ import annotations

import itertools
import re
from typing import Any, Protocol

import h11
from hypothesis import settings
from hypothesis import strategies as st

Fields = list[tuple[bytes, bytes]]


def key_property(examples: int) -> settings:
    """More examples than the profile's for a key property (cheap examples only); a deeper
    profile (HYPOTHESIS_PROFILE=deep) still gets all of its own."""
    return settings(max_examples=max(examples, settings.default.max_examples))


class Parts:
    """Draws the parts of one message. A clean message (half of them) has only valid parts; a
    hostile one has one or two faults: the parts drawn at those positions come from the
    hostile values. Near-valid messages probe the edges of the fast path best, and the fast
    path still sees plenty of plain traffic."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw
        self.hostile = draw(st.booleans())
        self.faults = (
            draw(st.sets(st.integers(0, 20), min_size=1, max_size=2)) if self.hostile else set()
        )
        self.picked = 0

    def pick(self, good: list[bytes], bad: list[bytes]) -> bytes:
        self.picked += 1
        if bad and self.picked - 1 in self.faults:
            return self.draw(st.sampled_from(bad))
        return self.draw(st.sampled_from(good))

    def maybe(self, good: list[bytes], bad: list[bytes], *, one_in: int = 3) -> bytes | None:
        return self.pick(good, bad) if self._one_in(one_in) else None

    def _one_in(self, n: int) -> bool:
        # A value inside the range: hypothesis draws the ends of a range far more often.
        return self.draw(st.integers(0, n)) == 1

    def fields(self) -> Fields:
        """A few ordinary fields (odd names and values when hostile)."""
        count = self.draw(st.integers(0, 3))
        return [
            (
                self.pick(
                    [b"X-A", b"Cookie", b"Accept", b"user-agent"], [b"X ", b" X", b"", b"X\x01"]
                ),
                self.pick([b" 0", b" a b", b"1", b"\t", b" x\ty ", b"\xff", b""], _BAD_VALUES),
            )
            for _ in range(count)
        ]

    def length(self, body: bytes) -> Fields:
        """A Content-Length for ``body``: right, or (hostile) wrong, listed or repeated."""
        right = b"%d" % len(body)
        wrong = [b"-1", right + b", " + right, b"x", b"%d" % (len(body) + 1), b"", b"+1"]
        value = self.pick([b" " + right, b" 0" + right], wrong)
        repeat = self.pick([b""], [value, b" 7"])
        return [(b"Content-Length", v) for v in (value, repeat) if v]

    def chunked(self, body: bytes) -> bytes:
        """``body`` in chunks (with extensions and trailers, or malformed, when hostile)."""
        cuts = sorted(self.draw(st.lists(st.integers(0, len(body)), max_size=3)))
        bounds = zip([0, *cuts], [*cuts, len(body)], strict=True)
        out = b""
        for piece in [body[a:b] for a, b in bounds if b > a]:
            size = b"%x" % len(piece)
            size = self.pick([size, size.upper() + b";ext=1"], [b"0x1", b"zz", b"", b"-1"])
            out += size + b"\r\n" + piece + self.pick([b"\r\n"], [b"\n", b"", b"x\r\n"])
        trailer = self.pick([b"", b"X-T: 1\r\n"], [b"Content-Length: 1\r\n", b"bad\r\n"])
        return out + b"0\r\n" + trailer + b"\r\n"

    def framed(self, head: bytes, body: bytes, framing: str) -> bytes:
        if framing in ("chunked", "both"):
            return head + self.chunked(body)
        return head + (b"" if framing == "none" else body)


_BAD_VALUES = [b" a\x01b", b"\x7f", b" a\rb", b" \x00", b"\x0b"]
_CONNECTION = [b"close", b"keep-alive", b"Keep-Alive", b"close, keep-alive", b"Close"]
_BAD_CONNECTION = [b"upgrade", b"x-a", b"", b"close,", b"keep-alive, x-a"]
_CODINGS = [b"chunked", b"Chunked"]
_BAD_CODINGS = [b"gzip", b"gzip, chunked", b"chunked, chunked", b"chunked, gzip"]


def _fields(fields: Fields, end: bytes) -> bytes:
    return b"".join(b"%s:%s%s" % (n, v, end) for n, v in fields) + end


@st.composite
def request_message(draw: st.DrawFn) -> bytes:
    """One request: a head, clean or hostile, and a body framed (or misframed) by it."""
    parts = Parts(draw)
    method = parts.pick(
        [b"GET", b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS"],
        [b"TRACE", b"get", b"G\x00T", b"CONNECT", b""],
    )
    target = parts.pick([b"/", b"/a?b=%20", b"/~x"], [b"*", b"/#x", b"http://h/", b"/\x7f"])
    version = parts.pick([b"1.1", b"1.1", b"1.0"], [b"2.0", b"1.2", b"0.9"])
    end = parts.pick([b"\r\n"], [b"\n", b"\r"])
    hosts = (
        parts.pick([b"1"], [b"0", b"2"]) if version == b"1.1" else parts.pick([b"0", b"1"], [b"2"])
    )
    fields: Fields = [
        (
            b"Host",
            parts.pick([b" a.test", b"a:8", b" [::1]:9", b""], [b"a/b", b" a b", b"a:8x", b"u@a"]),
        )
        for _ in range(int(hosts))
    ]
    body = draw(st.binary(max_size=12))
    framing = draw(st.sampled_from(["none", "length", "length", "chunked", "both"]))
    if not parts.hostile:
        framing = "length" if framing == "both" else framing
        body = b"" if method in (b"GET", b"HEAD") else body  # (a body there is refused)
    if framing in ("length", "both"):
        fields += parts.length(body)
    if framing in ("chunked", "both"):
        fields.append((b"Transfer-Encoding", parts.pick(_CODINGS, _BAD_CODINGS)))
    for name, good, bad, one_in in [
        (b"Connection", _CONNECTION, _BAD_CONNECTION, 3),
        (b"Expect", [b"100-continue"], [b"100-Continue", b"x"], 6),
        (b"Upgrade", [b"websocket"], [], 10),
    ]:
        value = parts.maybe(good, bad, one_in=one_in)
        if value is not None:
            fields.append((name, value))
    fields += parts.fields()
    head = b"%s %s HTTP/%s%s" % (method, target, version, end)
    head += _fields(draw(st.permutations(fields)), end)
    return parts.framed(head, body, framing)


@st.composite
def response_message(draw: st.DrawFn) -> bytes:
    """A final response (maybe after 1xx ones), framed by Content-Length, chunked, or the end
    of the connection, clean or hostile; sometimes (hostile) with bytes after it."""
    parts = Parts(draw)
    out = b""
    for _ in range(draw(st.sampled_from([0, 0, 0, 0, 0, 1, 2]))):
        out += parts.pick(
            [b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"],
            [b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", b"HTTP/1.1 100\r\n\n"],
        )
    version = parts.pick([b"1.1", b"1.1", b"1.0"], [b"2.0", b"1.2", b"1"])
    status = parts.pick(
        [b"200", b"200", b"201", b"204", b"304", b"404", b"500"], [b"600", b"099", b"2000", b"20x"]
    )
    reason = parts.pick([b" OK", b"", b" Not Found", b" "], [b" \x01", b"\tOK"])
    end = parts.pick([b"\r\n"], [b"\n", b"\r"])
    body = draw(st.binary(max_size=12))
    framing = draw(st.sampled_from(["none", "length", "length", "length", "chunked", "both"]))
    if framing == "both" and not parts.hostile:
        framing = "length"
    fields: Fields = []
    if framing in ("length", "both"):
        fields += parts.length(body)
    if framing in ("chunked", "both"):
        fields.append((b"Transfer-Encoding", parts.pick(_CODINGS, _BAD_CODINGS)))
    connection = parts.maybe(_CONNECTION, _BAD_CONNECTION)
    if connection is not None:
        fields.append((b"Connection", connection))
    fields += parts.fields()
    head = b"HTTP/%s %s%s%s" % (version, status, reason, end)
    head += _fields(draw(st.permutations(fields)), end)
    # "none": no framing header, so the body runs until the server closes.
    out += parts.framed(head, body, "length" if framing == "none" else framing)
    return out + parts.pick([b""], [b"HTTP/1.1 200 OK\r\n\r\n", b"x"])


LIKELY = st.sampled_from([True, True, False])
SOMETIMES = st.sampled_from([False, False, False, True])


@st.composite
def feeds(draw: st.DrawFn, data: bytes, *, max_cuts: int = 6) -> list[list[bytes]]:
    """``data`` as the peer's writes: cut at random points (and, likely, just after each blank
    line: a head and its body in separate writes), the pieces grouped (each group is fed at
    once when the parser needs data, so several ``receive_data`` calls may come before a
    ``next_event``), likely followed by the end of file (``b""``), likely in the last group."""
    top = max(len(data) - 1, 1)
    points = set(draw(st.lists(st.integers(1, top), max_size=max_cuts)))
    points.update(m.end() for m in re.finditer(b"\r?\n\r?\n", data) if draw(LIKELY))
    bounds = [0, *sorted(p for p in points if p < len(data)), len(data)]
    groups: list[list[bytes]] = []
    for piece in [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]:
        if groups and draw(st.booleans()):
            groups[-1].append(piece)
        else:
            groups.append([piece])
    if draw(LIKELY):
        if groups and draw(LIKELY):
            groups[-1].append(b"")
        else:
            groups.append([b""])
    return groups


class Side(Protocol):
    """One parser in a differential test (ours or h11's) behind the same small interface;
    ``next_event`` gives None when it needs more data."""

    def receive(self, data: bytes) -> None: ...
    def next_event(self) -> Any: ...


class H11Side:
    """The h11 reference of a differential test: NEED_DATA as None, and the bytes it has
    consumed (for head sizes: ``consumed()`` at the end of a head, less at a cycle's start)."""

    def __init__(self, conn: h11.Connection) -> None:
        self.conn = conn
        self.fed = 0

    def receive(self, data: bytes) -> None:
        self.fed += len(data)
        self.conn.receive_data(data)

    def next_event(self) -> Any:
        event = self.conn.next_event()
        assert event is not h11.PAUSED  # (only asked before the end of each message)
        return None if event is h11.NEED_DATA else event

    def consumed(self) -> int:
        return self.fed - len(self.conn.trailing_data[0])


def next_fed(side: Side, pending: list[list[bytes]]) -> Any:
    """``side``'s next event, feeding it the next group of ``pending`` pieces each time it
    needs data; None once it needs data and nothing is left."""
    while (event := side.next_event()) is None:
        if not pending:
            return None
        for piece in pending.pop(0):
            side.receive(piece)
    return event


def describe(event: Any) -> tuple[Any, ...]:
    """An event of gateproxy's or h11's as a plain tuple (both use the same class names)."""
    name = type(event).__name__
    if name == "Request":
        return (name, event.method, event.target, event.http_version, list(event.headers))
    if name in ("Response", "InformationalResponse"):
        return (name, event.status_code, event.reason, event.http_version, list(event.headers))
    if name == "Data":
        return (name, bytes(event.data))
    if name == "EndOfMessage":
        return (name, list(event.headers))
    assert name == "ConnectionClosed", event
    return (name,)


def merge_data(transcript: list[tuple[Any, ...]], entry: tuple[Any, ...]) -> None:
    """Append ``entry``; consecutive Data entries become one (how a body is cut into Data
    events depends on the reads, not on the framing)."""
    if entry[0] == "Data" and transcript and transcript[-1][0] == "Data":
        transcript[-1] = ("Data", transcript[-1][1] + entry[1])
    elif entry != ("Data", b""):
        transcript.append(entry)
