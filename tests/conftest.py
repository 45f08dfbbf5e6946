"""Fixtures on the real PostgreSQL at 127.0.0.1:5432: a throwaway Houston database per test,
deployment databases and roles that look like Astronomer's, and a way to run the janitor
in-process and read its events.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
from _pytest.mark import ParameterSet
from hypothesis import HealthCheck, settings
from psycopg import sql

from janitor.cli import main

# Fixture modules shared by several test files (the Kubernetes API stand-in's `api`).
pytest_plugins = ["tests.k8s_api_server"]

# Property-based tests (SAFETY.md): `make test` runs the `ci` profile, a fixed set of examples
# (derandomized: the same draws on every run, so a new draw cannot turn CI red), `make soak`
# the `soak` profile (JANITOR_HYPOTHESIS_PROFILE=soak): many more random ones, whose failure
# prints the seed that replays it. A fleet's seed is far slower than hypothesis expects of an
# example, and no example database is kept between runs.
_PROPERTY_SETTINGS: dict[str, Any] = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("ci", max_examples=12, derandomize=True, **_PROPERTY_SETTINGS)
settings.register_profile("soak", max_examples=300, **_PROPERTY_SETTINGS)
settings.load_profile(os.environ.get("JANITOR_HYPOTHESIS_PROFILE", "ci"))


def soak_beyond(cases: Mapping[str, Any], in_make_test: Collection[str]) -> list[ParameterSet]:
    """``cases`` as pytest parameters named by their keys: those named in ``in_make_test``
    run in `make test`, every other one is marked ``soak`` and runs in `make soak` only
    (SAFETY.md). Raises ValueError for a name in ``in_make_test`` that is not a case."""
    unknown = set(in_make_test) - set(cases)
    if unknown:
        raise ValueError(f"not a case: {sorted(unknown)}")
    return [
        pytest.param(case, id=name, marks=() if name in in_make_test else pytest.mark.soak)
        for name, case in cases.items()
    ]


PG_HOST = os.environ.get("JANITOR_TEST_PG_HOST", "127.0.0.1")
PG_PORT = os.environ.get("JANITOR_TEST_PG_PORT", "5432")
ADMIN_DSN = f"host={PG_HOST} port={PG_PORT} user=postgres dbname=postgres"
SCHEMA = "houston$default"


def admin() -> psycopg.Connection[Any]:
    return psycopg.connect(ADMIN_DSN, autocommit=True)


def dsn(dbname: str, user: str = "postgres", password: str | None = None) -> str:
    text = f"host={PG_HOST} port={PG_PORT} user={user} dbname={dbname}"
    return f"{text} password={password}" if password else text


@dataclass
class Houston:
    """A Houston database with the deployments table Prisma creates, plus seeding helpers."""

    dbname: str
    prefix: str
    databases: set[str] = field(default_factory=set)
    roles: set[str] = field(default_factory=set)

    @property
    def dsn(self) -> str:
        return dsn(self.dbname)

    def release(self, name: str) -> str:
        """A release name unique to this test, so parallel or leftover state cannot collide."""
        return f"{self.prefix}-{name}"

    def add(self, release: str | None, deleted_days_ago: float | None = None) -> str:
        row_id = str(uuid.uuid4())
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(
                """INSERT INTO "houston$default"."Deployment"
                          (id, "releaseName", label, "deletedAt")
                   VALUES (%s, %s, %s,
                           CASE WHEN %s::float8 IS NULL THEN NULL
                                ELSE (now() AT TIME ZONE 'UTC')
                                     - make_interval(secs => %s::float8 * 86400) END)""",
                (row_id, release, f"label of {release}", deleted_days_ago, deleted_days_ago),
            )
        return row_id

    def deployment(
        self,
        name: str,
        deleted_days_ago: float | None = None,
        *,
        database: bool = True,
        roles: bool = True,
    ) -> str:
        """A deployment with its Airflow database (owned by its airflow role) and roles."""
        release = self.release(name)
        self.add(release, deleted_days_ago)
        snake = release.replace("-", "_")
        if roles:
            self.create_role(f"{snake}_airflow")
            self.create_role(f"{snake}_celery")
        if database:
            self.create_database(f"{snake}_airflow", owner=f"{snake}_airflow" if roles else None)
        return release

    def create_role(self, role: str) -> None:
        self.roles.add(role)
        with admin() as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))

    def create_database(self, name: str, owner: str | None = None) -> None:
        self.databases.add(name)
        with admin() as conn:
            statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if owner:
                statement += sql.SQL(" OWNER {}").format(sql.Identifier(owner))
            conn.execute(statement)
        # As keyword arguments: a name may hold what a DSN string would need quoted.
        with psycopg.connect(ADMIN_DSN, dbname=name, autocommit=True) as conn:
            conn.execute("CREATE TABLE dag_run (id serial PRIMARY KEY, dag_id text)")
            if owner:
                conn.execute(
                    sql.SQL("ALTER TABLE dag_run OWNER TO {}").format(sql.Identifier(owner))
                )

    def janitor_role(self, name: str, attributes: str = "CREATEROLE") -> str:
        """A non-superuser login role for the janitor, as on managed PostgreSQL: it may read,
        lock and delete Houston rows; returns its Houston DSN."""
        role = self.release(name)
        self.roles.add(role)
        ident = sql.Identifier(role)
        with admin() as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN " + attributes).format(ident))
            conn.execute(
                sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                    sql.Identifier(self.dbname), ident
                )
            )
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL('GRANT USAGE ON SCHEMA "houston$default" TO {}').format(ident))
            conn.execute(
                sql.SQL(
                    'GRANT SELECT, UPDATE, DELETE ON "houston$default"."Deployment" TO {}'
                ).format(ident)
            )
        return dsn(self.dbname, user=role)

    def rows(self) -> dict[str, Any]:
        with psycopg.connect(self.dsn) as conn:
            return dict(
                conn.execute(
                    'SELECT "releaseName", "deletedAt" FROM "houston$default"."Deployment"'
                ).fetchall()
            )

    def execute(self, query: str, params: Any = None) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(query, params)


def existing_databases(names: set[str] | list[str]) -> set[str]:
    with admin() as conn:
        return {
            r[0]
            for r in conn.execute(
                "SELECT datname FROM pg_database WHERE datname = ANY(%s)", (list(names),)
            )
        }


def existing_roles(names: set[str] | list[str]) -> set[str]:
    with admin() as conn:
        return {
            r[0]
            for r in conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (list(names),)
            )
        }


HOUSTON_TABLE = """
CREATE SCHEMA "houston$default";
CREATE TABLE "houston$default"."Deployment" (
    id text PRIMARY KEY,
    "releaseName" text,
    label text,
    "createdAt" timestamp(3) without time zone NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "deletedAt" timestamp(3) without time zone
);
"""


@contextmanager
def houston_database() -> Iterator[Houston]:
    """A fresh Houston database; drops it and every database and role seeded through it."""
    token = uuid.uuid4().hex[:8]
    state = Houston(dbname=f"houston_{token}", prefix=f"t{token}")
    with admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(state.dbname)))
    try:
        with psycopg.connect(state.dsn, autocommit=True) as conn:
            conn.execute(HOUSTON_TABLE)
        yield state
    finally:
        with admin() as conn:
            for name in sorted(state.databases | {state.dbname}):
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
            for role in sorted(state.roles):
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.fixture
def houston() -> Iterator[Houston]:
    """A fresh Houston database; drops every database and role the test created."""
    with houston_database() as state:
        yield state


@dataclass(frozen=True)
class Run:
    """What one janitor invocation printed and returned."""

    code: int
    events: list[dict[str, Any]]

    def of(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event]

    def outcomes(self, event: str) -> dict[str, str]:
        return {e["target"]: e["outcome"] for e in self.of(event)}

    @property
    def finished(self) -> dict[str, Any]:
        return self.events[-1]


def janitor(args: list[str], env: Mapping[str, str]) -> Run:
    """Runs the janitor CLI in-process with exactly `env` as its environment."""
    out = io.StringIO()
    code = main(
        [*args, "--log-format", "json"] if args and args[0] != "--version" else args,
        environ=dict(env),
        stdout=out,
    )
    events = [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]
    return Run(code, events)


@pytest.fixture
def env(houston: Houston) -> dict[str, str]:
    """The environment of a databases-only platform that keeps no images."""
    return {"JANITOR_HOUSTON_DSN": houston.dsn, "JANITOR_REGISTRY_URL": "none"}
