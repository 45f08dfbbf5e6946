"""Connections to PostgreSQL (the Houston database and the Airflow database server), bounded
waits, and one wording for what PostgreSQL reports (README "Time limits").

Every connection has a connect timeout and every statement the janitor sends runs under
``lock_timeout``: a statement that would wait longer for a lock fails with SQLSTATE 55P03
(lock_not_available), and the error then names who holds the lock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

APPLICATION_NAME = "astro-janitor"
# Enough sessions to name the culprit; a lock held by more is a pattern, not a session.
HOLDERS_SHOWN = 3


@dataclass(frozen=True)
class Timeouts:
    """How long the janitor waits on PostgreSQL, in seconds. A ``connect_timeout`` in the
    DSN itself wins over ``connect_s`` (the operator chose it)."""

    lock_s: int = 30
    connect_s: int = 10


DEFAULT_TIMEOUTS = Timeouts()


def _connect_kwargs(conninfo: str, timeouts: Timeouts) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"autocommit": True, "application_name": APPLICATION_NAME}
    if "connect_timeout" not in conninfo_to_dict(conninfo):
        kwargs["connect_timeout"] = timeouts.connect_s
    return kwargs


def connect(conninfo: str, timeouts: Timeouts = DEFAULT_TIMEOUTS) -> psycopg.Connection[Any]:
    """A configured autocommit connection; raises psycopg.OperationalError past the connect
    timeout."""
    conn = psycopg.connect(conninfo, **_connect_kwargs(conninfo, timeouts))
    configure(conn, timeouts)
    return conn


def configure(conn: psycopg.Connection[Any], timeouts: Timeouts = DEFAULT_TIMEOUTS) -> None:
    # Houston (Prisma) stores deletedAt as `timestamp without time zone` holding UTC; the
    # comparison with a timestamptz casts it through the session time zone, so pin it.
    conn.execute("SET TIME ZONE 'UTC'")
    conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{timeouts.lock_s}s")))


def open_pool(
    conninfo: str, size: int, name: str, timeouts: Timeouts = DEFAULT_TIMEOUTS
) -> ConnectionPool[psycopg.Connection[Any]]:
    """A pool of up to ``size`` configured connections, opened now."""
    return ConnectionPool(
        conninfo,
        min_size=1,
        max_size=size,
        kwargs=_connect_kwargs(conninfo, timeouts),
        configure=lambda conn: configure(conn, timeouts),
        # A pooled session may have died meanwhile (pg_terminate_backend, a failover, an
        # idle timeout): checked at checkout, it is replaced instead of failing the action.
        check=ConnectionPool.check_connection,
        name=name,
        open=True,
        timeout=float(timeouts.connect_s + timeouts.lock_s),
    )


def pools_transactions(conninfo: str, timeouts: Timeouts = DEFAULT_TIMEOUTS) -> bool:
    """Whether ``conninfo`` leads to a pooler that hands one server session to several
    clients (PgBouncer's transaction or statement pooling): two open connections then
    run on the same backend. The run lock (a session advisory lock) and the session's
    time zone and lock_timeout need a session of their own."""
    with connect(conninfo, timeouts) as first, connect(conninfo, timeouts) as second:
        (mine,) = first.execute("SELECT pg_backend_pid()").fetchone() or (None,)
        (theirs,) = second.execute("SELECT pg_backend_pid()").fetchone() or (None,)
    return mine == theirs


POOLED = (
    "JANITOR_HOUSTON_DSN leads to a pooler that shares one PostgreSQL session between "
    "clients (PgBouncer pool_mode=transaction or statement): the run lock, the session's "
    "time zone and lock_timeout need a session of their own; point it at PostgreSQL "
    "directly (or at a pool in session mode)"
)


def server_name(conninfo: str) -> str:
    """The server and database of ``conninfo`` as ``host:port/dbname``, for events (no
    credentials)."""
    parts = conninfo_to_dict(conninfo)
    return f"{parts.get('host', 'localhost')}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"


def describe(exc: psycopg.Error) -> str:
    """A database error in one line: SQLSTATE, message and the detail that explains it."""
    diag = exc.diag
    parts = [diag.message_primary or str(exc).strip().splitlines()[0]]
    if diag.message_detail:
        parts.append(diag.message_detail)
    text = ": ".join(parts)
    return f"{diag.sqlstate} {text}" if diag.sqlstate else text


# Sessions holding a granted lock on one object (a database or a role: pg_locks "object"
# rows) or on one table (pg_locks "relation" rows; row locks live in the tuples, so the
# sessions holding locks on the table are who may hold the row).
_OBJECT_HOLDERS = """
SELECT DISTINCT a.pid, a.application_name, a.usename, a.state
  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.granted AND l.pid <> pg_backend_pid()
   AND l.locktype = 'object' AND l.classid = %(catalog)s::regclass AND l.objid = %(oid)s
 ORDER BY a.pid
"""
_TABLE_HOLDERS = """
SELECT DISTINCT a.pid, a.application_name, a.usename, a.state
  FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
 WHERE l.granted AND l.pid <> pg_backend_pid()
   AND l.locktype = 'relation' AND l.relation = %(table)s::regclass
   AND a.state <> 'idle'
 ORDER BY a.pid
"""


def _holders(conn: psycopg.Connection[Any], query: str, params: dict[str, Any]) -> str:
    try:
        rows = conn.execute(query, params).fetchall()
    except psycopg.Error:
        return "who holds it could not be read"
    if not rows:
        return "the holder has let go since"
    shown = [
        f"pid {pid} (application {app!r}, user {user!r}, {state})"
        for pid, app, user, state in rows[:HOLDERS_SHOWN]
    ]
    more = f" and {len(rows) - HOLDERS_SHOWN} more" if len(rows) > HOLDERS_SHOWN else ""
    return "held by " + ", ".join(shown) + more + " (pg_terminate_backend(pid) ends one)"


def object_holders(conn: psycopg.Connection[Any], catalog: str, oid: int) -> str:
    """Who holds a lock on the database or role ``oid`` of ``catalog`` (pg_database,
    pg_authid), as a phrase for an error."""
    return _holders(conn, _OBJECT_HOLDERS, {"catalog": catalog, "oid": oid})


def table_holders(conn: psycopg.Connection[Any], qualified_table: str) -> str:
    """Who holds a lock on ``qualified_table`` (quoted, schema-qualified), as a phrase."""
    return _holders(conn, _TABLE_HOLDERS, {"table": qualified_table})


def lock_wait(waited_for: str, timeouts: Timeouts, holders: str) -> str:
    """The error of a statement that ran into ``lock_timeout``."""
    return (
        f"waited {timeouts.lock_s}s (JANITOR_LOCK_TIMEOUT_SECONDS) for a lock on {waited_for}; "
        f"{holders}"
    )
