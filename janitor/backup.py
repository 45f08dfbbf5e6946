"""Final backups (README "Final backups and restore"): what the janitor keeps of a deployment
database before it drops it, and how it is read back.

A backup is a directory of the store, ``<release>/<UTC timestamp>/``, holding the
``pg_dump --format=custom`` of the database (``database.dump``), its roles as SQL
(``roles.sql``: attributes and memberships, never passwords) and ``manifest.json``. The dump
is streamed from pg_dump into the store while its sha256 is computed, then read back: the
stored sha256 must match and ``pg_restore --list`` must read it. Only then are the roles file
and the manifest written; a backup without a manifest is incomplete and is never restored.

pg_dump gets the server's DSN without its password (the password goes in ``PGPASSWORD`` of
that one process, never on a command line), a connect timeout, ``--lock-wait-timeout`` =
JANITOR_LOCK_TIMEOUT_SECONDS, and is killed after :data:`DUMP_TIMEOUT_S`.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from janitor import postgres
from janitor.clients.backupstore import BackupStore, StoreError
from janitor.naming import RELEASE_NAME
from janitor.plan import PLANNED, Action, Result, failed
from janitor.postgres import Timeouts

# Debian's postgresql-client-NN puts each major's tools here; pg_dump must not be older
# than the server it dumps (it refuses to), so the server's own major is looked for first.
POSTGRESQL_LIB = Path("/usr/lib/postgresql")
# The longest one pg_dump, verification or pg_restore may take; the chart's Job runs for
# at most 3 hours (activeDeadlineSeconds 10800).
DUMP_TIMEOUT_S = 3600
VERSION_TIMEOUT_S = 30
DUMP, ROLES, MANIFEST = "database.dump", "roles.sql", "manifest.json"
FILES = frozenset({DUMP, ROLES, MANIFEST})
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
STAMP = re.compile(r"[0-9]{8}T[0-9]{6}Z")
# What an error shows of a tool's stderr: its last lines carry the cause.
STDERR_SHOWN = 600
# Role attributes as ALTER ROLE spells them (NO<word> when unset), by pg_roles column;
# SUPERUSER is never given back (the janitor never drops a superuser role, so none is in a
# backup).
ATTRIBUTES = dict(
    rolinherit="INHERIT",
    rolcreaterole="CREATEROLE",
    rolcreatedb="CREATEDB",
    rolcanlogin="LOGIN",
    rolreplication="REPLICATION",
    rolbypassrls="BYPASSRLS",
)
ATTRIBUTE_WORDS = frozenset(w for word in ATTRIBUTES.values() for w in (word, f"NO{word}"))


class BackupError(Exception):
    """A backup could not be written, verified or restored; the message says why."""


@dataclass(frozen=True)
class Tools:
    """The pg_dump and pg_restore to use with one server, and pg_dump's major version."""

    pg_dump: str
    pg_restore: str
    major: int


def server_major(version: int) -> int:
    """The major version of ``conn.info.server_version`` (150020 → 15)."""
    return version // 10000


def find_tools(server_version: int) -> Tools | str:
    """The tools for a server of ``server_version`` (under :data:`POSTGRESQL_LIB`, else on
    PATH), or why there are none: pg_dump refuses to dump a server newer than itself."""
    major = server_major(server_version)
    versioned = POSTGRESQL_LIB / str(major) / "bin"
    if (versioned / "pg_dump").is_file() and (versioned / "pg_restore").is_file():
        dump, restore = str(versioned / "pg_dump"), str(versioned / "pg_restore")
    else:
        found_dump, found_restore = shutil.which("pg_dump"), shutil.which("pg_restore")
        if found_dump is None or found_restore is None:
            return (
                f"pg_dump and pg_restore not found (neither in {versioned} nor on PATH): "
                f"install postgresql-client-{major}"
            )
        dump, restore = found_dump, found_restore
    try:
        printed = subprocess.run(
            [dump, "--version"],
            capture_output=True,
            text=True,
            timeout=VERSION_TIMEOUT_S,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run {dump} --version: {exc}"
    match = re.search(r"\(PostgreSQL\) ([0-9]+)", printed)
    if match is None:
        return f"{dump} --version printed no PostgreSQL version ({printed.strip()[:80]!r})"
    if int(match[1]) < major:
        return (
            f"{dump} is pg_dump {match[1]}, older than the Airflow database server "
            f"(PostgreSQL {major}), which it cannot dump: install postgresql-client-{major}"
        )
    return Tools(dump, restore, int(match[1]))


@dataclass(frozen=True)
class Backups:
    """What the databases sweeper needs to back a database up before dropping it."""

    url: str
    """The store's root URL (JANITOR_BACKUP_URL, canonical form)."""
    store: Callable[[], BackupStore]
    """Opens the store; called once per plan."""
    now: datetime
    """The run's clock: names the backup directory and is the manifest's time."""
    run_id: str
    timeout_s: int = DUMP_TIMEOUT_S


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(STAMP_FORMAT)


def backup_prefix(release: str, when: str) -> str:
    """The key prefix of one backup: ``<release>/<UTC timestamp>/``."""
    return f"{release}/{when}/"


@dataclass(frozen=True)
class Prepared:
    """The backups of one plan: the store and tools once per plan, or why no backup can be
    taken in this run (then every planned drop is skipped, README "Final backups")."""

    backups: Backups
    conninfo: str
    timeouts: Timeouts
    tools: Tools | None = None
    store: BackupStore | None = None
    problem: str | None = None

    def uri(self, release: str) -> str:
        return f"{self.backups.url}/{backup_prefix(release, stamp(self.backups.now))}"

    def action(self, release: str, database: str) -> Action:
        """The ``database.backup`` action of ``database``: planned, or failed in the plan."""
        planned = PLANNED if self.problem is None else failed(f"cannot back up: {self.problem}")
        return Action(
            "database.backup", self.uri(release), planned, release, {"database": database}
        )


def prepare(backups: Backups, conninfo: str, timeouts: Timeouts, server_version: int) -> Prepared:
    """The tools matching the server and the opened store, each checked once per plan."""
    tools = find_tools(server_version)
    if isinstance(tools, str):
        return Prepared(backups, conninfo, timeouts, problem=tools)
    try:
        store = backups.store()
        problems = store.problems()
    except StoreError as exc:
        return Prepared(backups, conninfo, timeouts, tools, problem=str(exc))
    problem = "; ".join(problems) if problems else None
    return Prepared(backups, conninfo, timeouts, tools, store, problem)


@dataclass(frozen=True)
class Role:
    """A role as a backup keeps it: its attributes as ALTER ROLE words, never a password."""

    name: str
    attributes: tuple[str, ...]
    connection_limit: int = -1
    valid_until: str | None = None


@dataclass(frozen=True)
class Membership:
    """``GRANT role TO member [WITH ADMIN OPTION]``."""

    role: str
    member: str
    admin: bool = False


@dataclass(frozen=True)
class Manifest:
    """``manifest.json`` of one backup (README "Final backups and restore")."""

    release: str
    database: str
    owner: str
    roles: tuple[Role, ...]
    memberships: tuple[Membership, ...]
    bytes: int
    sha256: str
    server_version: str
    pg_dump_version: int
    run_id: str
    created: str
    files: Mapping[str, str] = field(
        default_factory=lambda: {"dump": DUMP, "roles": ROLES, "format": "custom"}
    )

    def to_json(self) -> builtins.bytes:  # the field `bytes` hides the type here
        return json.dumps(asdict(self), indent=2, sort_keys=True).encode() + b"\n"


def manifest_from_json(data: bytes, where: str) -> Manifest:
    """A manifest read back; BackupError naming ``where`` when it is not one."""
    try:
        raw = json.loads(data)
        roles = tuple(
            Role(
                str(r["name"]),
                tuple(str(a) for a in r["attributes"]),
                int(r["connection_limit"]),
                None if r["valid_until"] is None else str(r["valid_until"]),
            )
            for r in raw["roles"]
        )
        memberships = tuple(
            Membership(str(m["role"]), str(m["member"]), bool(m["admin"]))
            for m in raw["memberships"]
        )
        manifest = Manifest(
            release=str(raw["release"]),
            database=str(raw["database"]),
            owner=str(raw["owner"]),
            roles=roles,
            memberships=memberships,
            bytes=int(raw["bytes"]),
            sha256=str(raw["sha256"]),
            server_version=str(raw["server_version"]),
            pg_dump_version=int(raw["pg_dump_version"]),
            run_id=str(raw["run_id"]),
            created=str(raw["created"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise BackupError(
            f"{where} is not a backup manifest ({type(exc).__name__}: {exc})"
        ) from None
    unknown = {a for r in roles for a in r.attributes} - ATTRIBUTE_WORDS
    if unknown:
        raise BackupError(f"{where} names unknown role attributes: {', '.join(sorted(unknown))}")
    return manifest


# --- taking a backup --------------------------------------------------------------------------

# The attribute columns in ATTRIBUTES' order.
_ROLES = """
SELECT rolname, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication,
       rolbypassrls, rolconnlimit, rolvaliduntil::text
  FROM pg_roles WHERE rolname = ANY(%(names)s) ORDER BY rolname
"""
_MEMBERSHIPS = """
SELECT g.rolname, m.rolname, a.admin_option
  FROM pg_auth_members a
  JOIN pg_roles g ON g.oid = a.roleid
  JOIN pg_roles m ON m.oid = a.member
 WHERE g.rolname = ANY(%(names)s) OR m.rolname = ANY(%(names)s)
 ORDER BY 1, 2
"""
_DATABASE = "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s"


def read_roles(
    conn: psycopg.Connection[Any], names: Sequence[str]
) -> tuple[tuple[Role, ...], tuple[Membership, ...]]:
    """The roles of ``names`` that exist, and every membership one of them is part of."""
    roles = tuple(
        Role(
            row[0],
            tuple(
                word if value else f"NO{word}"
                for word, value in zip(ATTRIBUTES.values(), row[1:7], strict=True)
            ),
            row[7],
            row[8],
        )
        for row in conn.execute(_ROLES, {"names": list(names)})
    )
    memberships = tuple(
        Membership(role, member, admin)
        for role, member, admin in conn.execute(_MEMBERSHIPS, {"names": list(names)})
    )
    return roles, memberships


def role_statements(role: Role) -> list[sql.Composed]:
    """What recreates ``role`` (without a password: README "Final backups and restore")."""
    ident = sql.Identifier(role.name)
    words = [sql.SQL(word) for word in role.attributes if word in ATTRIBUTE_WORDS]
    alter = sql.SQL("ALTER ROLE {} WITH {} CONNECTION LIMIT {}").format(
        ident, sql.SQL(" ").join(words), sql.Literal(role.connection_limit)
    )
    if role.valid_until is not None:
        alter += sql.SQL(" VALID UNTIL {}").format(sql.Literal(role.valid_until))
    return [sql.SQL("CREATE ROLE {}").format(ident), alter]


def grant_statement(membership: Membership) -> sql.Composed:
    grant = sql.SQL("GRANT {} TO {}").format(
        sql.Identifier(membership.role), sql.Identifier(membership.member)
    )
    return grant + sql.SQL(" WITH ADMIN OPTION") if membership.admin else grant


def roles_file(manifest: Manifest) -> bytes:
    """``roles.sql``: the statements that recreate the backup's roles, for psql or a DBA."""
    lines = [
        f"-- Roles of deployment {manifest.release} (database {manifest.database}), "
        f"{manifest.created}. Passwords are never kept: set them with ALTER ROLE ... PASSWORD.",
    ]
    lines += [s.as_string(None) + ";" for r in manifest.roles for s in role_statements(r)]
    lines += [grant_statement(m).as_string(None) + ";" for m in manifest.memberships]
    return ("\n".join(lines) + "\n").encode()


def take(
    prepared: Prepared,
    connect: Callable[[], AbstractContextManager[psycopg.Connection[Any]]],
    release: str,
    database: str,
    role_names: Sequence[str],
) -> Result:
    """Backs ``database`` up and verifies it; ``done`` with ``bytes`` and ``sha256``, or
    ``failed`` with why (what was written is deleted again)."""
    store, tools = prepared.store, prepared.tools
    if store is None or tools is None:  # the plan reported prepared.problem already
        return failed(f"cannot back up: {prepared.problem}")
    prefix = backup_prefix(release, stamp(prepared.backups.now))
    occupied = _occupied(store, prefix)
    if occupied is not None:
        return failed(f"cannot back up database {database}: {occupied}")
    try:
        with connect() as conn:
            row = conn.execute(_DATABASE, (database,)).fetchone()
            roles, memberships = read_roles(conn, role_names)
            version = conn.info.server_version
        if row is None:
            return failed(f"cannot back up database {database}: it no longer exists")
        size, digest = dump(prepared, tools, store, database, prefix + DUMP)
        verify(store, prefix + DUMP, digest, tools, prepared.backups.timeout_s)
        manifest = Manifest(
            release=release,
            database=database,
            owner=row[0],
            roles=roles,
            memberships=memberships,
            bytes=size,
            sha256=digest,
            server_version=f"{version // 10000}.{version % 10000}",
            pg_dump_version=tools.major,
            run_id=prepared.backups.run_id,
            created=prepared.backups.now.astimezone(UTC).isoformat(),
        )
        store.put(prefix + ROLES, io.BytesIO(roles_file(manifest)))
        store.put(prefix + MANIFEST, io.BytesIO(manifest.to_json()))
    except (BackupError, StoreError) as exc:
        return failed(_discarded(store, prefix, str(exc)))
    except psycopg.Error as exc:
        return failed(f"cannot back up database {database}: {postgres.describe(exc)}")
    return Result("done", fields={"bytes": size, "sha256": digest})


def _occupied(store: BackupStore, prefix: str) -> str | None:
    """Why nothing may be written under ``prefix``: what is there is not this backup's to
    overwrite or to clean up (runs are one at a time: the run lock)."""
    try:
        return f"{store.uri(prefix)} exists" if store.keys(prefix) else None
    except StoreError as exc:
        return str(exc)


def _discarded(store: BackupStore, prefix: str, error: str) -> str:
    """``error``, after deleting what the failed backup wrote under ``prefix`` (empty when
    it started), or saying it could not."""
    try:
        store.delete(store.keys(prefix))
    except StoreError as exc:
        return f"{error}; what was written stays until the retention deletes it ({exc})"
    return error


class _Hashing:
    """A stream that hashes and counts what is read through it."""

    def __init__(self, source: IO[bytes]) -> None:
        self._source = source
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._source.read(size)
        self.digest.update(chunk)
        self.size += len(chunk)
        return chunk


def libpq_target(conninfo: str, database: str, timeouts: Timeouts) -> tuple[str, dict[str, str]]:
    """The DSN of ``database`` for a libpq tool without its password, and the environment
    carrying the password (a command line is visible to every user of the machine)."""
    params = conninfo_to_dict(conninfo)
    password = params.pop("password", None)
    params.update(dbname=database, application_name=postgres.APPLICATION_NAME)
    params.setdefault("connect_timeout", str(timeouts.connect_s))
    env = dict(os.environ)
    if password is not None:
        env["PGPASSWORD"] = str(password)
    return make_conninfo("", **params), env


@contextlib.contextmanager
def _bounded(process: subprocess.Popen[bytes], timeout_s: float) -> Iterator[threading.Event]:
    """Kills ``process`` once ``timeout_s`` has passed; the event tells whether it did."""
    fired = threading.Event()

    def kill() -> None:
        fired.set()
        process.kill()

    timer = threading.Timer(timeout_s, kill)
    timer.daemon = True
    timer.start()
    try:
        yield fired
    finally:
        timer.cancel()


def _tail(errors: IO[bytes]) -> str:
    errors.seek(0)
    text = " ".join(errors.read().decode(errors="replace").split())
    return text[-STDERR_SHOWN:] or "no message"


def dump(
    prepared: Prepared, tools: Tools, store: BackupStore, database: str, key: str
) -> tuple[int, str]:
    """Streams ``pg_dump --format=custom`` of ``database`` into ``key``: (bytes, sha256)."""
    target, env = libpq_target(prepared.conninfo, database, prepared.timeouts)
    command = [
        tools.pg_dump,
        "--format=custom",
        "--no-password",
        f"--lock-wait-timeout={prepared.timeouts.lock_s}s",
        f"--dbname={target}",
    ]
    timeout_s = prepared.backups.timeout_s
    with (
        tempfile.TemporaryFile() as errors,
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, env=env) as process,
        _bounded(process, timeout_s) as fired,
    ):
        assert process.stdout is not None  # noqa: S101 - stdout=PIPE
        hashing = _Hashing(process.stdout)
        try:
            store.put(key, hashing)
        except BaseException:
            process.kill()  # nobody reads its output any more
            raise
        code = process.wait()
        if fired.is_set():
            raise BackupError(f"pg_dump of {database} did not finish within {timeout_s} s")
        if code != 0:
            raise BackupError(f"pg_dump of {database} failed (exit {code}): {_tail(errors)}")
    return hashing.size, hashing.digest.hexdigest()


def verify(store: BackupStore, key: str, sha256: str, tools: Tools, timeout_s: float) -> None:
    """Reads ``key`` back: its sha256 must be ``sha256`` and ``pg_restore --list`` must read
    it; BackupError saying which check failed."""
    digest = hashlib.sha256()
    code, errors = _through_tool(
        [tools.pg_restore, "--list"], store, key, timeout_s, seen=digest.update, whole=True
    )
    if code is None:
        raise BackupError(f"reading {store.uri(key)} back took more than {timeout_s} s")
    if code != 0:
        raise BackupError(f"pg_restore --list cannot read {store.uri(key)}: {errors}")
    if digest.hexdigest() != sha256:
        raise BackupError(
            f"{store.uri(key)} does not verify: its sha256 is {digest.hexdigest()}, "
            f"the dump written was {sha256}"
        )


def _through_tool(
    command: list[str],
    store: BackupStore,
    key: str,
    timeout_s: float,
    *,
    env: Mapping[str, str] | None = None,
    seen: Callable[[bytes], object] = lambda _: None,
    whole: bool = False,
) -> tuple[int | None, str]:
    """Streams ``key`` into ``command``'s stdin: (its exit code, None when killed after
    ``timeout_s``; the end of its stderr). ``whole``: read the object to its end, also once
    the tool stopped reading (``pg_restore --list`` reads the table of contents only), so
    that ``seen`` gets every chunk."""
    with (
        tempfile.TemporaryFile() as errors,
        subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors, env=env
        ) as process,
        _bounded(process, timeout_s) as fired,
    ):
        assert process.stdin is not None  # noqa: S101 - stdin=PIPE
        feeding: IO[bytes] | None = process.stdin
        for chunk in store.read(key):
            seen(chunk)
            feeding = _feed(feeding, chunk)
            if feeding is None and not whole:
                break
        with contextlib.suppress(BrokenPipeError):
            process.stdin.close()
        code = process.wait()
        return (None if fired.is_set() else code), _tail(errors)


def _feed(stream: IO[bytes] | None, chunk: bytes) -> IO[bytes] | None:
    """Writes ``chunk`` to a tool's stdin; None once the tool stopped reading."""
    if stream is None:
        return None
    try:
        stream.write(chunk)
    except BrokenPipeError:
        return None
    return stream


# --- reading backups back ---------------------------------------------------------------------


@dataclass(frozen=True)
class Listed:
    """One backup directory of the store."""

    release: str
    stamp: str
    keys: tuple[str, ...]

    @property
    def prefix(self) -> str:
        return backup_prefix(self.release, self.stamp)

    @property
    def created(self) -> datetime:
        return datetime.strptime(self.stamp, STAMP_FORMAT).replace(tzinfo=UTC)

    @property
    def complete(self) -> bool:
        return self.prefix + MANIFEST in self.keys


def listed(store: BackupStore, release: str | None = None) -> list[Listed]:
    """The backups in ``store`` (of ``release``), oldest first. Keys of any other shape are
    not the janitor's and are never listed (nor deleted)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for key in store.keys(f"{release}/" if release else ""):
        parts = key.split("/")
        if (
            len(parts) == 3
            and RELEASE_NAME.fullmatch(parts[0])
            and STAMP.fullmatch(parts[1])
            and parts[2] in FILES
        ):
            groups.setdefault((parts[0], parts[1]), []).append(key)
    return [
        Listed(name, when, tuple(keys))
        for (name, when), keys in sorted(groups.items(), key=lambda item: (item[0][1], item[0][0]))
    ]


def read_manifest(store: BackupStore, backup: Listed) -> Manifest:
    key = backup.prefix + MANIFEST
    data = b"".join(store.read(key))
    return manifest_from_json(data, store.uri(key))


def restore_dump(
    conninfo: str,
    timeouts: Timeouts,
    tools: Tools,
    store: BackupStore,
    *,
    key: str,
    database: str,
    timeout_s: float,
) -> None:
    """Streams ``key`` into ``pg_restore`` of the (new, empty) ``database``, in one
    transaction and stopping at the first error; BackupError with pg_restore's words."""
    target, env = libpq_target(conninfo, database, timeouts)
    command = [
        tools.pg_restore,
        "--exit-on-error",
        "--single-transaction",
        "--no-password",
        f"--dbname={target}",
    ]
    code, errors = _through_tool(command, store, key, timeout_s, env=env)
    if code is None:
        raise BackupError(f"pg_restore into {database} did not finish within {timeout_s} s")
    if code != 0:
        raise BackupError(f"pg_restore into {database} failed (exit {code}): {errors}")
