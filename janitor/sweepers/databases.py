"""Databases sweeper: each expired deployment's Airflow metadata database, then its roles.

Names come only from the configured templates applied to a validated release name, and go
into SQL only through ``psycopg.sql.Identifier`` (README "Safety rules").

Plan = execution (README "How a run works"): the plan reads, for the whole fleet in a few
catalog queries, what the janitor's account may drop and what would stop a drop (prepared
transactions, replication slots, subscriptions, objects a role owns elsewhere). What it may
not do or cannot do is ``failed`` in the plan, dry run and real run alike, with the grant
or statement that fixes it, and is never attempted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

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
from janitor.postgres import DEFAULT_TIMEOUTS, Timeouts, describe

if TYPE_CHECKING:
    from janitor.backup import Backups, Prepared

ALWAYS_PROTECTED_DATABASES = frozenset({"postgres", "template0", "template1"})
ALWAYS_PROTECTED_ROLES = frozenset({"postgres"})
# DROP DATABASE ... WITH (FORCE) exists from PostgreSQL 13 on.
FORCE_DROP_VERSION = 130000
# From PostgreSQL 16 on, CREATEROLE alone no longer lets a role drop other roles: it needs
# ADMIN OPTION on each (release notes 16, "Restrict the privileges of CREATEROLE").
ADMIN_OPTION_VERSION = 160000

Connect = Callable[[], AbstractContextManager[psycopg.Connection[Any]]]


@dataclass(frozen=True)
class Account:
    """The role the janitor logs in to the Airflow database server as."""

    name: str
    superuser: bool
    createrole: bool
    may_signal: bool
    """Member of pg_signal_backend: may end other roles' sessions (DROP ... WITH (FORCE))."""


@dataclass(frozen=True)
class DatabaseFacts:
    """An existing deployment database, as the plan reads it."""

    owner: str
    may_drop: bool
    """The account is superuser, or a member of the owner (PostgreSQL: DROP DATABASE)."""
    blockers: tuple[str, ...] = ()
    """What would make the server refuse the drop, each with what clears it."""


@dataclass(frozen=True)
class RoleFacts:
    """An existing deployment role, as the plan reads it."""

    superuser: bool
    may_drop: bool
    owned_databases: frozenset[str] = frozenset()
    owned_elsewhere: Mapping[str, int] = field(default_factory=dict)
    """Objects it owns, by database (not counting its databases, listed above)."""
    unrevokable: Mapping[str, str] = field(default_factory=dict)
    """Privileges it holds that the account may not revoke: the database they are in (or
    on), with the owner of the objects they are on."""


@dataclass(frozen=True)
class Server:
    """The Airflow database server as the janitor sees it at plan time."""

    connect: Connect
    conninfo: str
    version: int
    account: Account
    databases: Mapping[str, DatabaseFacts]
    roles: Mapping[str, RoleFacts]
    protected_databases: frozenset[str]
    protected_roles: frozenset[str]
    timeouts: Timeouts = DEFAULT_TIMEOUTS
    revoking: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)
    """Held while a role's grants are revoked: an object's privileges are one catalog row,
    and two REVOKEs of it at once (deployments dropped in parallel whose roles were granted
    the same table) make PostgreSQL fail one with XX000 "tuple concurrently updated"."""


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
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
    backups: Backups | None = None,
) -> DeploymentSweeper:
    """The databases sweeper for the Airflow database server at ``conninfo``; its
    connection pool, opened by the first plan, is closed with ``stack``. With ``backups``,
    every database is backed up and verified before it is dropped (README "Final backups
    and restore")."""

    def read(deployments: Sequence[Deployment], connect: Connect) -> Server:
        return inspect_server(
            connect,
            conninfo,
            templates,
            deployments,
            protected_databases=protected.databases,
            protected_roles=protected.roles,
            timeouts=timeouts,
        )

    def plan(deployments: Sequence[Deployment]) -> DeploymentPlan:
        if not deployments:
            return DeploymentPlan({})
        try:
            # A direct connection fails fast with the server's own words; a pool would
            # only time out.
            postgres.connect(conninfo, timeouts).close()
            pool = stack.enter_context(
                postgres.open_pool(conninfo, concurrency, "airflow", timeouts)
            )
            server = read(deployments, pool.connection)
        except psycopg.Error as exc:
            failure = Action("database.drop", postgres.server_name(conninfo), failed(describe(exc)))
            return DeploymentPlan({}, (final(failure),), "databases could not be swept")
        steps = plan_databases(server, templates, deployments, _prepared(server))
        return DeploymentPlan({key: Share(value) for key, value in steps.items()})

    def _prepared(server: Server) -> Prepared | None:
        if backups is None:
            return None
        from janitor.backup import prepare  # noqa: PLC0415 - only with JANITOR_BACKUP_URL

        return prepare(backups, conninfo, timeouts, server.version)

    def problems(deployments: Sequence[Deployment]) -> list[str]:
        """The account's missing role attributes, then what the plan of ``deployments``
        would report failed: the same code as a run."""
        try:
            server = read(deployments, lambda: postgres.connect(conninfo, timeouts))
        except psycopg.Error as exc:
            return [f"cannot use {postgres.server_name(conninfo)}: {describe(exc)}"]
        found = list(account_problems(server.account))
        if backups is not None:
            from janitor.backup import find_tools  # noqa: PLC0415 - only with JANITOR_BACKUP_URL

            tools = find_tools(server.version)
            found += [f"final backups: {tools}"] if isinstance(tools, str) else []
        for steps in plan_databases(server, templates, deployments).values():
            found += [
                str(a.planned.error)
                for step in steps
                for a in step.actions
                if a.planned.outcome == "failed"
            ]
        return found

    return DeploymentSweeper("databases", "database.drop", plan, problems)


_ACCOUNT = """
SELECT current_user, rolsuper, rolcreaterole,
       pg_has_role(current_user, 'pg_signal_backend', 'MEMBER')
  FROM pg_roles WHERE rolname = current_user
"""
_DATABASES = """
SELECT datname, pg_get_userbyid(datdba), pg_has_role(current_user, datdba, 'MEMBER')
  FROM pg_database WHERE datname = ANY(%(names)s)
"""
# Each kind of drop blocker with the statement that clears it (README "Safety rules"): the
# janitor clears none itself, they may belong to someone's pipeline.
_BLOCKERS = """
SELECT database, 'prepared transaction ' || quote_literal(gid)
       || ' (COMMIT PREPARED or ROLLBACK PREPARED ' || quote_literal(gid) || ')'
  FROM pg_prepared_xacts WHERE database = ANY(%(names)s)
UNION ALL
SELECT database, 'logical replication slot ' || quote_literal(slot_name)
       || ' (SELECT pg_drop_replication_slot(' || quote_literal(slot_name) || '))'
  FROM pg_replication_slots WHERE database = ANY(%(names)s)
UNION ALL
SELECT d.datname, 'subscription ' || quote_ident(s.subname)
       || ' (ALTER SUBSCRIPTION ' || quote_ident(s.subname) || ' DISABLE; ALTER SUBSCRIPTION '
       || quote_ident(s.subname) || ' SET (slot_name = NONE); DROP SUBSCRIPTION '
       || quote_ident(s.subname) || ')'
  FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid
 WHERE d.datname = ANY(%(names)s)
UNION ALL
SELECT datname, 'session ' || pid || ' of role ' || quote_ident(usename)
       || ', which the janitor may not end (GRANT pg_signal_backend TO '
       || quote_ident(current_user) || ')'
  FROM pg_stat_activity
 WHERE datname = ANY(%(names)s) AND pid <> pg_backend_pid() AND NOT %(may_signal)s
   AND NOT pg_has_role(current_user, usesysid, 'MEMBER')
"""
_ROLES = """
SELECT r.rolname, r.rolsuper, r.oid,
       pg_has_role(current_user, r.oid, 'MEMBER WITH ADMIN OPTION')
  FROM pg_roles r WHERE r.rolname = ANY(%(names)s)
"""
_OWNED_DATABASES = """
SELECT pg_get_userbyid(datdba), datname FROM pg_database
 WHERE pg_get_userbyid(datdba) = ANY(%(names)s)
"""
# Objects owned in each database (pg_shdepend deptype 'o'; default ACLs are only grants).
_OWNED_OBJECTS = """
SELECT pg_get_userbyid(s.refobjid), d.datname, count(*)
  FROM pg_shdepend s JOIN pg_database d ON d.oid = s.dbid
 WHERE s.refclassid = 'pg_authid'::regclass AND s.deptype = 'o'
   AND s.classid <> 'pg_default_acl'::regclass
   AND s.refobjid = ANY(%(oids)s)
 GROUP BY 1, 2
"""


# Privileges each role holds (pg_shdepend deptype 'a') on objects whose owner the account is
# not a member of. DROP OWNED, run as the account, revokes only grants it may revoke as the
# owner (REVOKE, "Notes"); DROP ROLE then refuses (2BP01). pg_shdepend records no ownership
# by the bootstrap superuser (oid 10). A privilege on a database is listed under that
# database: it goes with it when that database is dropped.
_UNREVOKABLE = """
SELECT pg_get_userbyid(a.refobjid),
       coalesce(d.datname, on_database.datname, ''),
       pg_get_userbyid(coalesce(o.refobjid, 10))
  FROM pg_shdepend a
  LEFT JOIN pg_database d ON d.oid = a.dbid
  LEFT JOIN pg_database on_database
         ON a.classid = 'pg_database'::regclass AND on_database.oid = a.objid
  LEFT JOIN pg_shdepend o
         ON o.dbid = a.dbid AND o.classid = a.classid AND o.objid = a.objid
        AND o.objsubid = 0 AND o.deptype = 'o'
 WHERE a.refclassid = 'pg_authid'::regclass AND a.deptype = 'a'
   AND a.refobjid = ANY(%(oids)s)
   AND NOT pg_has_role(current_user, coalesce(o.refobjid, 10), 'MEMBER')
"""


def inspect_server(
    connect: Connect,
    conninfo: str,
    naming: Templates,
    deployments: Sequence[Deployment],
    *,
    protected_databases: frozenset[str],
    protected_roles: frozenset[str],
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
) -> Server:
    """All reads the plan needs, in a fixed number of catalog queries whatever the fleet."""
    database_names = [naming.database_name(d.release_name) for d in deployments]
    role_names = [r for d in deployments for r in naming.role_names(d.release_name)]
    with connect() as conn:
        ((user, superuser, createrole, may_signal),) = conn.execute(_ACCOUNT).fetchall()
        account = Account(user, superuser, createrole, may_signal)
        blockers: dict[str, list[str]] = {}
        params = {"names": database_names, "may_signal": superuser or may_signal}
        for database, blocker in conn.execute(_BLOCKERS, params):
            blockers.setdefault(database, []).append(blocker)
        databases = {
            name: DatabaseFacts(owner, may_drop, tuple(blockers.get(name, ())))
            for name, owner, may_drop in conn.execute(_DATABASES, {"names": database_names})
        }
        role_rows = conn.execute(_ROLES, {"names": role_names}).fetchall()
        owned_databases: dict[str, set[str]] = {}
        for owner, database in conn.execute(_OWNED_DATABASES, {"names": role_names}):
            owned_databases.setdefault(owner, set()).add(database)
        owned_objects: dict[str, dict[str, int]] = {}
        oids = [row[2] for row in role_rows]
        for owner, database, count in conn.execute(_OWNED_OBJECTS, {"oids": oids}):
            owned_objects.setdefault(owner, {})[database] = count
        unrevokable: dict[str, dict[str, str]] = {}
        for grantee, database, owner in conn.execute(_UNREVOKABLE, {"oids": oids}):
            unrevokable.setdefault(grantee, {})[database] = owner
        ((current_database,),) = conn.execute("SELECT current_database()").fetchall()
        version = conn.info.server_version
    roles = {
        name: RoleFacts(
            superuser=is_super,
            may_drop=_may_drop_role(account, version, admin),
            owned_databases=frozenset(owned_databases.get(name, ())),
            owned_elsewhere=owned_objects.get(name, {}),
            unrevokable=unrevokable.get(name, {}),
        )
        for name, is_super, _, admin in role_rows
    }
    return Server(
        connect=connect,
        conninfo=conninfo,
        version=version,
        account=account,
        databases=databases,
        roles=roles,
        protected_databases=ALWAYS_PROTECTED_DATABASES | protected_databases | {current_database},
        protected_roles=ALWAYS_PROTECTED_ROLES | protected_roles | {user},
        timeouts=timeouts,
    )


def _may_drop_role(account: Account, version: int, admin_option: bool) -> bool:
    if account.superuser:
        return True
    if version >= ADMIN_OPTION_VERSION:
        return account.createrole and admin_option
    return account.createrole


def plan_databases(
    server: Server,
    naming: Templates,
    deployments: Sequence[Deployment],
    backup: Prepared | None = None,
) -> dict[str, tuple[Step, ...]]:
    """Per deployment id: drop the database first, then the roles (they own it); with
    ``backup``, a verified backup of the database before its drop."""
    plans: dict[str, tuple[Step, ...]] = {}
    for d in deployments:
        database = naming.database_name(d.release_name)
        database_step = _database_step(server, database, d.release_name)
        (database_action,) = database_step.actions
        dropped = {database} if database_action.planned.outcome in ("planned", "absent") else set()
        role_steps = tuple(
            _role_step(server, role, d.release_name, dropped)
            for role in naming.role_names(d.release_name)
        )
        if database_action.planned.outcome != "planned":
            plans[d.id] = (database_step, *role_steps)
            continue
        # A role drop revokes its grants with DROP OWNED in each database holding them,
        # which would destroy the data of a database that stays: roles go only once their
        # database is gone.
        drop = _in_order(database_step, role_steps, f"database {database} was not dropped")
        if backup is not None:
            drop = _backed_up(server, backup, naming.role_names(d.release_name), drop)
        plans[d.id] = (drop,)
    return plans


def _in_order(head: Step, tail: Sequence[Step], reason: str) -> Step:
    """One step: ``head`` (one action), then ``tail`` only when ``head`` ended done or
    absent; otherwise what ``tail`` would have changed is skipped with ``reason`` and
    ``head``'s own words."""
    actions = head.actions + tuple(a for step in tail for a in step.actions)

    def run() -> list[Result]:
        (result,) = _results(head)
        if result.outcome not in ("done", "absent"):
            why = f"{reason}: {result.error or result.reason or result.outcome}"
            return [result] + [skipped(why) if a.deletes else a.planned for a in actions[1:]]
        return [result] + [r for step in tail for r in _results(step)]

    return Step(actions, run)


def _results(step: Step) -> list[Result]:
    return list(step.run()) if step.run is not None else [a.planned for a in step.actions]


def _backed_up(server: Server, backup: Prepared, roles: Sequence[str], drop: Step) -> Step:
    """README "Final backups and restore": no DROP DATABASE without a verified backup of
    the database ``drop`` starts with; a backup that cannot be taken skips the drop and the
    roles (the row stays)."""
    from janitor.backup import take  # noqa: PLC0415 - only with JANITOR_BACKUP_URL

    database, release = drop.actions[0].target, drop.actions[0].deployment or ""
    action = backup.action(release, database)
    if action.planned.outcome == "failed":
        why = skipped(f"backup failed: {action.planned.error}")
        kept = [replace(a, planned=why) if a.deletes else a for a in drop.actions]
        return Step((action, *kept))
    head = single(action, lambda: take(backup, server.connect, release, database, roles))
    return _in_order(head, (drop,), "backup failed")


def _database_step(server: Server, name: str, release: str) -> Step:
    facts = server.databases.get(name)
    if name in server.protected_databases:
        result = skipped("protected")
    elif facts is None:
        result = ABSENT
    else:
        error = _database_refusal(server.account, name, facts)
        if error is None:
            action = Action("database.drop", name, PLANNED, release)
            return single(action, lambda: drop_database(server, name))
        result = failed(error)
    return final(Action("database.drop", name, result, release))


def _database_refusal(account: Account, name: str, facts: DatabaseFacts) -> str | None:
    if not facts.may_drop:
        return (
            f"cannot drop database {name}: the janitor's role {account.name} is neither "
            f"superuser nor a member of its owner {facts.owner} (fix: GRANT "
            f"{_quoted(facts.owner)} TO {_quoted(account.name)}; or ALTER DATABASE "
            f"{_quoted(name)} OWNER TO {_quoted(account.name)})"
        )
    if facts.blockers:
        return f"cannot drop database {name}: it has " + "; ".join(facts.blockers)
    return None


def _role_step(server: Server, name: str, release: str, dropped: set[str]) -> Step:
    facts = server.roles.get(name)
    if name in server.protected_roles or name.startswith("pg_"):
        reserved = " (pg_ roles are reserved)" if name.startswith("pg_") else ""
        result = skipped("protected" + reserved)
    elif facts is None:
        result = ABSENT
    elif facts.superuser:
        result = skipped("protected (superuser)")
    else:
        error = _role_refusal(server, name, facts, dropped)
        if error is None:
            action = Action("role.drop", name, PLANNED, release)
            return single(action, lambda: drop_role(server, name))
        result = failed(error)
    return final(Action("role.drop", name, result, release))


def _role_refusal(server: Server, name: str, facts: RoleFacts, dropped: set[str]) -> str | None:
    account = server.account
    if not facts.may_drop:
        if server.version >= ADMIN_OPTION_VERSION:
            fix = (
                f"on PostgreSQL 16 and later it needs CREATEROLE and ADMIN OPTION on the role: "
                f"GRANT {_quoted(name)} TO {_quoted(account.name)} WITH ADMIN OPTION"
            )
        else:
            fix = f"it needs CREATEROLE: ALTER ROLE {_quoted(account.name)} CREATEROLE"
        return f"cannot drop role {name}: the janitor's role {account.name} may not ({fix})"
    kept = sorted(facts.owned_databases - dropped)
    if kept:
        return (
            f"cannot drop role {name}: it owns database {', '.join(kept)}, which this run does "
            "not drop"
        )
    elsewhere = {db: n for db, n in facts.owned_elsewhere.items() if db not in dropped}
    if elsewhere:
        return f"cannot drop role {name}: it owns " + "; ".join(
            f"{n} object(s) in database {db} (reassign or drop them first: "
            f"REASSIGN OWNED BY {_quoted(name)} TO ... in {db})"
            for db, n in sorted(elsewhere.items())
        )
    granted = {db: owner for db, owner in facts.unrevokable.items() if db not in dropped}
    if granted:
        return (
            f"cannot drop role {name}: the janitor's role {account.name} may not revoke its "
            "privileges on objects of roles it is not a member of: "
            + "; ".join(
                f"in database {db}, on objects of {owner} (fix: DROP OWNED BY "
                f"{_quoted(name)} in {db}, as {_quoted(owner)} or a superuser)"
                for db, owner in sorted(granted.items())
            )
        )
    return None


def _quoted(name: str) -> str:
    return sql.Identifier(name).as_string(None)


# How each kind of object is looked up, and the catalog its locks name (pg_locks.classid).
_LOOKUP = {
    "database": ("SELECT oid FROM pg_database WHERE datname = %s", "pg_database"),
    "role": ("SELECT oid FROM pg_roles WHERE rolname = %s", "pg_authid"),
}


def _drop(
    server: Server,
    kind: str,
    name: str,
    statements: Callable[[psycopg.Connection[Any], int], None],
) -> Result:
    """Runs ``statements`` for the ``kind`` object ``name`` when it still exists: absent when
    gone already; failed with the lock's holders when it waits past the lock timeout."""
    query, catalog = _LOOKUP[kind]
    try:
        with server.connect() as conn:
            row = conn.execute(query, (name,)).fetchone()
            if row is None:
                return ABSENT
            try:
                statements(conn, row[0])
            except psycopg.errors.LockNotAvailable:
                holders = postgres.object_holders(conn, catalog, row[0])
                wait = postgres.lock_wait(f"{kind} {name}", server.timeouts, holders)
                return failed(f"cannot drop {kind} {name}: {wait}")
    except psycopg.Error as exc:
        return failed(f"cannot drop {kind} {name}: {describe(exc)}")
    return DONE


def drop_database(server: Server, name: str) -> Result:
    ident = sql.Identifier(name)
    return _drop(
        server, "database", name, lambda conn, _: _drop_database(conn, server.version, ident, name)
    )


def _drop_database(
    conn: psycopg.Connection[Any], version: int, ident: sql.Identifier, name: str
) -> None:
    if version >= FORCE_DROP_VERSION:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        return
    # Before 13: stop new sessions, end the open ones, then drop.
    conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(ident))
    conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = %s AND pid <> pg_backend_pid()",
        (name,),
    )
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(ident))


_GRANTS = """
SELECT DISTINCT d.datname
  FROM pg_shdepend s LEFT JOIN pg_database d ON d.oid = s.dbid
 WHERE s.refclassid = 'pg_authid'::regclass AND s.refobjid = %s
   AND (s.deptype <> 'o' OR s.classid = 'pg_default_acl'::regclass)
"""


def drop_role(server: Server, name: str) -> Result:
    """Drops the role after revoking what it was granted (``DROP OWNED`` in each database
    holding grants: the plan proved it owns nothing there)."""

    def statements(conn: psycopg.Connection[Any], oid: int) -> None:
        with server.revoking:
            for (database,) in conn.execute(_GRANTS, (oid,)).fetchall():
                _revoke_grants(server, conn, database, name)
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))

    return _drop(server, "role", name, statements)


def _revoke_grants(
    server: Server, admin: psycopg.Connection[Any], database: str | None, role: str
) -> None:
    # dbid 0 (database None) holds grants on shared objects (databases, tablespaces):
    # DROP OWNED in any database revokes them.
    statement = sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role))
    if database is None or database == admin.info.dbname:
        admin.execute(statement)
        return
    elsewhere = make_conninfo(server.conninfo, dbname=database)
    with postgres.connect(elsewhere, server.timeouts) as conn:
        conn.execute(statement)


def account_problems(account: Account) -> Iterator[str]:
    """What `janitor check` reports about the account's role attributes; what it may do
    with each deployment's database and roles is reported by the plan."""
    if account.superuser:
        return
    if not account.createrole:
        yield (
            f"the Airflow database account {account.name} lacks CREATEROLE: it cannot drop "
            f"deployment roles (ALTER ROLE {_quoted(account.name)} CREATEROLE)"
        )
    if not account.may_signal:
        yield (
            f"the Airflow database account {account.name} is not a member of "
            "pg_signal_backend: DROP DATABASE ... WITH (FORCE) cannot end sessions of roles "
            f"it is not a member of (GRANT pg_signal_backend TO {_quoted(account.name)})"
        )
