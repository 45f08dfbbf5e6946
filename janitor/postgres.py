"""Connections to PostgreSQL (the Houston database and the Airflow database server), and
one wording for what PostgreSQL reports."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

APPLICATION_NAME = "astro-janitor"


def connect(conninfo: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(conninfo, autocommit=True, application_name=APPLICATION_NAME)
    configure(conn)
    return conn


def configure(conn: psycopg.Connection[Any]) -> None:
    # Houston (Prisma) stores deletedAt as `timestamp without time zone` holding UTC; the
    # comparison with a timestamptz casts it through the session time zone, so pin it.
    conn.execute("SET TIME ZONE 'UTC'")


def open_pool(conninfo: str, size: int, name: str) -> ConnectionPool[psycopg.Connection[Any]]:
    """A pool of up to ``size`` configured connections, opened now."""
    return ConnectionPool(
        conninfo,
        min_size=1,
        max_size=size,
        kwargs={"autocommit": True, "application_name": APPLICATION_NAME},
        configure=configure,
        name=name,
        open=True,
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
