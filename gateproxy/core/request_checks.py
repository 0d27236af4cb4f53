"""The checks a request passes before anything is forwarded, and gateproxy's own answers.

The connection machine (``core.machine``) asks, in this order: :func:`head_refusal` for every
request (the raw-head rules of ``core.request_rules`` on a slow-path head, ``max_header_bytes``);
then, for a request that is not a health check, :func:`forward_refusal` (the parsed-head rules,
``max_headers``, a ``Content-Length`` over ``max_body_bytes``). Each returns ``(status, rule)``
or None; the rule name is what ``listeners.<name>.limits.<rule>`` counts. A head the fast parser
accepted passes every request rule by construction (``core.h1_heads``), so those are skipped.

:func:`error_answer` is the small text answer gateproxy gives for a status of its own, and
:func:`answer_headers` adds ``Date`` and ``Connection: close`` to any local answer.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Final

from gateproxy.core.config import LimitsConfig
from gateproxy.core.forwarding import header
from gateproxy.core.h1_server import ServerConnection
from gateproxy.core.health import HealthAnswer
from gateproxy.core.http_events import Headers, Request
from gateproxy.core.request_rules import Rejection, raw_head_problem, reject_reason

#: Error answers after which the connection always closes (the framing cannot be trusted).
CLOSING_STATUSES: Final = frozenset({400, 408, 413, 431, 500, 501, 505})
REASONS: Final = {status.value: status.phrase.encode() for status in HTTPStatus}
_TEXT: Final = b"text/plain; charset=utf-8"


def head_refusal(server: ServerConnection, limits: LimitsConfig) -> Rejection | None:
    """Rules on the request head as it arrived."""
    if not server.head_was_fast:
        problem = raw_head_problem(server.raw_head())
        if problem is not None:
            return problem
    if server.head_size > limits.max_header_bytes:
        return 431, "max_header_bytes"
    return None


def forward_refusal(
    request: Request, *, head_was_fast: bool, limits: LimitsConfig
) -> Rejection | None:
    """Rules on a request that would be forwarded."""
    refused = None if head_was_fast else reject_reason(request)
    if refused is not None:
        return refused
    fields = request.headers
    if len(fields) > limits.max_headers:
        return 431, "max_headers"
    length = header(fields, b"content-length")
    if length is not None and length.isdigit() and int(length) > limits.max_body_bytes:
        return 413, "max_body_bytes"
    return None


def protocol_refusal(server: ServerConnection, *, status: int, message: str) -> Rejection:
    """What to answer when the parser refused the client's bytes (h11's status hint, or the
    rule a raw-head check names more precisely)."""
    problem = None if server.head_was_fast else raw_head_problem(server.raw_head())
    if problem is not None and status != 431:
        return problem
    if status == 431 or "too long" in message.lower():
        return 431, "max_header_bytes"
    return status, ""


def error_answer(status: int) -> HealthAnswer:
    """gateproxy's own answer for ``status``: a one-line text body."""
    phrase = REASONS.get(status, b"Error")
    body = phrase + b"\n"
    headers = ((b"content-type", _TEXT), (b"content-length", b"%d" % len(body)))
    return HealthAnswer(status, headers, body)


def answer_headers(answer: HealthAnswer, *, date: bytes, close: bool) -> Headers:
    """A local answer's headers with ``Date`` (when known) and ``Connection: close``."""
    headers = list(answer.headers)
    if date:
        headers.append((b"date", date))
    if close:
        headers.append((b"connection", b"close"))
    return headers
