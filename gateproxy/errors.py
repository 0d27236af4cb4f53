"""The one exception tree of gateproxy, split by who is at fault.

    GateproxyError
    ├── ConfigError          the operator's config (file, dotted key path, rule)
    ├── TLSEngineError       the OpenSSL control layer could not be set up (step, reason)
    ├── KeyFileError         a ticket key file is malformed (path, rule)
    ├── SealError            a fleet ticket key in the store does not open (secret, store key)
    ├── SharedStateError     a worker's shared memory does not match its config
    ├── UpstreamError        an upstream server misbehaved; maps to 502/504
    │   ├── UpstreamConnectError
    │   ├── UpstreamTimeout
    │   └── UpstreamProtocolError
    ├── ClientError          the downstream client misbehaved (408/413) or vanished
    │   ├── ClientDisconnected
    │   ├── ClientTimeout
    │   └── ClientBodyTooLarge
    └── HTTPProtocolError    a peer's bytes are not valid HTTP/1.1 (status hint for the answer)

Bad *client* bytes surface as ``HTTPProtocolError`` from the parser pair and get its status
hint; the same error from the upstream side becomes an ``UpstreamProtocolError`` (502).
"""

from __future__ import annotations

from dataclasses import dataclass


class GateproxyError(Exception):
    """Base of every error gateproxy raises on purpose."""


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a config: where (dotted key path, or the 1-based ``line`` and
    ``column`` in the file when there is no key path yet) and which rule it breaks."""

    path: str
    message: str
    line: int | None = None
    column: int | None = None

    def render(self, source: str) -> str:
        where = source if self.line is None else f"{source}:{self.line}:{self.column}"
        where = f"{where}: {self.path}" if self.path else where
        return f"{where}: {self.message}"


class ConfigError(GateproxyError):
    """A config that cannot be used. Carries every problem found, not just the first."""

    def __init__(self, source: str, problems: list[ConfigProblem] | tuple[ConfigProblem, ...]):
        self.source = source
        self.problems = tuple(problems)
        super().__init__("\n".join(p.render(source) for p in self.problems))

    @classmethod
    def single(cls, source: str, path: str, message: str) -> ConfigError:
        return cls(source, [ConfigProblem(path, message)])


class TLSEngineError(GateproxyError):
    """The OpenSSL control layer failed at a named step of its set-up or self-test."""

    def __init__(self, step: str, reason: str):
        self.step = step
        self.reason = reason
        super().__init__(f"TLS engine self-test failed at step '{step}': {reason}")


class KeyFileError(GateproxyError):
    """A session-ticket key file does not follow its format."""

    def __init__(self, path: str, message: str):
        self.path = path
        super().__init__(f"{path}: {message}")


class SealError(GateproxyError):
    """A fleet ticket key read from the store does not open: another fleet secret, a value
    copied from another store key (listener or slot), or damaged bytes."""


class SharedStateError(GateproxyError):
    """The shared memory a worker was handed does not match its config (size, table geometry)."""


class UpstreamError(GateproxyError):
    """An upstream server failed; the proxy answers 502 or 504."""

    status = 502

    def __init__(self, server: str, message: str):
        self.server = server
        super().__init__(f"upstream {server}: {message}")


class UpstreamConnectError(UpstreamError):
    """Connecting to the upstream failed (refused, reset, unreachable)."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not connect or answer within its deadline."""

    status = 504


class UpstreamProtocolError(UpstreamError):
    """The upstream sent bytes that are not a valid HTTP/1.1 response."""


class ClientError(GateproxyError):
    """The downstream client misbehaved or went away; never affects another client."""


class ClientDisconnected(ClientError):
    """The client closed or reset its connection; the exchange is abandoned."""


class ClientTimeout(ClientError):
    """The client was too slow; ``limit`` names the timeout (e.g. ``body_timeout``) -> 408."""

    def __init__(self, limit: str):
        self.limit = limit
        super().__init__(f"client exceeded {limit}")


class ClientBodyTooLarge(ClientError):
    """The request body crossed ``max_body_bytes`` -> 413."""

    def __init__(self, limit: int):
        self.limit = limit
        super().__init__(f"request body larger than max_body_bytes ({limit} bytes)")


class HTTPProtocolError(GateproxyError):
    """A peer sent bytes that are not valid HTTP/1.1; ``status_hint`` is the status to answer
    a client with (400, 413, 431, 501, 505...), as h11's ``error_status_hint``."""

    def __init__(self, message: str, *, status_hint: int = 400):
        self.status_hint = status_hint
        super().__init__(message)


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The one error worth a line (ours first) out of a nursery's exception group."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        exc = pending.pop()
        if isinstance(exc, BaseExceptionGroup):
            pending.extend(exc.exceptions)
        else:
            leaves.append(exc)
    ours = [exc for exc in leaves if isinstance(exc, GateproxyError)]
    return (ours or leaves or [group])[0]
