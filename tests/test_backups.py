"""Operator stories for final backups (README "Final backups and restore"): every dropped
deployment database is dumped, verified and kept before the DROP, and `janitor restore` brings
it back; against a directory, a local S3-compatible server (moto) and, when
JANITOR_TEST_S3_URL is set, a real S3 store."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
from psycopg import sql

from janitor import backup
from janitor.backup import BackupError, Tools, find_tools, verify
from janitor.clients.backupstore import BackupStore, open_store
from janitor.postgres import Timeouts
from tests.conftest import Houston, admin, dsn, existing_databases, existing_roles, janitor
from tests.s3_server import CREDENTIALS, running_s3

STAMP = r"[0-9]{8}T[0-9]{6}Z"


@dataclass(frozen=True)
class Store:
    """A backup store as the janitor is configured with it."""

    url: str
    endpoint: str | None = None

    @property
    def env(self) -> dict[str, str]:
        found = {"JANITOR_BACKUP_URL": self.url}
        return found | ({"JANITOR_BACKUP_S3_ENDPOINT_URL": self.endpoint} if self.endpoint else {})

    def open(self) -> BackupStore:
        return open_store(self.url, endpoint_url=self.endpoint)

    def text(self, uri: str, name: str) -> str:
        key = uri.removeprefix(self.url + "/") + name
        return b"".join(self.open().read(key)).decode()


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One moto S3 server for the module's tests; each test makes its own bucket."""
    with running_s3(tmp_path_factory.mktemp("moto")) as url:
        yield url


def _s3(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    endpoint = request.getfixturevalue("s3_endpoint")
    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    bucket = f"janitor-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    yield Store(f"s3://{bucket}/final-backups", endpoint)


def _real_s3() -> Iterator[Store]:
    url = os.environ.get("JANITOR_TEST_S3_URL")
    if not url:
        pytest.skip("JANITOR_TEST_S3_URL is not set (a real S3 store to test against)")
    store = Store(
        f"{url.rstrip('/')}/janitor-test-{uuid.uuid4().hex[:12]}",
        os.environ.get("JANITOR_TEST_S3_ENDPOINT_URL"),
    )
    yield store
    opened = store.open()
    opened.delete(opened.keys(""))


@pytest.fixture(params=["file", "s3", "real-s3"])
def store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Store]:
    """The backup store under test: a directory, moto's S3, or a real S3 store."""
    if request.param == "file":
        yield Store(f"file://{tmp_path}/backups")
    elif request.param == "s3":
        yield from _s3(request, monkeypatch)
    else:
        yield from _real_s3()


def names(release: str) -> tuple[str, list[str]]:
    snake = release.replace("-", "_")
    return f"{snake}_airflow", [f"{snake}_airflow", f"{snake}_celery"]


def seed_data(database: str, roles: list[str], rows: int = 300) -> None:
    """Tables, rows, an index, a view, a sequence and grants, owned by both deployment roles
    as Airflow and Celery leave them; the celery role is granted to the airflow role."""
    airflow, celery = (sql.Identifier(r) for r in roles)
    with psycopg.connect(dsn(database), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO dag_run (dag_id) SELECT 'dag_' || i FROM generate_series(1, %s) i",
            (rows,),
        )
        conn.execute(
            "CREATE TABLE task_instance (id bigserial PRIMARY KEY,"
            " run_id int REFERENCES dag_run (id), state text, conf jsonb, at timestamptz)"
        )
        conn.execute(
            "INSERT INTO task_instance (run_id, state, conf, at)"
            " SELECT 1 + i %% %s, (ARRAY['success','running','failed'])[1 + i %% 3],"
            " jsonb_build_object('try', i), timestamptz '2026-01-01' + i * interval '1 min'"
            " FROM generate_series(1, %s) i",
            (rows, rows * 3),
        )
        conn.execute("CREATE INDEX ON task_instance (state)")
        conn.execute("CREATE VIEW running AS SELECT * FROM task_instance WHERE state = 'running'")
        for table in ("task_instance", "running"):
            conn.execute(
                sql.SQL("ALTER TABLE {} OWNER TO {}").format(sql.Identifier(table), airflow)
            )
        conn.execute(
            "CREATE TABLE celery_taskmeta (id serial PRIMARY KEY, status text, result bytea)"
        )
        conn.execute(
            "INSERT INTO celery_taskmeta (status, result)"
            " SELECT 'SUCCESS', sha256(i::text::bytea) FROM generate_series(1, %s) i",
            (rows,),
        )
        conn.execute(sql.SQL("ALTER TABLE celery_taskmeta OWNER TO {}").format(celery))
        conn.execute(sql.SQL("GRANT SELECT ON dag_run, task_instance TO {}").format(celery))
    with admin() as conn:
        conn.execute(
            sql.SQL("ALTER ROLE {} CONNECTION LIMIT 7 VALID UNTIL '2099-01-01 00:00:00+00'").format(
                celery
            )
        )
        conn.execute(sql.SQL("GRANT {} TO {}").format(celery, airflow))


def fingerprint(database: str) -> dict[str, Any]:
    """Per table: row count and the md5 of its rows in order; owners; grants."""
    with psycopg.connect(dsn(database)) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
            )
        ]
        rows = {
            table: conn.execute(
                sql.SQL(
                    "SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), ''))"
                    " FROM {} t"
                ).format(sql.Identifier(table))
            ).fetchone()
            for table in tables
        }
        owners = conn.execute(
            "SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' ORDER BY 1"
        ).fetchall()
        grants = conn.execute(
            "SELECT grantee, table_name, privilege_type FROM information_schema.role_table_grants"
            " WHERE table_schema = 'public' ORDER BY 1, 2, 3"
        ).fetchall()
    return {"rows": rows, "owners": owners, "grants": grants}


def role_facts(role: str) -> tuple[Any, ...]:
    with admin() as conn:
        row = conn.execute(
            "SELECT rolcanlogin, rolconnlimit, rolvaliduntil, rolpassword IS NULL,"
            " array(SELECT g.rolname FROM pg_auth_members a JOIN pg_roles g ON g.oid = a.roleid"
            "       WHERE a.member = r.oid ORDER BY 1)"
            " FROM pg_authid r WHERE rolname = %s",
            (role,),
        ).fetchone()
    assert row is not None, role
    return tuple(row)


def test_a_dropped_database_comes_back_under_another_name_with_every_row_owner_and_grant(
    houston: Houston, env: dict[str, str], store: Store
) -> None:
    """Before the DROP DATABASE a verified dump, roles file and manifest are written; `janitor
    backups` lists it; `janitor restore --as` brings back every table, row, owner and grant
    and recreates the dropped roles, without passwords; a second restore is refused."""
    release = houston.deployment("orders", deleted_days_ago=20)
    database, roles = names(release)
    seed_data(database, roles)
    before = fingerprint(database)
    facts = {role: role_facts(role) for role in roles}
    env |= store.env

    run = janitor(["run"], env)

    assert run.code == 0, run.events
    (taken,) = run.of("database.backup")
    assert taken["outcome"] == "done"
    assert (taken["deployment"], taken["database"]) == (release, database)
    assert re.fullmatch(re.escape(f"{store.url}/{release}/") + STAMP + "/", taken["target"])
    assert taken["bytes"] > 10_000
    assert re.fullmatch("[0-9a-f]{64}", taken["sha256"])
    drop = run.of("database.drop")[0]
    assert run.events.index(taken) < run.events.index(drop)
    assert run.outcomes("database.drop") == {database: "done"}
    assert run.outcomes("role.drop") == dict.fromkeys(roles, "done")
    assert run.outcomes("deployment.purge") == {release: "done"}
    assert existing_databases([database]) == existing_roles(roles) == set()
    manifest = json.loads(store.text(taken["target"], "manifest.json"))
    assert {k: manifest[k] for k in ("release", "database", "owner", "bytes", "sha256")} == {
        "release": release,
        "database": database,
        "owner": roles[0],
        "bytes": taken["bytes"],
        "sha256": taken["sha256"],
    }
    assert manifest["run_id"] == run.finished["run_id"]
    assert manifest["server_version"].startswith("1")
    assert sorted(r["name"] for r in manifest["roles"]) == sorted(roles)
    roles_sql = store.text(taken["target"], "roles.sql")
    assert f'CREATE ROLE "{roles[1]}"' in roles_sql
    assert f'GRANT "{roles[1]}" TO "{roles[0]}"' in roles_sql
    assert "PASSWORD '" not in roles_sql

    listing = janitor(["backups", release], env)

    assert listing.code == 0
    (shown,) = listing.of("backup.listed")
    assert (shown["target"], shown["complete"], shown["bytes"]) == (
        taken["target"],
        True,
        taken["bytes"],
    )

    restored = f"{houston.prefix}_restored"
    houston.databases.add(restored)
    restore = janitor(["restore", release, "--as", restored], env)

    assert restore.code == 0, restore.events
    (event,) = restore.of("database.restore")
    assert (event["outcome"], event["target"], event["database"]) == (
        "done",
        taken["target"],
        restored,
    )
    assert sorted(event["roles_created"]) == sorted(roles)
    assert "without passwords" in event["note"]
    assert fingerprint(restored) == before
    for role in roles:
        assert role_facts(role) == facts[role]

    again = janitor(["restore", release, "--as", restored], env)

    assert again.code == 2
    (refused,) = again.of("database.restore")
    assert refused["outcome"] == "skipped"
    assert "already exists" in refused["reason"]
    assert fingerprint(restored) == before


def test_the_dry_run_plans_the_backup_and_writes_nothing(
    houston: Houston, env: dict[str, str], store: Store
) -> None:
    """`janitor plan` shows the backup it would write, at the URI the run would use, and
    the store stays empty."""
    release = houston.deployment("planned", deleted_days_ago=20)
    database, _ = names(release)
    env |= store.env

    plan = janitor(["plan"], env)

    assert plan.code == 0, plan.events
    (planned,) = plan.of("database.backup")
    assert planned["outcome"] == "planned"
    assert planned["target"].startswith(f"{store.url}/{release}/")
    assert plan.outcomes("database.drop") == {database: "planned"}
    assert store.open().keys("") == []
    assert existing_databases([database]) == {database}


def test_restore_takes_the_newest_backup_and_backup_picks_an_older_one(
    houston: Houston, env: dict[str, str], store: Store
) -> None:
    """A release deleted twice has two backups: `restore` takes the newest into the original
    name; `--backup URI` restores the older one."""
    release = houston.deployment("twice", deleted_days_ago=20)
    database, roles = names(release)
    seed_data(database, roles, rows=10)
    first_rows = fingerprint(database)["rows"]
    env |= store.env
    first = janitor(["run"], env)
    assert first.code == 0, first.events
    assert janitor(["restore", release], env).code == 0
    with psycopg.connect(dsn(database), autocommit=True) as conn:
        conn.execute("INSERT INTO dag_run (dag_id) VALUES ('after the first restore')")
    second_rows = fingerprint(database)["rows"]
    houston.add(release, deleted_days_ago=20)
    time.sleep(1.1)  # backups of one release are named by the second they were taken
    second = janitor(["run"], env)
    assert second.code == 0, second.events

    newest = janitor(["restore", release], env)

    assert newest.code == 0, newest.events
    assert newest.of("database.restore")[0]["target"] == second.of("database.backup")[0]["target"]
    assert fingerprint(database)["rows"] == second_rows
    older = f"{houston.prefix}_older"
    houston.databases.add(older)
    uri = first.of("database.backup")[0]["target"]
    assert janitor(["restore", release, "--as", older, "--backup", uri], env).code == 0
    assert fingerprint(older)["rows"] == first_rows
    listing = janitor(["backups"], env)
    assert [e["target"] for e in listing.of("backup.listed")] == [
        uri,
        second.of("database.backup")[0]["target"],
    ]


def test_an_unwritable_backup_store_keeps_the_database_its_roles_and_its_row(
    houston: Houston, env: dict[str, str], tmp_path: Path
) -> None:
    """JANITOR_BACKUP_URL names a directory that cannot be made: plan and run report the
    backup failed, the drop and the roles skipped (`backup failed: ...`), the row kept,
    exit 1; once the store is writable the next run backs up and drops."""
    release = houston.deployment("unwritable", deleted_days_ago=20)
    database, roles = names(release)
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the backup directory should be")
    env["JANITOR_BACKUP_URL"] = f"file://{blocker}/backups"

    for args in (["plan"], ["run"]):
        run = janitor(args, env)
        assert run.code == 1, run.events
        (taken,) = run.of("database.backup")
        assert taken["outcome"] == "failed"
        assert "not a directory" in taken["error"]
        (drop,) = run.of("database.drop")
        assert (drop["outcome"], drop["reason"].split(":")[0]) == ("skipped", "backup failed")
        assert set(run.outcomes("role.drop").values()) == {"skipped"}
        assert run.outcomes("deployment.purge") == {release: "skipped"}
    assert existing_databases([database]) == {database}
    assert existing_roles(roles) == set(roles)
    assert release in houston.rows()
    check = janitor(["check"], env)
    assert check.code == 1
    assert check.outcomes("check.component")["backup-store"] == "failed"

    env["JANITOR_BACKUP_URL"] = f"file://{tmp_path}/backups"
    again = janitor(["run"], env)
    assert again.code == 0, again.events
    assert again.outcomes("deployment.purge") == {release: "done"}


def test_a_dump_that_fails_mid_run_keeps_everything_and_leaves_no_partial_backup(
    houston: Houston, env: dict[str, str], store: Store
) -> None:
    """Managed PostgreSQL: the janitor may drop the database (member of its owner) but not
    read the celery role's table: pg_dump fails, the backup is `failed` with pg_dump's words,
    the drop and roles are skipped, nothing of the backup stays in the store, exit 1."""
    release = houston.deployment("unreadable", deleted_days_ago=20)
    database, roles = names(release)
    seed_data(database, roles, rows=5)
    env["JANITOR_HOUSTON_DSN"] = houston.janitor_role("janitor")
    with admin() as conn:
        conn.execute(
            sql.SQL("GRANT {} TO {}").format(
                sql.Identifier(roles[0]), sql.Identifier(houston.release("janitor"))
            )
        )
        # The airflow role (and so the janitor) was granted celery by seed_data; a managed
        # platform grants nothing of the kind.
        conn.execute(
            sql.SQL("REVOKE {} FROM {}").format(sql.Identifier(roles[1]), sql.Identifier(roles[0]))
        )
    env |= store.env

    run = janitor(["run"], env)

    assert run.code == 1, run.events
    (taken,) = run.of("database.backup")
    assert taken["outcome"] == "failed"
    assert "pg_dump" in taken["error"]
    assert "permission denied" in taken["error"]
    (drop,) = run.of("database.drop")
    assert drop["outcome"] == "skipped"
    assert drop["reason"].startswith("backup failed: pg_dump")
    assert set(run.outcomes("role.drop").values()) == {"skipped"}
    assert run.outcomes("deployment.purge") == {release: "skipped"}
    assert existing_databases([database]) == {database}
    assert existing_roles(roles) == set(roles)
    assert release in houston.rows()
    assert store.open().keys("") == []


def test_a_table_locked_past_the_lock_timeout_fails_the_backup_in_bounded_time(
    houston: Houston, env: dict[str, str], tmp_path: Path
) -> None:
    """A DBA session holds an exclusive lock on a deployment table: pg_dump waits one
    JANITOR_LOCK_TIMEOUT_SECONDS, the backup fails, the database is not dropped."""
    release = houston.deployment("locked", deleted_days_ago=20)
    database, _ = names(release)
    env |= {"JANITOR_BACKUP_URL": f"file://{tmp_path}/backups", "JANITOR_LOCK_TIMEOUT_SECONDS": "1"}
    with psycopg.connect(dsn(database), application_name="dba-console") as holder:
        holder.execute("LOCK TABLE dag_run IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        run = janitor(["run"], env)
        took = time.monotonic() - started

    assert run.code == 1, run.events
    (taken,) = run.of("database.backup")
    assert taken["outcome"] == "failed"
    assert "lock" in taken["error"]
    assert run.outcomes("database.drop") == {database: "skipped"}
    assert existing_databases([database]) == {database}
    assert took < 30


def test_roles_stay_when_their_database_could_not_be_dropped(
    houston: Houston, env: dict[str, str]
) -> None:
    """Without backups too: a DROP DATABASE that fails at execution (a lock held past the
    lock timeout) skips the roles; the celery role's grants and tables in that database stay
    (DROP OWNED would have destroyed its tables)."""
    release = houston.deployment("held", deleted_days_ago=20)
    database, roles = names(release)
    seed_data(database, roles, rows=5)
    before = fingerprint(database)
    env["JANITOR_LOCK_TIMEOUT_SECONDS"] = "1"
    with psycopg.connect(dsn("postgres"), application_name="dba-console") as holder:
        holder.execute(
            sql.SQL("COMMENT ON DATABASE {} IS 'in use'").format(sql.Identifier(database))
        )
        run = janitor(["run"], env)

    assert run.code == 1, run.events
    assert run.outcomes("database.drop") == {database: "failed"}
    for role in roles:
        (event,) = [e for e in run.of("role.drop") if e["target"] == role]
        assert event["outcome"] == "skipped"
        assert event["reason"].startswith(f"database {database} was not dropped")
    assert existing_roles(roles) == set(roles)
    assert fingerprint(database) == before


def write_backup(store: BackupStore, release: str, when: datetime, *, complete: bool = True) -> str:
    """A backup directory as the janitor lays it out, named for ``when``."""
    prefix = backup.backup_prefix(release, backup.stamp(when))
    store.put(prefix + backup.DUMP, io.BytesIO(b"PGDMP not a real dump"))
    if complete:
        store.put(prefix + backup.MANIFEST, io.BytesIO(b"{}"))
    return store.uri(prefix)


def database_now() -> datetime:
    with admin() as conn:
        row = conn.execute("SELECT now()").fetchone()
    assert row is not None
    now: datetime = row[0]
    return now


def test_backups_past_retention_are_deleted_except_those_of_releases_with_a_row(
    houston: Houston, env: dict[str, str], store: Store
) -> None:
    """By the database clock: a backup a minute past JANITOR_BACKUP_RETENTION_DAYS goes
    (an incomplete one too), one a minute short of it stays, one of a release that still
    has a row stays (`skipped`), and keys not laid out by the janitor are never touched; the
    dry run plans the same, and the guard counts them."""
    opened = store.open()
    now = database_now()
    window = timedelta(days=30)
    gone = houston.release("gone")
    restored = houston.deployment("restored")  # a row: its backups are kept
    old = write_backup(opened, gone, now - window - timedelta(minutes=1))
    old_incomplete = write_backup(opened, gone, now - window - timedelta(days=3), complete=False)
    young = write_backup(opened, gone, now - window + timedelta(minutes=1))
    kept = write_backup(opened, restored, now - window - timedelta(days=10))
    opened.put("notes/README.txt", io.BytesIO(b"an operator's file"))
    env |= store.env

    plan = janitor(["plan"], env)
    guarded = janitor(["run", "--max-deletions", "1"], env)
    run = janitor(["run"], env)

    assert plan.outcomes("backup.delete") == {
        old: "planned",
        old_incomplete: "planned",
        kept: "skipped",
    }
    assert guarded.code == 4
    assert run.code == 0, run.events
    assert run.outcomes("backup.delete") == {old: "done", old_incomplete: "done", kept: "skipped"}
    (skip,) = [e for e in run.of("backup.delete") if e["outcome"] == "skipped"]
    assert "still has a row" in skip["reason"]
    left = {f"{store.url}/{key.rsplit('/', 1)[0]}/" for key in opened.keys("")}
    assert left == {young, kept, f"{store.url}/notes/"}


def test_a_corrupted_or_unreadable_stored_dump_does_not_verify(
    houston: Houston, store: Store
) -> None:
    """Read back through the store: a dump whose bytes changed after writing fails the
    sha256 check, a truncated one too, and bytes that are no dump fail `pg_restore --list`."""
    release = houston.deployment("corrupt")
    database, roles = names(release)
    seed_data(database, roles, rows=50)
    with psycopg.connect(dsn("postgres")) as conn:
        tools = find_tools(conn.info.server_version)
    assert isinstance(tools, Tools), tools
    opened = store.open()
    backups = backup.Backups(store.url, lambda: opened, database_now(), "test")
    prepared = backup.Prepared(backups, dsn("postgres"), Timeouts(), tools, opened)
    _, digest = backup.dump(prepared, tools, opened, database, "x/ok")
    verify(opened, "x/ok", digest, tools, 60)
    good = b"".join(opened.read("x/ok"))

    # Both in the table data, past the table of contents `pg_restore --list` reads.
    flipped = bytearray(good)
    flipped[-100] ^= 0xFF
    for key, data in (("x/flipped", bytes(flipped)), ("x/truncated", good[:-100])):
        opened.put(key, io.BytesIO(data))
        with pytest.raises(BackupError, match="does not verify"):
            verify(opened, key, digest, tools, 60)
    garbage = b"not a dump at all"
    opened.put("x/garbage", io.BytesIO(garbage))
    with pytest.raises(BackupError, match="pg_restore --list cannot read"):
        verify(opened, "x/garbage", hashlib.sha256(garbage).hexdigest(), tools, 60)
