"""Sealing fleet ticket keys for the shared store: AES-256-GCM under a key from the fleet secret.

A ticket key in the store decrypts every session resumed with it, so the store never holds one
in clear. The sealing key is derived with HKDF-SHA256 from the bytes of ``fleet.secret_file``
(the same file on every host of a fleet). The store key (``<prefix>:ticket-keys:<listener>:
<slot>``) is the AES-GCM associated data: a value copied to another listener's or another slot's
store key does not open, so keys stay scoped per listener.

Value layout: ``b"gpk1" | nonce[12] | AES-GCM(name16 | aes32 | hmac32) with its 16-byte tag``.
The nonce is a parameter (the shell passes ``os.urandom(12)``); the rest is pure computation.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateproxy.core.ticket_keys import NAME_LEN, TicketKey
from gateproxy.errors import SealError

__all__ = ["MIN_SECRET_LEN", "NONCE_LEN", "SESSIONS_LABEL", "SealError", "Sealer"]

MIN_SECRET_LEN = 32
"""A fleet secret file holds at least this many bytes (say, ``head -c 32 /dev/urandom``)."""

NONCE_LEN = 12
_MAGIC = b"gpk1"
_PLAIN_LEN = NAME_LEN + 32 + 32
_INFO = b"gateproxy fleet ticket keys v1"
SESSIONS_LABEL = b"gateproxy fleet sessions v1"
"""The HKDF label of the key that seals TLS sessions in the shared session cache."""
_BYTES_MAGIC = b"gps1"


class Sealer:
    """Seals and opens ticket keys under one fleet secret."""

    def __init__(self, secret: bytes, *, label: bytes = _INFO) -> None:
        if len(secret) < MIN_SECRET_LEN:
            raise ValueError(
                f"fleet secret: expected at least {MIN_SECRET_LEN} bytes, got {len(secret)}"
            )
        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(secret)
        self._aead = AESGCM(derived)

    def seal(self, key: TicketKey, *, store_key: str, nonce: bytes) -> bytes:
        """The stored value of ``key`` under ``store_key`` (AES-256 keys only)."""
        if len(key.aes_key) != 32 or len(nonce) != NONCE_LEN:
            raise ValueError("fleet keys are AES-256 keys, sealed with a 12-byte nonce")
        plain = key.name + key.aes_key + key.hmac_key
        return _MAGIC + nonce + self._aead.encrypt(nonce, plain, store_key.encode())

    def open(self, value: bytes, *, store_key: str, created: float) -> TicketKey:
        """The ticket key in ``value``; SealError if it was not sealed for ``store_key`` with
        this secret."""
        if not value.startswith(_MAGIC) or len(value) < len(_MAGIC) + NONCE_LEN + 16:
            raise SealError(f"{store_key}: not a sealed gateproxy ticket key")
        nonce = value[len(_MAGIC) : len(_MAGIC) + NONCE_LEN]
        try:
            plain = self._aead.decrypt(nonce, value[len(_MAGIC) + NONCE_LEN :], store_key.encode())
        except InvalidTag:
            raise SealError(
                f"{store_key}: the value does not open with this fleet secret "
                "(another secret_file, or a value copied from another key)"
            ) from None
        if len(plain) != _PLAIN_LEN:
            raise SealError(f"{store_key}: expected {_PLAIN_LEN} key bytes, got {len(plain)}")
        return TicketKey(
            name=plain[:NAME_LEN],
            aes_key=plain[NAME_LEN : NAME_LEN + 32],
            hmac_key=plain[NAME_LEN + 32 :],
            created=created,
        )

    def seal_bytes(self, plain: bytes, *, store_key: str, nonce: bytes) -> bytes:
        """Any bytes (a TLS session's DER), sealed for ``store_key``:
        ``b"gps1" | nonce[12] | AES-GCM(plain)``."""
        if len(nonce) != NONCE_LEN:
            raise ValueError(f"expected a {NONCE_LEN}-byte nonce, got {len(nonce)} bytes")
        return _BYTES_MAGIC + nonce + self._aead.encrypt(nonce, plain, store_key.encode())

    def open_bytes(self, value: bytes, *, store_key: str) -> bytes:
        """The bytes :meth:`seal_bytes` sealed for ``store_key``; SealError otherwise."""
        head = len(_BYTES_MAGIC) + NONCE_LEN
        if not value.startswith(_BYTES_MAGIC) or len(value) < head + 16:
            raise SealError(f"{store_key}: not a sealed gateproxy value")
        try:
            return self._aead.decrypt(
                value[len(_BYTES_MAGIC) : head], value[head:], store_key.encode()
            )
        except InvalidTag:
            raise SealError(
                f"{store_key}: the value does not open with this fleet secret "
                "(another secret_file, or a value copied from another key)"
            ) from None
