"""Prometheus durations (``15d``, ``2w1d``, ``1w1d12h``) and byte sizes (``512MB``,
``1GiB476MiB``): parsed exactly as Prometheus parses them, and printed as it prints them, for
the ``expected`` / ``actual`` / ``size_limit`` fields of ``metrics.retention.check``.

Retention is compared as durations, never as strings: Prometheus prints the largest exact
units first, so a 15-day retention may be configured as ``360h`` and a 14-day one comes
back as ``2w`` (README "How a run works", step 5). Sizes are printed in compound base-2
units: ``--storage.tsdb.retention.size=1500MB`` is shown as ``1GiB476MiB``.
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


# alecthomas/units (Prometheus' byte sizes): powers of 1024 whether spelled KiB or KB; each
# spelling is parsed on its own, so "1GiB476MB" is refused as Prometheus refuses it.
_BYTE_PREFIXES = ("", "K", "M", "G", "T", "P", "E")
_BYTE_UNITS = tuple(
    {
        (prefix + suffix if prefix else "B"): 1024**power
        for power, prefix in enumerate(_BYTE_PREFIXES)
    }
    for suffix in ("iB", "B")
)
_BYTE_ELEMENT = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")
_MAX_BYTES = 2**63


def parse_bytes(text: str) -> int:
    """The byte count ``text`` denotes, as Prometheus reads a size flag or field (units.
    ParseBase2Bytes: ``512MB``, ``1.5GiB``, ``1GiB476MiB``, a bare ``0``); ValueError naming
    ``text`` if Prometheus would refuse it."""
    if text == "0":
        return 0
    for units in _BYTE_UNITS:
        total = _sum_of_units(text, units)
        if total is not None:
            return total
    raise ValueError(
        f"not a Prometheus byte size: {text!r} (expected a number and a unit B KB MB GB TB PB "
        "EB or KiB MiB GiB TiB PiB EiB, e.g. 512MB)"
    )


def _sum_of_units(text: str, units: dict[str, int]) -> int | None:
    # units.ParseUnit: elements of digits, an optional fraction and a unit, summed as a
    # float64 and truncated to whole bytes.
    total = 0.0
    position = 0
    while position < len(text):
        match = _BYTE_ELEMENT.match(text, position)
        whole, fraction, unit = match.groups() if match else ("", None, "")
        if match is None or not (whole or fraction) or unit not in units:
            return None
        # Go's leadingInt refuses more digits than an int64 holds.
        if len(whole) > 18 or len(fraction or "") > 18:
            return None
        number = float(whole or 0) + (float(f"0.{fraction}") if fraction else 0.0)
        total += number * units[unit]
        position = match.end()
    if not text or total >= _MAX_BYTES:
        return None
    return int(total)


def format_bytes(count: int) -> str:
    """``count`` bytes as Prometheus prints a size (units.Base2Bytes.String): the largest
    base-2 units first, each part that is not zero, e.g. ``1GiB476MiB``, ``10GiB``, ``0B``."""
    if count < 0:
        raise ValueError(f"not a byte count: {count}")
    parts: list[str] = []
    for power, prefix in enumerate(_BYTE_PREFIXES):
        count, rest = divmod(count, 1024)
        if rest or (power == 0 and count == 0 and not parts):
            parts.append(f"{rest}{prefix}{'iB' if prefix else 'B'}")
        if count == 0:
            break
    return "".join(reversed(parts))
