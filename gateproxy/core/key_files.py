"""Session-ticket key files in the nginx and HAProxy formats.

Theory of operation
-------------------
A fleet shares ticket keys by giving every process the same files and rotating them together
(write the new file, rename it into place, SIGHUP). gateproxy reads and writes the two formats
operators already have, so keys can be shared with nginx or HAProxy; a loader is always told the
format explicitly, because the two disagree on the byte layout of the same 80-byte key.

nginx ``ssl_session_ticket_key`` -- one raw binary file per key, the first file encrypts::

    80 bytes: name[16] | hmac[32] | aes[32]     AES-256-CBC, HMAC-SHA256
              (the same layout as OpenSSL's own SSL_CTRL_SET_TLSEXT_TICKET_KEYS buffer)
    48 bytes: name[16] | aes[16]  | hmac[16]    AES-128-CBC, HMAC-SHA256 with a 16-byte key

HAProxy ``tls-ticket-keys`` -- one text file, one base64 key per line, at least 3 keys, all the
same size, and the *penultimate* line encrypts::

    80 bytes: name[16] | aes[32] | hmac[32]     (aes and hmac swapped relative to nginx)
    48 bytes: name[16] | aes[16] | hmac[16]

When reading, blank lines and ``#`` comments are skipped; when writing, none are produced, since
HAProxy itself reads every line as a key. HAProxy only ever uses the last 3 lines; gateproxy keeps
every line, ordered encryption key first, then the last line, then the lines before the
penultimate one from the bottom up (newest first, the order of :meth:`KeyRing.keys`).

Every parse error is a :class:`~gateproxy.errors.KeyFileError` naming the file, the rule and the
offending size or line number. Messages never quote key material.
This module is sans-IO: the caller reads the files and passes their bytes.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import replace

from gateproxy.core.ticket_keys import NAME_LEN, TicketKey, new_ticket_key
from gateproxy.errors import KeyFileError

__all__ = [
    "KEY_FORMATS",
    "new_key_file",
    "parse_haproxy_keys",
    "parse_key_files",
    "parse_nginx_key",
    "parse_nginx_key_files",
    "serialize_haproxy_keys",
    "serialize_nginx_key",
]

KEY_FORMATS = ("nginx", "haproxy")
HAPROXY_MIN_KEYS = 3
_SIZES = (48, 80)


def _check_unique(keys: Sequence[TicketKey], where: Sequence[str], path: str) -> None:
    seen: dict[bytes, str] = {}
    for key, place in zip(keys, where, strict=True):
        if key.name in seen:
            raise KeyFileError(
                path,
                f"{place}: key name {key.name_prefix()}... repeats the name of {seen[key.name]} "
                "(every key needs its own 16-byte name)",
            )
        seen[key.name] = place


# --- nginx ----------------------------------------------------------------------------------------


def parse_nginx_key(data: bytes, *, path: str, now: float) -> TicketKey:
    """One nginx ``ssl_session_ticket_key`` file (48 or 80 raw bytes)."""
    if len(data) == 80:
        name, hmac_key, aes_key = data[:16], data[16:48], data[48:80]
    elif len(data) == 48:
        name, aes_key, hmac_key = data[:16], data[16:32], data[32:48]
    else:
        raise KeyFileError(
            path,
            f"an nginx ticket key file must be exactly 48 or 80 bytes, got {len(data)}",
        )
    return TicketKey(name=name, aes_key=aes_key, hmac_key=hmac_key, created=now)


def parse_nginx_key_files(files: Sequence[tuple[str, bytes]], *, now: float) -> list[TicketKey]:
    """Several nginx key files ``(path, content)``; the first one's key encrypts.

    Sizes may be mixed, as in nginx. Names must be unique across the files.
    """
    if not files:
        raise KeyFileError("<nginx key files>", "expected at least one key file, got none")
    keys = [parse_nginx_key(data, path=path, now=now) for path, data in files]
    paths = [path for path, _ in files]
    seen: dict[bytes, str] = {}
    for key, path in zip(keys, paths, strict=True):
        if key.name in seen:
            raise KeyFileError(
                path,
                f"key name {key.name_prefix()}... repeats the name of the key in {seen[key.name]} "
                "(every key needs its own 16-byte name)",
            )
        seen[key.name] = path
    return keys


def serialize_nginx_key(key: TicketKey) -> bytes:
    """The raw nginx file for one key: 80 bytes for AES-256, 48 for AES-128."""
    if len(key.aes_key) == 32:
        return key.name + key.hmac_key + key.aes_key
    return key.name + key.aes_key + key.hmac_key


# --- HAProxy --------------------------------------------------------------------------------------


def _decode_haproxy_line(line: str, *, lineno: int, path: str) -> bytes:
    try:
        raw = base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyFileError(
            path, f"line {lineno}: not valid base64 ({len(line)} characters): {exc}"
        ) from exc
    if len(raw) not in _SIZES:
        raise KeyFileError(
            path,
            f"line {lineno}: expected 48 or 80 bytes after base64 decoding, got {len(raw)}",
        )
    return raw


def parse_haproxy_keys(text: str, *, path: str, now: float) -> list[TicketKey]:
    """An HAProxy ``tls-ticket-keys`` file; the key on the penultimate line comes first."""
    raws: list[bytes] = []
    places: list[str] = []
    first_lineno = 0
    for lineno, rawline in enumerate(text.splitlines(), start=1):
        line = rawline.strip()
        if not line or line.startswith("#"):
            continue
        raw = _decode_haproxy_line(line, lineno=lineno, path=path)
        if raws and len(raw) != len(raws[0]):
            raise KeyFileError(
                path,
                f"line {lineno}: expected {len(raws[0])} bytes like line {first_lineno} "
                f"(all keys in one file must have the same size), got {len(raw)}",
            )
        if not raws:
            first_lineno = lineno
        raws.append(raw)
        places.append(f"line {lineno}")
    if len(raws) < HAPROXY_MIN_KEYS:
        raise KeyFileError(
            path,
            f"expected at least {HAPROXY_MIN_KEYS} keys (HAProxy's rule; the penultimate one "
            f"encrypts), got {len(raws)}",
        )
    size = len(raws[0]) - NAME_LEN
    half = size // 2
    in_file_order = [
        TicketKey(
            name=raw[:NAME_LEN], aes_key=raw[16 : 16 + half], hmac_key=raw[16 + half :], created=now
        )
        for raw in raws
    ]
    _check_unique(in_file_order, places, path)
    order = _haproxy_order(len(in_file_order))
    return [in_file_order[i] for i in order]


def _haproxy_order(count: int) -> list[int]:
    """File line indexes in ring order: penultimate, last, then the rest from the bottom up."""
    return [count - 2, count - 1, *range(count - 3, -1, -1)]


def serialize_haproxy_keys(keys: Sequence[TicketKey]) -> str:
    """An HAProxy key file whose penultimate line is ``keys[0]`` (inverse of the parser)."""
    if len(keys) < HAPROXY_MIN_KEYS:
        raise ValueError(
            f"an HAProxy key file needs at least {HAPROXY_MIN_KEYS} keys, got {len(keys)}"
        )
    sizes = {len(key.aes_key) for key in keys}
    if len(sizes) != 1:
        raise ValueError(
            "all keys in an HAProxy key file must have the same size (AES-128 or -256)"
        )
    lines: list[str] = [""] * len(keys)
    for key, line_index in zip(keys, _haproxy_order(len(keys)), strict=True):
        raw = key.name + key.aes_key + key.hmac_key
        lines[line_index] = base64.b64encode(raw).decode("ascii")
    return "".join(line + "\n" for line in lines)


# --- both -----------------------------------------------------------------------------------------


def parse_key_files(
    files: Sequence[tuple[str, bytes]],
    *,
    fmt: str,
    now: float,
    created: Sequence[float] | None = None,
) -> list[TicketKey]:
    """Load the configured key files ``(path, content)`` in format ``fmt``; encryption key first.

    ``haproxy`` takes exactly one file (ASCII text). ``created`` (one per file, e.g. each file's
    modification time on the caller's clock) is the ``created`` of the keys a file holds, so a
    key's age is its file's age; without it every key is created ``now``.
    """
    if created is not None and len(created) != len(files):
        raise ValueError(f"created: expected one time per file ({len(files)}), got {len(created)}")
    if fmt == "nginx":
        keys = parse_nginx_key_files(files, now=now)
        if created is None:
            return keys
        return [replace(key, created=when) for key, when in zip(keys, created, strict=True)]
    if fmt != "haproxy":
        raise ValueError(f"unknown key file format {fmt!r}; expected one of {KEY_FORMATS}")
    if len(files) != 1:
        where = files[1][0] if len(files) > 1 else "<haproxy key file>"
        raise KeyFileError(
            where, f"the haproxy format takes exactly one key file, got {len(files)}"
        )
    path, data = files[0]
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise KeyFileError(
            path, f"an HAProxy key file must be ASCII text (base64 lines); byte {exc.start} is not"
        ) from exc
    return parse_haproxy_keys(text, path=path, now=now if created is None else created[0])


def new_key_file(*, fmt: str, random_bytes: Callable[[int], bytes], now: float) -> bytes:
    """Fresh file content for ``gateproxy keys new --format nginx|haproxy``.

    nginx: one 80-byte AES-256 key. haproxy: three fresh AES-256 keys as base64 lines.
    """
    if fmt == "nginx":
        return serialize_nginx_key(new_ticket_key(random_bytes=random_bytes, now=now))
    if fmt == "haproxy":
        keys = [new_ticket_key(random_bytes=random_bytes, now=now) for _ in range(HAPROXY_MIN_KEYS)]
        return serialize_haproxy_keys(keys).encode("ascii")
    raise ValueError(f"unknown key file format {fmt!r}; expected one of {KEY_FORMATS}")
