"""`janitor backups` and `janitor restore` (README "Final backups and restore").

``backups`` lists what the store holds, one ``backup.listed`` event each. ``restore`` takes a
deployment's newest complete backup (or the one given), verifies it as a run does before a
drop, recreates the roles that are missing (without passwords), creates the database and
restores the dump into it in one transaction. It refuses a database that exists (exit 2,
nothing changed) and never reads or writes the Houston table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from janitor import assemble, postgres
from janitor.backup import (
    DUMP,
    DUMP_TIMEOUT_S,
    BackupError,
    Listed,
    Manifest,
    find_tools,
    grant_statement,
    listed,
    read_manifest,
    restore_dump,
    role_statements,
    verify,
)
from janitor.clients.backupstore import BackupStore, StoreError
from janitor.config import Settings
from janitor.errors import ConfigurationError, ExitCode
from janitor.events import Log
from janitor.naming import identifier_refusal, release_name_refusal

PASSWORDS = "roles are recreated without passwords: set them with ALTER ROLE ... PASSWORD"


def _store(settings: Settings) -> BackupStore:
    if settings.backup_url is None:
        raise ConfigurationError("JANITOR_BACKUP_URL is not set: there is no backup store")
    return assemble.backup_store(settings)


def list_backups(settings: Settings, log: Log, release: str | None) -> int:
    """One ``backup.listed`` event per backup (of ``release``), oldest first; exit 1 when
    the store cannot be read."""
    if release is not None and release_name_refusal(release) is not None:
        raise ConfigurationError(f"RELEASE {release!r}: {release_name_refusal(release)}")
    store = _store(settings)
    try:
        found = listed(store, release)
    except StoreError as exc:
        log.error("backups.finished", count=0, exit_code=int(ExitCode.FAILED), error=str(exc))
        return ExitCode.FAILED
    failures = 0
    for backup in found:
        fields: dict[str, Any] = {
            "complete": backup.complete,
            "created": backup.created.isoformat(),
        }
        if backup.complete:
            try:
                manifest = read_manifest(store, backup)
            except (StoreError, BackupError) as exc:
                failures += 1
                fields["error"] = str(exc)
            else:
                fields |= {
                    "database": manifest.database,
                    "bytes": manifest.bytes,
                    "sha256": manifest.sha256,
                    "roles": [r.name for r in manifest.roles],
                    "server_version": manifest.server_version,
                    "backup_run_id": manifest.run_id,
                }
        target = store.uri(backup.prefix)
        log.info("backup.listed", target=target, deployment=backup.release, **fields)
    code = ExitCode.FAILED if failures else ExitCode.OK
    log.info("backups.finished", count=len(found), exit_code=int(code))
    return code


@dataclass(frozen=True)
class _Chosen:
    backup: Listed
    manifest: Manifest


def restore(
    settings: Settings, log: Log, release: str, *, database: str | None, uri: str | None
) -> int:
    """Restores ``release``'s newest backup (or ``uri``) into ``database`` (default: the
    database it was taken of); see the module docstring."""
    problem = release_name_refusal(release)
    if problem is not None:
        raise ConfigurationError(f"RELEASE {release!r}: {problem}")
    if database is not None and identifier_refusal(database) is not None:
        raise ConfigurationError(f"--as {database!r}: {identifier_refusal(database)}")
    conninfo = settings.airflow_conninfo()
    if conninfo is None:
        raise ConfigurationError(
            "restore needs the Airflow database server: set JANITOR_AIRFLOW_DSN "
            "(or JANITOR_HOUSTON_DSN)"
        )
    store = _store(settings)
    target = uri or f"{store.url}/{release}/"

    def fail(error: str, **fields: Any) -> int:
        log.error(
            "database.restore",
            target=target,
            deployment=release,
            outcome="failed",
            error=error,
            **fields,
        )
        return ExitCode.FAILED

    try:
        chosen = _choose(store, release, uri)
    except (StoreError, BackupError) as exc:
        return fail(str(exc))
    target = store.uri(chosen.backup.prefix)
    name = database or chosen.manifest.database
    timeouts = assemble.pg_timeouts(settings)
    try:
        with postgres.connect(conninfo, timeouts) as conn:
            if _exists(conn, name):
                log.warning(
                    "database.restore",
                    target=target,
                    deployment=release,
                    database=name,
                    outcome="skipped",
                    reason=f"database {name} already exists: nothing was changed (--as NAME "
                    "restores under another name)",
                )
                return ExitCode.INVALID_CONFIGURATION
            tools = find_tools(conn.info.server_version)
            if isinstance(tools, str):
                return fail(tools, database=name)
            key = chosen.backup.prefix + DUMP
            verify(store, key, chosen.manifest.sha256, tools, DUMP_TIMEOUT_S)
            created = _recreate_roles(conn, chosen.manifest)
            owner = chosen.manifest.owner if _role_exists(conn, chosen.manifest.owner) else None
            _create_database(conn, name, owner)
            try:
                restore_dump(
                    conninfo,
                    timeouts,
                    tools,
                    store,
                    key=key,
                    database=name,
                    timeout_s=DUMP_TIMEOUT_S,
                )
            except BackupError:
                # The database is the one this command just created: leave nothing half done.
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
                raise
    except (StoreError, BackupError) as exc:
        return fail(str(exc), database=name)
    except psycopg.Error as exc:
        return fail(postgres.describe(exc), database=name)
    done: dict[str, Any] = {"bytes": chosen.manifest.bytes, "sha256": chosen.manifest.sha256}
    done |= {"roles_created": created, "note": PASSWORDS} if created else {}
    log.info(
        "database.restore", target=target, deployment=release, database=name, outcome="done", **done
    )
    return ExitCode.OK


def _choose(store: BackupStore, release: str, uri: str | None) -> _Chosen:
    """The newest complete backup of ``release``, or the one at ``uri``, with its manifest."""
    complete = [b for b in listed(store, release) if b.complete]
    if uri is not None:
        wanted = uri.rstrip("/") + "/"
        complete = [b for b in complete if store.uri(b.prefix) == wanted]
        if not complete:
            raise BackupError(f"no complete backup of {release} at {uri} (see `janitor backups`)")
    elif not complete:
        raise BackupError(f"no complete backup of {release} in {store.url}")
    backup = complete[-1]
    return _Chosen(backup, read_manifest(store, backup))


def _exists(conn: psycopg.Connection[Any], name: str) -> bool:
    row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


def _role_exists(conn: psycopg.Connection[Any], name: str) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone() is not None


def _recreate_roles(conn: psycopg.Connection[Any], manifest: Manifest) -> list[str]:
    """Creates the backup's roles that do not exist, then grants their memberships whose
    other side exists; one transaction."""
    created: list[str] = []
    with conn.transaction():
        for role in manifest.roles:
            if not _role_exists(conn, role.name):
                for statement in role_statements(role):
                    conn.execute(statement)
                created.append(role.name)
        for membership in manifest.memberships:
            touches = {membership.role, membership.member} & set(created)
            others = {membership.role, membership.member} - set(created)
            if touches and all(_role_exists(conn, other) for other in others):
                conn.execute(grant_statement(membership))
    return created


def _create_database(conn: psycopg.Connection[Any], name: str, owner: str | None) -> None:
    # template0: the dump recreates everything, and template1 may hold objects it collides with.
    statement = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
    if owner is not None:
        statement += sql.SQL(" OWNER {}").format(sql.Identifier(owner))
    conn.execute(statement)
