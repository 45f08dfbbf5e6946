"""Prometheus durations and byte sizes: parsed as Prometheus parses them, printed as it prints
them."""

from __future__ import annotations

from datetime import timedelta

import pytest

from janitor.durations import format_bytes, format_duration, parse_bytes, parse_duration

PARSED = [
    ("15d", timedelta(days=15)),
    ("2w1d", timedelta(days=15)),
    ("1w1d12h", timedelta(days=8, hours=12)),
    ("360h", timedelta(days=15)),
    ("2w", timedelta(days=14)),
    ("1y", timedelta(days=365)),
    ("90m", timedelta(minutes=90)),
    ("1h30m", timedelta(minutes=90)),
    ("1500ms", timedelta(milliseconds=1500)),
    ("1s500ms", timedelta(milliseconds=1500)),
    ("0s", timedelta(0)),
    ("0", timedelta(0)),
    ("0d0h", timedelta(0)),
    (
        "1y2w3d4h5m6s7ms",
        timedelta(days=365 + 14 + 3, hours=4, minutes=5, seconds=6, milliseconds=7),
    ),
    ("100y", timedelta(days=36500)),
    ("007d", timedelta(days=7)),
]

INVALID = [
    "",
    "15",
    "d",
    "15D",
    "15 d",
    " 15d",
    "15d ",
    "15d\n",
    "1d2w",
    "1h1h",
    "1.5d",
    "-1d",
    "+1d",
    "1e3s",
    "15days",
    "P15D",
    "\uff11\uff15d",
    "1us",
    "2m1h",
]

FORMATTED = [
    (timedelta(days=15), "15d"),
    (timedelta(days=14), "14d"),
    (timedelta(days=1), "1d"),
    (timedelta(days=365), "365d"),
    (timedelta(days=1, hours=12), "1d12h"),
    (timedelta(days=7, hours=1), "7d1h"),
    (timedelta(minutes=90), "1h30m"),
    (timedelta(milliseconds=1500), "1s500ms"),
    (timedelta(hours=23, minutes=59, seconds=59, milliseconds=999), "23h59m59s999ms"),
    (timedelta(0), "0s"),
]


@pytest.mark.parametrize(("text", "expected"), PARSED)
def test_parse_reads_every_prometheus_spelling(text: str, expected: timedelta) -> None:
    """Each spelling Prometheus accepts, combined units included, denotes the same duration."""
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", INVALID)
def test_parse_refuses_what_prometheus_refuses_naming_the_text(text: str) -> None:
    """A string Prometheus would refuse raises ValueError quoting the offending text."""
    with pytest.raises(ValueError, match="not a Prometheus duration") as refused:
        parse_duration(text)
    assert repr(text) in str(refused.value)


@pytest.mark.parametrize("text", ["106751991167301d", "9223372036854775808ms", "1" * 5000 + "y"])
def test_parse_refuses_durations_beyond_range(text: str) -> None:
    """Durations past int64 milliseconds (or a timedelta) are refused, never wrapped around."""
    with pytest.raises(ValueError, match="out of range"):
        parse_duration(text)


@pytest.mark.parametrize(("duration", "expected"), FORMATTED)
def test_format_prints_whole_days_as_days_else_largest_units_first(
    duration: timedelta, expected: str
) -> None:
    """Whole days print as ``Nd`` like the setting; anything else as Prometheus prints it."""
    assert format_duration(duration) == expected


@pytest.mark.parametrize("duration", [duration for duration, _ in FORMATTED])
def test_formatted_durations_parse_back_to_themselves(duration: timedelta) -> None:
    """Every string the janitor prints is a valid Prometheus duration of the same length."""
    assert parse_duration(format_duration(duration)) == duration


@pytest.mark.parametrize(
    "duration", [timedelta(days=-1), timedelta(microseconds=1500), timedelta(seconds=-1)]
)
def test_format_refuses_what_prometheus_cannot_express(duration: timedelta) -> None:
    """Negative or sub-millisecond durations have no Prometheus spelling and are refused."""
    with pytest.raises(ValueError, match="milliseconds"):
        format_duration(duration)


# (flag or field value, bytes, as Prometheus prints it): units.ParseBase2Bytes and
# Base2Bytes.String, which Prometheus uses for storage.tsdb.retention.size.
SIZES = [
    ("1500MB", 1500 * 2**20, "1GiB476MiB"),
    ("1GiB476MiB", 1500 * 2**20, "1GiB476MiB"),
    ("10GB", 10 * 2**30, "10GiB"),
    ("512MiB", 512 * 2**20, "512MiB"),
    ("1.5GB", 3 * 2**29, "1GiB512MiB"),
    ("1KB", 1024, "1KiB"),
    ("1025B", 1025, "1KiB1B"),
    ("3EB", 3 * 2**60, "3EiB"),
    ("0", 0, "0B"),
    ("0B", 0, "0B"),
]


@pytest.mark.parametrize(("text", "count", "printed"), SIZES)
def test_sizes_are_powers_of_1024_printed_in_compound_units(
    text: str, count: int, printed: str
) -> None:
    """1500MB is 1500 MiB, and Prometheus shows it as 1GiB476MiB; the janitor reads both."""
    assert parse_bytes(text) == count
    assert format_bytes(count) == printed
    assert parse_bytes(printed) == count


@pytest.mark.parametrize("text", ["", "1500", "MB", "15d", "1GiB476MB", "1.5 GB", "1kB", "8EiB"])
def test_a_size_prometheus_refuses_is_refused_naming_it(text: str) -> None:
    """No unit, mixed spellings, SI kB, or past int64: refused as Prometheus refuses them."""
    with pytest.raises(ValueError, match="not a Prometheus byte size") as refused:
        parse_bytes(text)
    assert repr(text) in str(refused.value)
