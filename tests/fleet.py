"""A fleet of deployments seeded on the real servers, and its state, read back whole.

A :class:`Member` is one Houston row and what the platform left of it: its Airflow
database, its two roles, registry tags, a grant of its celery role in another database.
Any part may be missing (a crash or an operator left it so), and the row itself may be
gone while its resources stay (an orphan). :meth:`Fleet.state` reads everything the janitor
could touch from the servers themselves, so a test compares whole states: before, after a
run, after a kill and a rerun.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

import psycopg
from psycopg import sql

from tests.conftest import SCHEMA, Houston, admin, dsn, existing_databases, existing_roles
from tests.registry_server import Pusher

ROLE_KINDS = ("airflow", "celery")
SEED_SESSIONS = 8
SHARED_TABLE = "dag_run"


def snake(release: str) -> str:
    return release.replace("-", "_")


def database_of(release: str) -> str:
    return f"{snake(release)}_airflow"


def roles_of(release: str) -> list[str]:
    return [f"{snake(release)}_{kind}" for kind in ROLE_KINDS]


def repository_of(release: str) -> str:
    return f"{release}/airflow"


@dataclass(frozen=True)
class Member:
    """One deployment row (``row=False``: only its resources, an orphan) and what is left."""

    release: str | None
    deleted_at: datetime | None
    database: bool = True
    roles: tuple[str, ...] = ROLE_KINDS
    tags: tuple[str, ...] = ()
    row: bool = True
    granted_elsewhere: bool = False
    """Its celery role may SELECT in the fleet's shared database (a grant elsewhere)."""


@dataclass(frozen=True)
class State:
    """Everything of a fleet the janitor could touch, as the servers hold it."""

    rows: frozenset[tuple[str | None, str | None]]
    databases: frozenset[str]
    roles: frozenset[str]
    tags: frozenset[tuple[str, str]]
    grants: frozenset[str]
    indices: frozenset[str] = frozenset()

    def without(self, releases: Iterable[str], indices: Iterable[str] = ()) -> State:
        """This state once ``releases`` are fully gone (rows, databases, roles, tags,
        grants) and ``indices`` deleted: what an uninterrupted run leaves."""
        gone = set(releases)
        databases = {database_of(r) for r in gone}
        roles = {role for r in gone for role in roles_of(r)}
        repositories = {repository_of(r) for r in gone}
        return replace(
            self,
            rows=frozenset(row for row in self.rows if row[0] not in gone),
            databases=self.databases - databases,
            roles=self.roles - roles,
            tags=frozenset(t for t in self.tags if t[0] not in repositories),
            grants=self.grants - roles,
            indices=self.indices - set(indices),
        )

    def left_of(self, release: str) -> list[str]:
        """What still exists of ``release``'s resources, in words (empty: all gone)."""
        database = database_of(release)
        left = [f"database {database}"] if database in self.databases else []
        left += [f"role {r}" for r in roles_of(release) if r in self.roles]
        left += [f"tag {r}:{t}" for r, t in self.tags if r == repository_of(release)]
        return left


@dataclass
class Fleet:
    """Members seeded into ``houston`` (and the registry, when ``pusher`` is given).

    ``janitor`` is the role the janitor runs as, when it is not a superuser: it is made a
    member of every deployment role with ADMIN OPTION, as the platform account that created
    them would be, so only the janitor's own rules keep it from dropping what it must not.
    """

    houston: Houston
    pusher: Pusher | None = None
    janitor: str | None = None
    members: list[Member] = field(default_factory=list)
    shared: str = ""
    repositories: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.shared = f"{self.houston.prefix}_shared"

    def seed(self, members: Iterable[Member]) -> None:
        """Creates each member's row and resources; a release's resources exist once, also
        when several rows share its name."""
        made: dict[str, Member] = {}
        for member in members:
            self.members.append(member)
            if member.row:
                self._insert(member)
            if member.release is not None:
                made.setdefault(member.release, member)
        # CREATE DATABASE copies template1 (most of a seed's time): in parallel sessions.
        with ThreadPoolExecutor(SEED_SESSIONS) as pool:
            list(pool.map(self._resources, made.values()))
        # Grants on one table update one catalog row: one at a time.
        granted = [
            roles_of(m.release)[1]
            for m in made.values()
            if m.release and m.granted_elsewhere and "celery" in m.roles
        ]
        if not granted:
            return
        if self.shared not in self.houston.databases:
            # Owned by the platform account, which granted the privileges: it may revoke them.
            self.houston.create_database(self.shared, owner=self.janitor)
        with psycopg.connect(dsn(self.shared), autocommit=True) as conn:
            for role in granted:
                conn.execute(
                    sql.SQL("GRANT SELECT ON {} TO {}").format(
                        sql.Identifier(SHARED_TABLE), sql.Identifier(role)
                    )
                )

    def _insert(self, member: Member) -> None:
        with psycopg.connect(self.houston.dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL(
                    'INSERT INTO {}."Deployment" (id, "releaseName", label, "deletedAt")'
                    " VALUES (%s, %s, 'seeded', %s)"
                ).format(sql.Identifier(SCHEMA)),
                (str(uuid.uuid4()), member.release, _naive_utc(member.deleted_at)),
            )

    def _resources(self, member: Member) -> None:
        release = member.release or ""
        named = zip(roles_of(release), ROLE_KINDS, strict=True)
        roles = [role for role, kind in named if kind in member.roles]
        for role in roles:
            self.houston.create_role(role)
            if self.janitor is not None:
                self._grant("GRANT {} TO {} WITH ADMIN OPTION", role, self.janitor)
        if member.database:
            owner = roles_of(release)[0] if "airflow" in member.roles else self.janitor
            self.houston.create_database(database_of(release), owner=owner)
        if member.tags and self.pusher is not None:
            repository = repository_of(release)
            with self._lock:
                self.repositories.add(repository)
            for tag in member.tags:
                self.pusher.image(repository, tag, label=f"{repository}:{tag}")

    def _grant(self, statement: str, *names: str) -> None:
        with admin() as conn:
            conn.execute(sql.SQL(statement).format(*map(sql.Identifier, names)))

    def names(self) -> tuple[set[str], set[str]]:
        """Every database and role name any member could have."""
        releases = {m.release for m in self.members if m.release}
        return (
            {database_of(r) for r in releases} | {self.shared},
            {role for r in releases for role in roles_of(r)},
        )

    def state(self, indices: frozenset[str] = frozenset()) -> State:
        databases, roles = self.names()
        with psycopg.connect(self.houston.dsn) as conn:
            rows = frozenset(
                conn.execute(
                    sql.SQL('SELECT "releaseName", "deletedAt"::text FROM {}."Deployment"').format(
                        sql.Identifier(SCHEMA)
                    )
                ).fetchall()
            )
        tags: set[tuple[str, str]] = set()
        if self.pusher is not None:
            for repository in self.repositories:
                tags |= {(repository, t) for t in self.pusher.tags(repository) or []}
        return State(
            rows=rows,
            databases=frozenset(existing_databases(databases)),
            roles=frozenset(existing_roles(roles)),
            tags=frozenset(tags),
            grants=frozenset(self._grantees() & roles),
            indices=indices,
        )

    def _grantees(self) -> set[str]:
        if self.shared not in self.houston.databases:
            return set()
        with psycopg.connect(dsn(self.shared)) as conn:
            return {
                row[0]
                for row in conn.execute(
                    "SELECT r.rolname FROM pg_class c, aclexplode(c.relacl) a"
                    " JOIN pg_roles r ON r.oid = a.grantee WHERE c.relname = %s",
                    (SHARED_TABLE,),
                )
            }


def _naive_utc(moment: datetime | None) -> datetime | None:
    """Houston (Prisma) stores deletedAt as UTC in a timestamp without time zone."""
    if moment is None or moment.tzinfo is None:
        return moment
    return (moment - (moment.utcoffset() or timedelta(0))).replace(tzinfo=None)


def server_now() -> datetime:
    with admin() as conn:
        ((now,),) = conn.execute("SELECT now()").fetchall()
    return now  # type: ignore[no-any-return]
