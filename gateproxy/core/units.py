"""Parsing of durations ("300ms", "5s", "10m", "1h") and sizes ("16KiB", "10MiB").

Both also accept plain numbers (seconds, bytes). Errors name the value and the rule.
"""

from __future__ import annotations

import re

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}
_NUMBER_WITH_UNIT = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*$")


def parse_duration(value: object) -> float:
    """Return seconds for a duration such as ``"300ms"``, ``"5s"``, ``"1h"`` or ``30``."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like '5s' or '300ms', got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a duration must not be negative, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration like '5s' or '300ms', got {value!r}")
    match = _NUMBER_WITH_UNIT.match(value)
    unit = match.group(2).lower() if match else None
    if match is None or (unit not in _DURATION_UNITS and unit != ""):
        raise ValueError(
            f"expected a duration like '5s', '300ms', '10m' or '1h' (units ms, s, m, h, d), "
            f"got {value!r}"
        )
    return float(match.group(1)) * _DURATION_UNITS.get(unit or "s", 1.0)


def parse_size(value: object) -> int:
    """Return bytes for a size such as ``"16KiB"``, ``"10MiB"`` or ``4096``."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size like '16KiB' or 4096, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size must not be negative, got {value!r}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a size like '16KiB' or 4096, got {value!r}")
    match = _NUMBER_WITH_UNIT.match(value)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(
            f"expected a size like '16KiB', '10MiB' or 4096 (units B, KB, KiB, MB, MiB, GB, GiB), "
            f"got {value!r}"
        )
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def format_duration(seconds: float) -> str:
    """Render seconds the way the config accepts them (used by docs and stats)."""
    for unit, factor in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= factor and (seconds / factor).is_integer():
            return f"{int(seconds / factor)}{unit}"
    return f"{round(seconds * 1000)}ms"
