"""Session ids that carry a MAC: gateproxy tells its own TLS 1.2 session ids from any other.

A session id gateproxy issues (``SSL_CTX_set_generate_session_id``, tls/session_ids.py) is
``random[16] | HMAC-SHA256(key, b"<listener>\\0" | random)[:16]`` (32 bytes, the TLS maximum).
The key is derived with HKDF-SHA256 from the fleet secret under a label of its own (not the
label that seals ticket keys or session values), so every host of a fleet recognises every
other host's ids, and an id a client made up, or one from another server or another listener,
fails the check (in constant time, ``hmac.compare_digest``) and never reaches the store.

Sans-IO: the random part is a parameter.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["ID_LEN", "RANDOM_LEN", "SessionIds"]

RANDOM_LEN: Final = 16
MAC_LEN: Final = 16
ID_LEN: Final = RANDOM_LEN + MAC_LEN
_LABEL = b"gateproxy fleet session ids v1"


class SessionIds:
    """Issues and checks the MAC'd session ids of one listener."""

    __slots__ = ("_key", "_scope")

    def __init__(self, secret: bytes, *, listener: str) -> None:
        if len(secret) < 32:
            raise ValueError(f"fleet secret: expected at least 32 bytes, got {len(secret)}")
        self._key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_LABEL).derive(
            secret
        )
        self._scope = listener.encode() + b"\0"

    def _mac(self, random_part: bytes) -> bytes:
        return hmac.new(self._key, self._scope + random_part, hashlib.sha256).digest()[:MAC_LEN]

    def issue(self, random_part: bytes) -> bytes:
        """The session id for ``random_part`` (exactly :data:`RANDOM_LEN` random bytes)."""
        if len(random_part) != RANDOM_LEN:
            raise ValueError(f"expected {RANDOM_LEN} random bytes, got {len(random_part)}")
        return random_part + self._mac(random_part)

    def is_ours(self, session_id: bytes) -> bool:
        """True only for an id :meth:`issue` made under this secret and listener."""
        if len(session_id) != ID_LEN:
            return False
        return hmac.compare_digest(session_id[RANDOM_LEN:], self._mac(session_id[:RANDOM_LEN]))
