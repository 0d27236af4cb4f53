"""Independent clients for integration tests: none of this shares code with gateproxy.

- ``https_request`` / ``https_exchange``: stdlib ``ssl`` + ``http.client`` in a worker thread, so
  a server under test running in the same trio loop keeps serving while the client blocks.
- ``pyopenssl_get``: pyOpenSSL (a second TLS stack binding) in a worker thread.
- ``curl`` / ``openssl_s_client``: the binaries, via ``trio.run_process``.

Threads are started with ``abandon_on_cancel=True``: a test's ``trio.fail_after`` ends the wait
at once, and the socket timeout (``io_timeout``) bounds the abandoned thread.
"""

from __future__ import annotations

import functools
import http.client
import socket
import ssl
import struct
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import h11
import trio
import trustme
from cryptography import x509
from OpenSSL import SSL, crypto

TLS_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}
_PYOPENSSL_VERSIONS = {"TLSv1.2": SSL.TLS1_2_VERSION, "TLSv1.3": SSL.TLS1_3_VERSION}


@dataclass(frozen=True)
class Response:
    """An HTTP response as a client saw it, with facts about the TLS connection it came on."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    tls_version: str | None
    session_reused: bool
    session: ssl.SSLSession | SSL.Session | None = field(default=None, repr=False)
    alpn_protocol: str | None = None

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        values = self.header_values(name)
        return values[0] if values else None

    def header_values(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n.lower() == name.lower()]


@dataclass(frozen=True)
class Request:
    """One request for ``https_exchange``. A non-bytes ``body`` is sent chunked."""

    method: str = "GET"
    path: str = "/"
    headers: Sequence[tuple[str, str]] = ()
    body: bytes | Iterable[bytes] = b""


def split_address(address: str) -> tuple[str, int]:
    """``"127.0.0.1:8443"`` / ``"[::1]:8443"`` -> (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


_CONTEXTS: dict[
    tuple[int, str | None, tuple[str, ...], bool], tuple[trustme.CA, ssl.SSLContext]
] = {}


def client_context(
    ca: trustme.CA | ssl.SSLContext,
    *,
    tls_version: str | None = None,
    alpn: Sequence[str] = (),
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """A verifying stdlib client context trusting ``ca`` (or ``ca`` itself if already a context).

    Contexts are cached per (CA, options): a session can only be resumed through the context
    that created it, so ``https_request(..., session=previous.session)`` just works.
    """
    if isinstance(ca, ssl.SSLContext):
        return ca
    key = (id(ca), tls_version, tuple(alpn), check_hostname)
    cached = _CONTEXTS.get(key)
    if cached is not None and cached[0] is ca:
        return cached[1]
    ctx = ssl.create_default_context()
    ctx.check_hostname = check_hostname
    ca.configure_trust(ctx)
    if tls_version is not None:
        ctx.minimum_version = ctx.maximum_version = TLS_VERSIONS[tls_version]
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    _CONTEXTS[key] = (ca, ctx)
    return ctx


def _send_request(conn: http.client.HTTPConnection, request: Request) -> None:
    names = {name.lower() for name, _ in request.headers}
    conn.putrequest(
        request.method, request.path, skip_host="host" in names, skip_accept_encoding=True
    )
    chunked = not isinstance(request.body, bytes)
    for name, value in request.headers:
        conn.putheader(name, value)
    if chunked and "transfer-encoding" not in names:
        conn.putheader("Transfer-Encoding", "chunked")
    elif isinstance(request.body, bytes) and request.body and "content-length" not in names:
        conn.putheader("Content-Length", str(len(request.body)))
    conn.endheaders()
    if isinstance(request.body, bytes):
        if request.body:
            conn.send(request.body)
        return
    for chunk in request.body:
        if chunk:
            conn.send(b"%x\r\n%s\r\n" % (len(chunk), chunk))
    conn.send(b"0\r\n\r\n")


def _exchange_sync(
    address: str,
    requests: Sequence[Request],
    ctx: ssl.SSLContext,
    server_hostname: str | None,
    session: ssl.SSLSession | None,
    io_timeout: float,
) -> list[Response]:
    host, port = split_address(address)
    raw = socket.create_connection((host, port), timeout=io_timeout)
    with ctx.wrap_socket(raw, server_hostname=server_hostname, session=session) as tls:
        conn = http.client.HTTPConnection(server_hostname or host, port, timeout=io_timeout)
        conn.sock = tls  # http.client only connects when sock is None
        conn.auto_open = False  # never silently reconnect in plain text
        responses = []
        for request in requests:
            _send_request(conn, request)
            answer = conn.getresponse()
            body = answer.read()
            responses.append(
                Response(
                    status=answer.status,
                    headers=answer.getheaders(),
                    body=body,
                    tls_version=tls.version(),
                    session_reused=bool(tls.session_reused),
                    session=tls.session,
                    alpn_protocol=tls.selected_alpn_protocol(),
                )
            )
        conn.sock = None
        return responses


async def https_exchange(
    address: str,
    requests: Sequence[Request],
    *,
    ca: trustme.CA | ssl.SSLContext,
    server_hostname: str | None = "localhost",
    tls_version: str | None = None,
    alpn: Sequence[str] = (),
    session: ssl.SSLSession | None = None,
    io_timeout: float = 10.0,
) -> list[Response]:
    """Send ``requests`` one after another on one TLS connection (keep-alive); stdlib only.

    ``server_hostname=None`` sends no SNI and skips the hostname check (the chain is still
    verified). Pass a previous Response's ``session`` to attempt resumption. Errors (ssl.SSLError,
    ConnectionError, http.client exceptions) propagate unchanged.
    """
    check = server_hostname is not None
    ctx = client_context(ca, tls_version=tls_version, alpn=alpn, check_hostname=check)
    run = functools.partial(
        _exchange_sync, address, requests, ctx, server_hostname, session, io_timeout
    )
    return await trio.to_thread.run_sync(run, abandon_on_cancel=True)


async def https_request(
    address: str,
    *,
    method: str = "GET",
    path: str = "/",
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | Iterable[bytes] = b"",
    ca: trustme.CA | ssl.SSLContext,
    server_hostname: str | None = "localhost",
    tls_version: str | None = None,
    alpn: Sequence[str] = (),
    session: ssl.SSLSession | None = None,
    io_timeout: float = 10.0,
) -> Response:
    """One request on a fresh TLS connection with stdlib ``ssl`` + ``http.client`` in a thread."""
    request = Request(method=method, path=path, headers=headers, body=body)
    [response] = await https_exchange(
        address,
        [request],
        ca=ca,
        server_hostname=server_hostname,
        tls_version=tls_version,
        alpn=alpn,
        session=session,
        io_timeout=io_timeout,
    )
    return response


# -- pyOpenSSL ---------------------------------------------------------------------------------


def _pyopenssl_get_sync(
    address: str,
    path: str,
    ca_pem: bytes,
    server_hostname: str | None,
    tls_version: str | None,
    session: SSL.Session | None,
    io_timeout: float,
) -> Response:
    ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
    store = ctx.get_cert_store()
    assert store is not None
    store.add_cert(crypto.X509.from_cryptography(x509.load_pem_x509_certificate(ca_pem)))
    ctx.set_verify(SSL.VERIFY_PEER, None)
    if tls_version is not None:
        ctx.set_min_proto_version(_PYOPENSSL_VERSIONS[tls_version])
        ctx.set_max_proto_version(_PYOPENSSL_VERSIONS[tls_version])
    host, port = split_address(address)
    with socket.create_connection((host, port), timeout=io_timeout) as raw:
        raw.settimeout(None)  # pyOpenSSL needs a blocking socket: bound it with SO_RCVTIMEO
        seconds = int(io_timeout)
        timeval = struct.pack("ll", seconds, int((io_timeout - seconds) * 1e6))
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        tls = SSL.Connection(ctx, raw)
        if server_hostname is not None:
            tls.set_tlsext_host_name(server_hostname.encode("ascii"))
        if session is not None:
            tls.set_session(session)
        tls.set_connect_state()
        tls.do_handshake()
        if server_hostname is not None:
            _check_hostname(tls, server_hostname)
        status, headers, body = _h11_get(tls, path, f"{server_hostname or host}:{port}")
        lib = getattr(SSL, "_lib")  # noqa: B009  # SSL_session_reused is not wrapped by pyOpenSSL
        reused = bool(lib.SSL_session_reused(getattr(tls, "_ssl")))  # noqa: B009
        response = Response(
            status=status,
            headers=headers,
            body=body,
            tls_version=tls.get_protocol_version_name(),
            session_reused=reused,
            session=tls.get_session(),
        )
        tls.shutdown()
        return response


def _check_hostname(tls: SSL.Connection, hostname: str) -> None:
    cert = tls.get_peer_certificate(as_cryptography=True)
    assert cert is not None
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = [*san.get_values_for_type(x509.DNSName)]
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    if hostname not in names:
        raise ssl.SSLCertVerificationError(f"certificate is for {names}, not {hostname!r}")


def _h11_get(tls: SSL.Connection, path: str, host: str) -> tuple[int, list[tuple[str, str]], bytes]:
    conn = h11.Connection(h11.CLIENT)
    request = conn.send(h11.Request(method="GET", target=path, headers=[("host", host)]))
    assert request is not None
    tls.sendall(request + (conn.send(h11.EndOfMessage()) or b""))
    status, headers, body = 0, [], bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            try:
                conn.receive_data(tls.recv(65536))
            except (SSL.ZeroReturnError, SSL.SysCallError):
                conn.receive_data(b"")
        elif isinstance(event, h11.Response):
            status = event.status_code
            headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in event.headers]
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return status, headers, bytes(body)


async def pyopenssl_get(
    address: str,
    path: str,
    *,
    ca_pem: bytes,
    server_hostname: str | None = "localhost",
    tls_version: str | None = None,
    session: SSL.Session | None = None,
    io_timeout: float = 10.0,
) -> Response:
    """``GET path`` over pyOpenSSL in a thread; verifies the chain and the SAN for the hostname.

    Errors propagate as ``OpenSSL.SSL.Error`` (handshake) or ``ssl.SSLCertVerificationError``
    (wrong name). Pass a previous Response's ``session`` to attempt resumption.
    """
    run = functools.partial(
        _pyopenssl_get_sync,
        address,
        path,
        ca_pem,
        server_hostname,
        tls_version,
        session,
        io_timeout,
    )
    return await trio.to_thread.run_sync(run, abandon_on_cancel=True)


# -- binaries ----------------------------------------------------------------------------------


async def curl(args: Sequence[str], *, input: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    """Run ``curl *args`` with stdout/stderr captured; never raises on a non-zero exit."""
    return await trio.run_process(
        ["curl", *args], stdin=input, capture_stdout=True, capture_stderr=True, check=False
    )


async def openssl_s_client(
    args: Sequence[str], input: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    """Run ``openssl s_client *args``; stdin gets ``input`` then EOF (so it exits after it).

    Add ``-ign_eof`` to args to wait for the server's answer to ``input`` before exiting.
    """
    return await trio.run_process(
        ["openssl", "s_client", *args],
        stdin=input,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
