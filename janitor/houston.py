"""The Houston deployments table: the run's clock and lock, expired deployments, row lock, purge.

The row of an expired deployment is the only record of what still has to be cleaned, so it
goes last, and only under a row lock that re-checks it is still deleted and still past the
window (README "Safety rules").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from janitor import postgres
from janitor.plan import ABSENT, DONE, Deployment, Result, failed
from janitor.sharding import Shard

# A fixed key for pg_try_advisory_lock: "astro-janitor run lock" (any constant will do, as
# long as every janitor on the same Houston database agrees on it).
RUN_LOCK_KEY = 0x4A414E49544F52  # "JANITOR" in ASCII


@dataclass(frozen=True)
class Table:
    """Where deployments live; every name is an identifier, quoted by psycopg."""

    schema: str
    table: str
    id_column: str = "id"
    release_column: str = "releaseName"
    deleted_column: str = "deletedAt"

    def ident(self) -> sql.Composed:
        return sql.SQL("{}.{}").format(sql.Identifier(self.schema), sql.Identifier(self.table))

    def columns(self) -> dict[str, sql.Identifier]:
        return {
            "table": self.ident(),  # type: ignore[dict-item]
            "id": sql.Identifier(self.id_column),
            "release": sql.Identifier(self.release_column),
            "deleted": sql.Identifier(self.deleted_column),
        }

    def expired_condition(self) -> sql.Composed:
        # One clock per run: the cutoff is computed from the run's `now` (taken from the
        # database server) rather than each statement's now(), so every age agrees.
        return sql.SQL(
            "{deleted} IS NOT NULL AND {deleted} <= %(now)s - make_interval(days => %(days)s)"
        ).format(**self.columns())


@dataclass(frozen=True)
class Rejected:
    """An expired row the janitor must not act on, and why (reported as skipped every run)."""

    deployment: Deployment
    reason: str


@dataclass(frozen=True)
class Fleet:
    expired: tuple[Deployment, ...]
    rejected: tuple[Rejected, ...]


def server_now(conn: psycopg.Connection[Any]) -> datetime:
    ((now,),) = conn.execute("SELECT now()").fetchall()
    return now  # type: ignore[no-any-return]


def shard_lock_key(shard: Shard) -> int:
    """The advisory lock key of one shard: next to RUN_LOCK_KEY, one per (index, count)."""
    return RUN_LOCK_KEY + (shard.count << 8) + shard.index


def try_run_lock(conn: psycopg.Connection[Any], shard: Shard) -> bool:
    """Session-level advisory lock: held until released or the connection closes (a crash).

    A shard's run takes its shard's lock and shares the fleet's lock with the other shards
    (README "Sharding"): two runs of one shard exclude each other, runs of different shards
    do not, and an unsharded run excludes them all.
    """
    if not shard.sharded:
        return _taken(conn, "SELECT pg_try_advisory_lock(%s)", RUN_LOCK_KEY)
    if not _taken(conn, "SELECT pg_try_advisory_lock_shared(%s)", RUN_LOCK_KEY):
        return False
    if _taken(conn, "SELECT pg_try_advisory_lock(%s)", shard_lock_key(shard)):
        return True
    conn.execute("SELECT pg_advisory_unlock_shared(%s)", (RUN_LOCK_KEY,))
    return False


def _taken(conn: psycopg.Connection[Any], query: LiteralString, key: int) -> bool:
    row = conn.execute(query, (key,)).fetchone()
    return bool(row and row[0])


def release_run_lock(conn: psycopg.Connection[Any], shard: Shard) -> None:
    if not shard.sharded:
        conn.execute("SELECT pg_advisory_unlock(%s)", (RUN_LOCK_KEY,))
        return
    conn.execute(
        "SELECT pg_advisory_unlock(%s), pg_advisory_unlock_shared(%s)",
        (shard_lock_key(shard), RUN_LOCK_KEY),
    )


def read_fleet(
    conn: psycopg.Connection[Any],
    table: Table,
    *,
    now: datetime,
    retention_days: int,
    refusal: Callable[[str | None], str | None],
    shard: Shard,
) -> Fleet:
    """Expired deployments of ``shard`` the janitor may act on; the others of the shard
    as rejected, with why.

    ``refusal`` names what is wrong with a release name (naming.Templates.refusal): an
    invalid name, or one from which a resource name cannot be built. A release name that
    also belongs to a row that is live or not yet expired is rejected too.
    """
    query = sql.SQL(
        "SELECT {id}::text, {release}::text, {deleted}::text FROM {table}"
        " WHERE {expired} ORDER BY {deleted}, {id}"
    ).format(expired=table.expired_condition(), **table.columns())
    params = {"now": now, "days": retention_days}
    rows = [row for row in conn.execute(query, params) if shard.owns(row[1] or "")]
    candidates: list[Deployment] = []
    rejected: list[Rejected] = []
    for row_id, release, deleted_at in rows:
        deployment = Deployment(id=row_id, release_name=release or "", deleted_at=deleted_at)
        reason = refusal(release)
        if reason is None:
            candidates.append(deployment)
        else:
            rejected.append(Rejected(deployment, reason))
    in_use = _names_in_use(conn, table, [d.release_name for d in candidates], params)
    valid = []
    for deployment in candidates:
        if deployment.release_name in in_use:
            # Its databases and images would be the live deployment's: never touch them.
            rejected.append(
                Rejected(
                    deployment,
                    f"release name {deployment.release_name!r} also belongs to a deployment "
                    "that is live or not yet expired",
                )
            )
        else:
            valid.append(deployment)
    return Fleet(expired=tuple(valid), rejected=tuple(rejected))


def count_expired(
    conn: psycopg.Connection[Any],
    table: Table,
    *,
    now: datetime,
    retention_days: int,
    shard: Shard,
) -> int:
    """How many rows of ``shard`` are past the window at ``now``, whatever their names
    (README "Run metrics": janitor_expired_deployments_remaining)."""
    params = {"now": now, "days": retention_days}
    if not shard.sharded:
        query = sql.SQL("SELECT count(*) FROM {table} WHERE {expired}").format(
            expired=table.expired_condition(), **table.columns()
        )
        ((count,),) = conn.execute(query, params).fetchall()
        return int(count)
    # The shard of a row is sha256 of its release name (janitor.sharding), decided here.
    query = sql.SQL("SELECT {release}::text FROM {table} WHERE {expired}").format(
        expired=table.expired_condition(), **table.columns()
    )
    return sum(shard.owns(release or "") for (release,) in conn.execute(query, params))


def _names_in_use(
    conn: psycopg.Connection[Any], table: Table, names: Sequence[str], params: dict[str, Any]
) -> set[str]:
    if not names:
        return set()
    query = sql.SQL(
        "SELECT DISTINCT {release} FROM {table}"
        " WHERE {release} = ANY(%(names)s) AND NOT ({expired})"
    ).format(expired=table.expired_condition(), **table.columns())
    return {row[0] for row in conn.execute(query, {**params, "names": list(names)})}


@contextmanager
def locked_if_expired(
    conn: psycopg.Connection[Any],
    table: Table,
    deployment: Deployment,
    *,
    now: datetime,
    retention_days: int,
) -> Iterator[bool]:
    """Holds the row lock for the whole block; yields whether the row is still expired.

    The transaction stays open until the block ends, so a restore in Houston waits for the
    janitor to finish this deployment, and a restore that committed first wins.
    """
    query = sql.SQL("SELECT 1 FROM {table} WHERE {id} = %(id)s AND {expired} FOR UPDATE").format(
        expired=table.expired_condition(), **table.columns()
    )
    with conn.transaction():
        # The session's lock_timeout bounds the wait for a restore in Houston to commit.
        row = conn.execute(
            query, {"id": deployment.id, "now": now, "days": retention_days}
        ).fetchone()
        yield row is not None


def table_problems(conn: psycopg.Connection[Any], table: Table) -> Iterator[str]:
    """What keeps the janitor from using ``table``: it or a column missing, or a privilege
    (SELECT to read, UPDATE for the row lock FOR UPDATE, DELETE for the purge)."""
    qualified = table.ident().as_string(conn)
    found = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (qualified,)).fetchone()
    if not (found and found[0]):
        yield f"table {table.schema}.{table.table} not found"
        return
    columns = {
        row[0]
        for row in conn.execute(
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = %s AND table_name = %s",
            (table.schema, table.table),
        )
    }
    for column in (table.id_column, table.release_column, table.deleted_column):
        if column not in columns:
            yield f"column {column!r} not found in {table.table}"
    missing = missing_privileges(conn, table)
    if missing:
        yield privilege_fix(conn, table, missing)


# SELECT to read, UPDATE for the row lock (FOR UPDATE), DELETE for the purge.
ROW_PRIVILEGES = ("SELECT", "UPDATE", "DELETE")
_PRIVILEGES = (
    "SELECT has_table_privilege(current_user, %(t)s, 'SELECT'),"
    " has_table_privilege(current_user, %(t)s, 'UPDATE'),"
    " has_table_privilege(current_user, %(t)s, 'DELETE')"
)


def missing_privileges(conn: psycopg.Connection[Any], table: Table) -> list[str]:
    """The privileges on ``table`` the janitor needs and lacks, in one query."""
    row = conn.execute(_PRIVILEGES, {"t": table.ident().as_string(conn)}).fetchone() or ()
    return [p for p, granted in zip(ROW_PRIVILEGES, row, strict=True) if not granted]


def privilege_fix(conn: psycopg.Connection[Any], table: Table, missing: list[str]) -> str:
    """The sentence naming ``missing`` privileges and the GRANT that gives them."""
    qualified = table.ident().as_string(conn)
    user = sql.Identifier(str(conn.info.user)).as_string(conn)
    return (
        f"the janitor's role lacks {', '.join(missing)} on {table.schema}.{table.table}"
        f" (fix: GRANT {', '.join(missing)} ON {qualified} TO {user})"
    )


def purge(conn: psycopg.Connection[Any], table: Table, deployment: Deployment) -> Result:
    """Deletes the row inside the caller's row-lock transaction (a savepoint keeps it usable)."""
    query = sql.SQL("DELETE FROM {table} WHERE {id} = %(id)s").format(**table.columns())
    try:
        with conn.transaction():
            deleted = conn.execute(query, {"id": deployment.id}).rowcount
    except psycopg.Error as exc:
        return failed(postgres.describe(exc))
    return DONE if deleted else ABSENT


def release_names(conn: psycopg.Connection[Any], table: Table) -> frozenset[str]:
    """Every release name that still has a row, live or deleted (one query): their final
    backups are kept whatever their age (README "Final backups and restore"), and they
    account for the databases, roles and repositories their names give (README "Orphans:
    janitor audit")."""
    query = sql.SQL(
        "SELECT DISTINCT {release}::text FROM {table} WHERE {release} IS NOT NULL"
    ).format(**table.columns())
    return frozenset(row[0] for row in conn.execute(query))
