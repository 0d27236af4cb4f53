"""Which certificates serve a TLS server name: SAN matching per key type, no I/O.

OpenSSL holds one certificate per key type in an ``SSL_CTX`` and serves the one the client can
verify, so the answer to "which certificate for this name" is a *group*: per key type, the
certificate that carries the name. contexts.py makes one context per group.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["SniTable"]


class SniTable:
    """Server name -> the certificates that serve it, at most one per key type.

    Matching follows RFC 6125 on the certificates' SAN DNS names only (the subject CN is
    ignored, as browsers do): case-insensitive, a trailing dot ignored, exact names first, then
    wildcards. A wildcard is a whole leftmost ``*`` label that matches exactly one label:
    ``*.example.com`` matches ``a.example.com`` but neither ``example.com`` nor
    ``a.b.example.com``. Partial-label wildcards (``w*.example.com``) and wildcards directly
    over a single label (``*.com``) never match. The rules apply per key type (``key_types``,
    one per certificate; all alike when left out): for each type, its exact match, else its
    wildcard match; when several certificates of one type carry the name, the first configured
    wins. So an ECDSA and an RSA certificate for one name are both offered, and OpenSSL serves
    the one the client can verify.
    """

    def __init__(
        self,
        names_per_certificate: Sequence[Sequence[str]],
        *,
        key_types: Sequence[str] | None = None,
    ) -> None:
        kinds = list(key_types) if key_types is not None else [""] * len(names_per_certificate)
        self._kinds = tuple(dict.fromkeys(kinds))
        self._exact: dict[tuple[str, str], int] = {}
        self._wildcard: dict[tuple[str, str], int] = {}  # (kind, "example.com") for "*.example.com"
        for index, (names, kind) in enumerate(zip(names_per_certificate, kinds, strict=True)):
            for raw in names:
                name = _normalise(raw)
                if name.startswith("*."):
                    suffix = name[2:]
                    if "." in suffix and "*" not in suffix:
                        self._wildcard.setdefault((kind, suffix), index)
                elif name and "*" not in name:
                    self._exact.setdefault((kind, name), index)

    def choose(self, server_name: str | None) -> tuple[int, ...]:
        """Indices (ascending) of the certificates for ``server_name``; ``()`` when none
        carries it (the caller then serves its default)."""
        if not server_name:
            return ()
        name = _normalise(server_name)
        first, dot, rest = name.partition(".")
        return self._pick(name, rest if first and dot else None)

    def groups(self) -> set[tuple[int, ...]]:
        """Every non-empty answer :meth:`choose` can give."""
        found = {self._pick(name, _parent(name)) for _kind, name in self._exact}
        found |= {self._pick(None, suffix) for _kind, suffix in self._wildcard}
        return found

    def _pick(self, name: str | None, suffix: str | None) -> tuple[int, ...]:
        chosen: list[int] = []
        for kind in self._kinds:
            index = self._exact.get((kind, name)) if name is not None else None
            if index is None and suffix is not None:
                index = self._wildcard.get((kind, suffix))
            if index is not None:
                chosen.append(index)
        return tuple(sorted(chosen))


def _normalise(name: str) -> str:
    return name.strip().rstrip(".").lower()


def _parent(name: str) -> str | None:
    first, dot, rest = name.partition(".")
    return rest if first and dot else None
