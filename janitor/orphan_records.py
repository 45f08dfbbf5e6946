"""The janitor's own record of orphans, for ``--adopt-orphans`` (README "Orphans: janitor
audit"): a small table in the Houston database, next to the deployments table.

One row per orphan the audit found: ``(kind, name)``, the release it reads as, when it was
first and last found. Times are the database server's (the run's one ``now``), never the
pod's. An orphan an audit no longer finds loses its row (its grace period starts again if it
comes back): an orphan is adopted only once it has been found *continuously* for the grace
period. The janitor creates the table the first time it records a sighting (it needs
``CREATE`` on the schema once, or an operator creates it: README "Orphans: janitor audit").
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from janitor import postgres
from janitor.houston import Table
from janitor.plan import Result, failed
from janitor.sharding import WHOLE_FLEET, Shard

TABLE = "janitor_orphan"
_CREATE = """
CREATE TABLE IF NOT EXISTS {records} (
    kind text NOT NULL CHECK (kind IN ('database', 'role', 'repository')),
    name text NOT NULL,
    release text NOT NULL,
    first_seen timestamptz NOT NULL,
    last_seen timestamptz NOT NULL,
    PRIMARY KEY (kind, name)
)
"""
# A record whose name now reads as another release (the templates changed) starts again.
_UPSERT = """
INSERT INTO {records} AS r (kind, name, release, first_seen, last_seen)
SELECT kind, name, release, %(now)s, %(now)s
  FROM unnest(%(kinds)s::text[], %(names)s::text[], %(releases)s::text[])
       AS found (kind, name, release)
    ON CONFLICT (kind, name) DO UPDATE
   SET last_seen = excluded.last_seen,
       first_seen = CASE WHEN r.release = excluded.release THEN r.first_seen
                         ELSE excluded.first_seen END,
       release = excluded.release
RETURNING kind, name, first_seen
"""
_FORGET_UNSEEN = """
DELETE FROM {records} AS r
 WHERE r.kind = ANY(%(read)s)
   AND (%(mine)s::text[] IS NULL OR r.release = ANY(%(mine)s))
   AND NOT EXISTS (SELECT 1 FROM unnest(%(kinds)s::text[], %(names)s::text[]) AS found (kind, name)
                    WHERE found.kind = r.kind AND found.name = r.name)
"""

Conn = psycopg.Connection[Any]
Sighting = tuple[str, str, str]
"""(kind, name, release) of an orphan an audit found."""
FirstSeen = Mapping[tuple[str, str], datetime]
"""When each (kind, name) was first found."""


@dataclass(frozen=True)
class Records:
    """Where the records live: the Houston table's schema, table ``janitor_orphan``."""

    schema: str
    table: str = TABLE

    def ident(self) -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(self.schema), sql.Identifier(self.table))

    def name(self) -> str:
        return f"{self.schema}.{self.table}"


def _exists(conn: Conn, records: Records) -> bool:
    found = conn.execute("SELECT to_regclass(%s)", (records.ident().as_string(conn),)).fetchone()
    return bool(found and found[0])


def record(
    conn: Conn,
    records: Records,
    found: Sequence[Sighting],
    read: Collection[str],
    *,
    now: datetime,
    shard: Shard = WHOLE_FLEET,
) -> FirstSeen:
    """Records the sightings of one audit at ``now`` and forgets the orphans of the kinds
    it ``read`` in full that it no longer found; returns when each was first found. A
    shard's audit saw only its own releases' orphans and forgets only theirs (README
    "Sharding").
    Creates the table the first time (``CREATE`` on the schema is needed only then: a
    ``CREATE TABLE IF NOT EXISTS`` needs it even when the table exists)."""
    kinds, names, releases = (
        (list(column) for column in zip(*found, strict=True)) if found else ([], [], [])
    )
    with conn.transaction():
        if not _exists(conn, records):
            conn.execute(sql.SQL(_CREATE).format(records=records.ident()))
        mine: list[str] | None = None
        if shard.sharded:
            recorded = sql.SQL("SELECT DISTINCT release FROM {}").format(records.ident())
            mine = [r for (r,) in conn.execute(recorded) if shard.owns(r)]
        conn.execute(
            sql.SQL(_FORGET_UNSEEN).format(records=records.ident()),
            {"read": list(read), "kinds": kinds, "names": names, "mine": mine},
        )
        rows = conn.execute(
            sql.SQL(_UPSERT).format(records=records.ident()),
            {"now": now, "kinds": kinds, "names": names, "releases": releases},
        ).fetchall()
    return {(kind, name): first for kind, name, first in rows}


def read(conn: Conn, records: Records) -> FirstSeen:
    """When each recorded orphan was first found (nothing before the first recording)."""
    if not _exists(conn, records):
        return {}
    query = sql.SQL("SELECT kind, name, first_seen FROM {}").format(records.ident())
    return {(kind, name): first for kind, name, first in conn.execute(query)}


def problem(exc: psycopg.Error, records: Records, user: str) -> str:
    """What keeps the janitor from its records, with the grant that fixes a privilege."""
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        schema = sql.Identifier(records.schema).as_string(None)
        table = records.ident().as_string(None)
        who = sql.Identifier(user).as_string(None)
        return (
            f"cannot record orphans in {records.name()}: {postgres.describe(exc)} (fix: GRANT "
            f"CREATE ON SCHEMA {schema} TO {who} for the janitor to create it, or create it "
            f'(README "Orphans: janitor audit") and GRANT SELECT, INSERT, UPDATE, DELETE ON '
            f"{table} TO {who})"
        )
    return f"cannot record orphans in {records.name()}: {postgres.describe(exc)}"


@contextmanager
def locked_if_adopted(
    conn: Conn,
    release: str,
    *,
    records: Records,
    table: Table,
    cutoff: datetime,
) -> Iterator[bool]:
    """Holds the lock on ``release``'s records for the whole block; yields whether it is
    still an orphan past the grace period: recorded, every record first found at or before
    ``cutoff``, and no row of the deployments table holds the release (a restore in Houston
    meanwhile wins)."""
    mine = sql.SQL("SELECT first_seen FROM {} WHERE release = %(release)s FOR UPDATE").format(
        records.ident()
    )
    rowed = sql.SQL("SELECT 1 FROM {table} WHERE {release} = %(release)s LIMIT 1").format(
        **table.columns()
    )
    with conn.transaction():
        seen = [first for (first,) in conn.execute(mine, {"release": release})]
        has_row = conn.execute(rowed, {"release": release}).fetchone() is not None
        yield bool(seen) and max(seen) <= cutoff and not has_row


def forget(conn: Conn, records: Records, release: str) -> Result:
    """The purge of an adopted orphan, inside the caller's lock: its records go. There is
    no row of the deployments table to delete: ``absent``."""
    query = sql.SQL("DELETE FROM {} WHERE release = %(release)s").format(records.ident())
    try:
        with conn.transaction():
            deleted = conn.execute(query, {"release": release}).rowcount
    except psycopg.Error as exc:
        return failed(postgres.describe(exc))
    return Result("absent", fields={"orphan_records_deleted": deleted})
