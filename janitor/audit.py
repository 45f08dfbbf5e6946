"""`janitor audit` and `--adopt-orphans` (README "Orphans: janitor audit").

`janitor audit` reports what no deployment row accounts for and changes no store: one
``orphan.*`` event per finding (janitor.sweepers.orphans), then ``audit.finished`` with the
counts; exit 0, or 1 when a store could not be read. With JANITOR_ADOPT_ORPHANS it also
records its sightings in the janitor's orphan records (janitor.orphan_records), as every
adopting run does, so that scheduled audits count towards the grace period.

`run --adopt-orphans` audits the stores the run sweeps, records the sightings (a dry run
only reads them) and hands the runner the orphan releases found continuously for
JANITOR_ORPHAN_GRACE_DAYS, measured with the database clock: the runner sweeps them like
expired deployments, through the same plan, guard, events and exit codes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import psycopg

from janitor import assemble, houston, orphan_records, postgres
from janitor.config import Settings
from janitor.errors import ConfigurationError, ExitCode
from janitor.events import Log, Recorder
from janitor.naming import Templates
from janitor.orphan_records import FirstSeen
from janitor.plan import Action, Deployment, Step, failed, final, unexpected
from janitor.sharding import WHOLE_FLEET, Shard
from janitor.sweepers.orphans import Audit, Kind, audit

RECORD_EVENT = "orphan.record"
ADOPTED_ID_PREFIX = "orphan:"


@dataclass(frozen=True)
class Adoption:
    """What ``--adopt-orphans`` adds to a run's plan: the audit's events, and the orphan
    releases to sweep with when each was first found (UTC, ISO 8601)."""

    steps: tuple[Step, ...]
    adopted: tuple[tuple[Deployment, str], ...] = ()


def command(settings: Settings, log: Log) -> int:
    """`janitor audit`: audit.finished is always the last line (with the error: exit 2 for
    an endpoint that is not what the configuration says, exit 1 when the Houston database
    cannot be read or anything nobody expected is raised)."""
    started = time.monotonic()
    recorder = Recorder(log)
    error: str | None = None
    code = ExitCode.OK
    try:
        with postgres.connect(
            settings.houston_conninfo() or "", assemble.pg_timeouts(settings)
        ) as conn:
            found = survey(settings, conn)
            steps: Sequence[Step] = found.steps()
            if settings.adopt_orphans:
                # `janitor audit` sees the whole fleet, whatever shard the settings name.
                now = houston.server_now(conn)
                whole = _adoption(settings, conn, found, now=now, record=True, shard=WHOLE_FLEET)
                steps = whole.steps
    except ConfigurationError as exc:
        # An endpoint that is not what the configuration says (README "Exit codes").
        code, error = ExitCode.INVALID_CONFIGURATION, str(exc)
    except psycopg.Error as exc:
        code, error = ExitCode.FAILED, f"Houston database: {postgres.describe(exc)}"
    except Exception as exc:  # noqa: BLE001 - audit.finished is always the last line
        code, error = ExitCode.FAILED, unexpected(exc)
    else:
        for step in steps:
            for action in step.actions:
                recorder.action(action, action.planned)
        if "failed" in recorder.outcomes():
            code = ExitCode.FAILED
    finished: dict[str, Any] = {
        "counts": recorder.counts(),
        "exit_code": int(code),
        "duration_s": round(time.monotonic() - started, 3),
    }
    if error is not None:
        finished["error"] = error
    (log.error if code else log.info)("audit.finished", **finished)
    return int(code)


def survey(settings: Settings, conn: psycopg.Connection[Any]) -> Audit:
    """Every store the settings sweep, against every release name of the deployments table
    (read on the Houston connection ``conn``)."""
    rows = houston.release_names(conn, assemble.houston_table(settings))
    return audit(assemble.orphan_stores(settings, conn), settings.templates(), rows)


def adoption(settings: Settings, conn: psycopg.Connection[Any], *, now: datetime) -> Adoption:
    """For ``run --adopt-orphans``: the audit's events and the releases to sweep; a real
    run records the sightings first (a dry run only reads them, so it adopts what the real
    run would)."""
    shard = settings.shard
    found = _of_shard(survey(settings, conn), shard)
    return _adoption(settings, conn, found, now=now, record=not settings.dry_run, shard=shard)


def _of_shard(found: Audit, shard: Shard) -> Audit:
    """README "Sharding": a shard reports, records and adopts the orphans of its own
    releases. Every shard keeps the ambiguous names: they keep a release from adoption."""
    if not shard.sharded:
        return found
    mine = tuple(f for f in found.findings if f.release is None or shard.owns(f.release))
    return replace(found, findings=mine)


def _adoption(
    settings: Settings,
    conn: psycopg.Connection[Any],
    found: Audit,
    *,
    now: datetime,
    record: bool,
    shard: Shard,
) -> Adoption:
    records = assemble.orphan_records(settings)
    sightings = [(f.kind, f.name, f.release or "") for f in found.orphans()]
    try:
        if record:
            first_seen = orphan_records.record(
                conn, records, sightings, found.read, now=now, shard=shard
            )
        else:
            first_seen = orphan_records.read(conn, records)
    except psycopg.Error as exc:
        error = orphan_records.problem(exc, records, str(conn.info.user))
        failure = final(Action(RECORD_EVENT, records.name(), failed(error)))
        return Adoption((*found.steps(), failure))
    cutoff = now - timedelta(days=settings.orphan_grace_days)
    # A store not read in full may hold more of a release than this audit saw.
    incomplete = "a store could not be read in full in this audit" if found.failures else None
    notes, adopted = _decide(found, first_seen, cutoff, settings.templates(), incomplete)
    return Adoption(tuple(found.steps(notes)), tuple(adopted))


def _decide(
    found: Audit,
    first_seen: FirstSeen,
    cutoff: datetime,
    templates: Templates,
    incomplete: str | None,
) -> tuple[dict[tuple[Kind, str], Mapping[str, Any]], list[tuple[Deployment, str]]]:
    """Per orphan, what its event adds (``first_seen``, ``adoptable``, and why not when
    past the grace period); and the releases every orphan of which was first found at or
    before ``cutoff``, unless ``incomplete`` or one of their names is refused."""
    by_release: dict[str, list[tuple[Kind, str]]] = {}
    for f in found.orphans():
        by_release.setdefault(f.release or "", []).append((f.kind, f.name))
    notes: dict[tuple[Kind, str], Mapping[str, Any]] = {}
    adopted: list[tuple[Deployment, str]] = []
    for release, keys in sorted(by_release.items()):
        seen = [first_seen.get(key) for key in keys]
        due = all(s is not None and s <= cutoff for s in seen)
        refusal = (
            (incomplete or found.blocked(release, templates) or templates.refusal(release))
            if due
            else None
        )
        for key, first in zip(keys, seen, strict=True):
            note: dict[str, Any] = {
                "first_seen": first.isoformat() if first else None,
                "adoptable": due and refusal is None,
            }
            if refusal is not None:
                note["adoption_refused"] = refusal
            notes[key] = note
        if due and refusal is None:
            earliest = min(s for s in seen if s is not None)
            deployment = Deployment(ADOPTED_ID_PREFIX + release, release, "")
            adopted.append((deployment, earliest.isoformat()))
    return notes, adopted
