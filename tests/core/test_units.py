from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateproxy.core.units import format_duration, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("300ms", 0.3),
        ("5s", 5.0),
        ("10m", 600.0),
        ("1h", 3600.0),
        ("2d", 172800.0),
        (30, 30.0),
        ("1.5s", 1.5),
        ("7", 7.0),
        (0, 0.0),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["5x", "", "-1s", "s", True, None, [1], -3, "1 hour"])
def test_bad_durations_name_the_value(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("16KiB", 16384),
        ("10MiB", 10 * 1024 * 1024),
        ("1kb", 1000),
        (4096, 4096),
        ("2GiB", 2 << 30),
        ("512", 512),
        ("512B", 512),
    ],
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["16KQ", "", -1, 1.5, True, "ten"])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(ValueError, match="size"):
        parse_size(bad)


@given(st.integers(min_value=1, max_value=10**6))
def test_format_duration_round_trips(ms: int) -> None:
    assert parse_duration(format_duration(ms / 1000)) == pytest.approx(ms / 1000)
