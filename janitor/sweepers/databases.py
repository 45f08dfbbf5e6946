"""Databases sweeper: each expired deployment's Airflow metadata database, then its roles.

Names come only from the configured templates applied to a validated release name, and go
into SQL only through ``psycopg.sql.Identifier`` (SPEC.md "Safety rules").
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from janitor import postgres
from janitor.naming import Templates
from janitor.plan import (
    ABSENT,
    DONE,
    PLANNED,
    Action,
    Deployment,
    DeploymentPlan,
    DeploymentSweeper,
    Result,
    Share,
    Step,
    failed,
    final,
    single,
    skipped,
)
from janitor.postgres import describe

ALWAYS_PROTECTED_DATABASES = frozenset({"postgres", "template0", "template1"})
ALWAYS_PROTECTED_ROLES = frozenset({"postgres"})
# DROP DATABASE ... WITH (FORCE) exists from PostgreSQL 13 on.
FORCE_DROP_VERSION = 130000

Connect = Callable[[], AbstractContextManager[psycopg.Connection[Any]]]


@dataclass(frozen=True)
class Server:
    """The Airflow database server as the janitor sees it at plan time."""

    connect: Connect
    conninfo: str
    version: int
    databases: frozenset[str]
    roles: Mapping[str, bool]
    """Existing roles among the candidates, mapped to whether they are superusers."""
    protected_databases: frozenset[str]
    protected_roles: frozenset[str]


@dataclass(frozen=True)
class Protected:
    """Names no template may reach besides the built-in ones: the Houston database and the
    role the janitor logs in to Houston as."""

    databases: frozenset[str] = frozenset()
    roles: frozenset[str] = frozenset()


def sweeper(
    conninfo: str,
    templates: Templates,
    *,
    protected: Protected,
    concurrency: int,
    stack: ExitStack,
) -> DeploymentSweeper:
    """The databases sweeper for the Airflow database server at ``conninfo``; its
    connection pool, opened by the first plan, is closed with ``stack``."""

    def plan(deployments: Sequence[Deployment]) -> DeploymentPlan:
        if not deployments:
            return DeploymentPlan({})
        try:
            # A direct connection fails fast with the server's own words; a pool would
            # only time out.
            postgres.connect(conninfo).close()
            pool = stack.enter_context(postgres.open_pool(conninfo, concurrency, "airflow"))
            server = inspect_server(
                pool.connection,
                conninfo,
                templates,
                deployments,
                protected_databases=protected.databases,
                protected_roles=protected.roles,
            )
        except psycopg.Error as exc:
            failure = Action("database.drop", postgres.server_name(conninfo), failed(describe(exc)))
            return DeploymentPlan({}, (final(failure),), "databases could not be swept")
        steps = plan_databases(server, templates, deployments)
        return DeploymentPlan({key: Share(value) for key, value in steps.items()})

    def problems() -> list[str]:
        try:
            return list(server_problems(lambda: postgres.connect(conninfo)))
        except psycopg.Error as exc:
            return [f"cannot use {postgres.server_name(conninfo)}: {describe(exc)}"]

    return DeploymentSweeper("databases", "database.drop", plan, problems)


def inspect_server(
    connect: Connect,
    conninfo: str,
    naming: Templates,
    deployments: Sequence[Deployment],
    *,
    protected_databases: frozenset[str],
    protected_roles: frozenset[str],
) -> Server:
    """All reads the plan needs, in three queries whatever the fleet size."""
    databases = [naming.database_name(d.release_name) for d in deployments]
    roles = [r for d in deployments for r in naming.role_names(d.release_name)]
    with connect() as conn:
        existing_dbs = {
            row[0]
            for row in conn.execute(
                "SELECT datname FROM pg_database WHERE datname = ANY(%s)", (databases,)
            )
        }
        existing_roles = {
            row[0]: row[1]
            for row in conn.execute(
                "SELECT rolname, rolsuper FROM pg_roles WHERE rolname = ANY(%s)", (roles,)
            )
        }
        ((current_database, current_user),) = conn.execute(
            "SELECT current_database(), current_user"
        ).fetchall()
        version = conn.info.server_version
    return Server(
        connect=connect,
        conninfo=conninfo,
        version=version,
        databases=frozenset(existing_dbs),
        roles=existing_roles,
        protected_databases=ALWAYS_PROTECTED_DATABASES | protected_databases | {current_database},
        protected_roles=ALWAYS_PROTECTED_ROLES | protected_roles | {current_user},
    )


def plan_databases(
    server: Server, naming: Templates, deployments: Sequence[Deployment]
) -> dict[str, tuple[Step, ...]]:
    """Per deployment id: drop the database first, then the roles (they own it)."""
    return {
        d.id: (
            _database_step(server, naming.database_name(d.release_name), d.release_name),
            *(
                _role_step(server, role, d.release_name)
                for role in naming.role_names(d.release_name)
            ),
        )
        for d in deployments
    }


def _refusal(name: str, protected: frozenset[str]) -> str | None:
    # Names too long for PostgreSQL never get here: naming.Templates.refusal keeps their
    # deployment out of the plan.
    return "protected" if name in protected else None


def _database_step(server: Server, name: str, release: str) -> Step:
    refusal = _refusal(name, server.protected_databases)
    if refusal:
        return final(Action("database.drop", name, skipped(refusal), release))
    if name not in server.databases:
        return final(Action("database.drop", name, ABSENT, release))
    action = Action("database.drop", name, PLANNED, release)
    return single(action, lambda: drop_database(server, name))


def _role_step(server: Server, name: str, release: str) -> Step:
    refusal = _refusal(name, server.protected_roles) or _role_refusal(name, server.roles)
    if refusal:
        return final(Action("role.drop", name, skipped(refusal), release))
    if name not in server.roles:
        return final(Action("role.drop", name, ABSENT, release))
    action = Action("role.drop", name, PLANNED, release)
    return single(action, lambda: drop_role(server, name))


def _role_refusal(name: str, roles: Mapping[str, bool]) -> str | None:
    if name.startswith("pg_"):
        return "protected (pg_ roles are reserved)"
    if roles.get(name):
        return "protected (superuser)"
    return None


def drop_database(server: Server, name: str) -> Result:
    ident = sql.Identifier(name)
    try:
        with server.connect() as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
                return ABSENT
            if server.version >= FORCE_DROP_VERSION:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
            else:
                # Before 13: stop new sessions, end the open ones, then drop.
                conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(ident))
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = %s AND pid <> pg_backend_pid()",
                    (name,),
                )
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(ident))
    except psycopg.Error as exc:
        return failed(f"cannot drop database {name}: {describe(exc)}")
    return DONE


_DEPENDENCIES = """
SELECT d.datname, count(*) FILTER (
         WHERE s.deptype = 'o' AND s.classid <> 'pg_default_acl'::regclass) AS owned,
       count(*) FILTER (
         WHERE s.deptype <> 'o' OR s.classid = 'pg_default_acl'::regclass) AS grants
  FROM pg_shdepend s LEFT JOIN pg_database d ON d.oid = s.dbid
 WHERE s.refclassid = 'pg_authid'::regclass AND s.refobjid = %s
 GROUP BY d.datname
"""


def drop_role(server: Server, name: str) -> Result:
    """Drops the role after revoking what it was granted; refuses when it still owns things.

    Objects the role owns outside its (already dropped) database are other people's data:
    they are named in the error rather than reassigned or dropped behind the operator's back.
    """
    try:
        with server.connect() as conn:
            row = conn.execute("SELECT oid FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
            if row is None:
                return ABSENT
            blockers, grant_dbs = _dependencies(conn, row[0])
            if blockers:
                return failed(f"cannot drop role {name}: it owns {'; '.join(blockers)}")
            for database in grant_dbs:
                _revoke_grants(server, conn, database, name)
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
    except psycopg.Error as exc:
        return failed(f"cannot drop role {name}: {describe(exc)}")
    return DONE


def _dependencies(conn: psycopg.Connection[Any], oid: int) -> tuple[list[str], list[str | None]]:
    blockers: list[str] = []
    grant_dbs: list[str | None] = []
    owned_databases = [
        r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datdba = %s", (oid,))
    ]
    if owned_databases:
        blockers.append("database " + ", ".join(sorted(owned_databases)))
    for database, owned, grants in conn.execute(_DEPENDENCIES, (oid,)):
        if database is None:
            # dbid 0: shared objects. Ownership of databases is named above; what is left
            # are grants on databases/tablespaces, revoked by DROP OWNED in any database.
            if grants:
                grant_dbs.append(None)
            continue
        if owned:
            blockers.append(
                f"{owned} object(s) in database {database} (reassign or drop them first:"
                f" REASSIGN OWNED BY ... TO ... in {database})"
            )
        elif grants:
            grant_dbs.append(database)
    return blockers, grant_dbs


def _revoke_grants(
    server: Server, admin: psycopg.Connection[Any], database: str | None, role: str
) -> None:
    # DROP OWNED only revokes here: _dependencies proved the role owns nothing in `database`.
    statement = sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role))
    if database is None or database == admin.info.dbname:
        admin.execute(statement)
        return
    with psycopg.connect(make_conninfo(server.conninfo, dbname=database), autocommit=True) as conn:
        conn.execute(statement)


def server_problems(connect: Connect) -> Iterator[str]:
    """What `janitor check` reports about the Airflow database server account."""
    with connect() as conn:
        row = conn.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
    if row is None:
        yield "the Airflow database account cannot read its own pg_roles entry"
        return
    superuser, createdb, createrole = row
    if superuser:
        return
    if not createdb:
        yield (
            "the Airflow database account lacks CREATEDB: it can drop only databases it owns"
            " (grant: ALTER ROLE <janitor> CREATEDB, and make it a member of each"
            " deployment role, or use a superuser)"
        )
    if not createrole:
        yield "the Airflow database account lacks CREATEROLE: it cannot drop deployment roles"
