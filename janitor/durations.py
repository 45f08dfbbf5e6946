"""Prometheus durations (``15d``, ``2w1d``, ``1w1d12h``): parsed exactly as Prometheus parses
them, formatted for the ``expected`` / ``actual`` fields of ``metrics.retention.check``.

Retention is compared as durations, never as strings: Prometheus prints the largest exact
units first, so a 15-day retention may be configured as ``360h`` and a 14-day one comes
back as ``2w`` (README "How a run works", step 5).
"""

from __future__ import annotations

import re
from datetime import timedelta

_MS = timedelta(milliseconds=1)
_DAY = timedelta(days=1)

# The units of prometheus/common model.ParseDuration, each optional, each at most once, in
# this order; a year is always 365 days. [0-9], not \d: Python's \d also matches non-ASCII
# digits that Prometheus rejects.
_UNITS: tuple[tuple[str, timedelta], ...] = (
    ("y", timedelta(days=365)),
    ("w", timedelta(days=7)),
    ("d", _DAY),
    ("h", timedelta(hours=1)),
    ("m", timedelta(minutes=1)),
    ("s", timedelta(seconds=1)),
    ("ms", _MS),
)
_PATTERN = re.compile("".join(f"(?:([0-9]+){unit})?" for unit, _ in _UNITS))

# Prometheus keeps durations as int64 milliseconds and refuses anything larger.
_MAX_MS = 2**63 - 1


def parse_duration(text: str) -> timedelta:
    """The duration ``text`` denotes, as Prometheus reads it; ValueError naming ``text`` if
    Prometheus would refuse it (or it exceeds what a timedelta holds, ~2.7 million years)."""
    # A bare "0" is the one unitless value Prometheus accepts.
    if text == "0":
        return timedelta(0)
    match = _PATTERN.fullmatch(text)
    if not text or match is None:
        raise ValueError(
            f"not a Prometheus duration: {text!r} (expected units y w d h m s ms, "
            "largest first, e.g. 15d, 2w1d or 360h)"
        )
    counts = match.groups()
    out_of_range = ValueError(f"Prometheus duration out of range: {text!r}")
    # Over 19 digits overflows int64 in any unit; checking first also keeps int() clear of
    # Python's limit on converting very long digit strings.
    if any(count is not None and len(count.lstrip("0")) > 19 for count in counts):
        raise out_of_range
    total_ms = sum(
        int(count) * (unit // _MS)
        for count, (_, unit) in zip(counts, _UNITS, strict=True)
        if count is not None
    )
    if total_ms > min(_MAX_MS, timedelta.max // _MS):
        raise out_of_range
    return timedelta(milliseconds=total_ms)


def format_duration(duration: timedelta) -> str:
    """``duration`` as a Prometheus duration string: ``Nd`` for whole days (``14d``, where
    Prometheus would print ``2w``, so it reads like ``JANITOR_METRICS_RETENTION_DAYS``),
    otherwise the largest units first, as Prometheus prints it (``1d12h``, ``1s500ms``)."""
    if duration < timedelta(0) or duration % _MS:
        raise ValueError(f"not a whole, non-negative number of milliseconds: {duration!r}")
    if not duration:
        return "0s"
    if not duration % _DAY:
        return f"{duration // _DAY}d"
    # Prometheus prints years and weeks only when they divide the duration exactly, and a
    # duration that is not whole days is never a whole number of weeks or years.
    parts: list[str] = []
    rest = duration
    for unit, size in _UNITS[2:]:
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
