"""Prometheus duration strings: parsed as Prometheus parses them, formatted for events."""

from __future__ import annotations

from datetime import timedelta

import pytest

from janitor.durations import format_duration, parse_duration

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
