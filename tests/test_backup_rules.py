"""The rules around final backups that need no backup to be taken: the settings, which
pg_dump is used, how it gets its password, what `restore` refuses, and its time bound."""

from __future__ import annotations

import io
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from janitor import backup
from janitor.backup import Backups, Prepared, Tools, find_tools, libpq_target
from janitor.clients.backupstore import FileStore, StoreError
from janitor.postgres import Timeouts
from tests.conftest import Houston, dsn, existing_databases, janitor


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://backups.example.com/x", "must be a file:///path or s3://bucket/prefix URL"),
        ("file://relative/path", "absolute directory"),
        ("file:///srv/../etc", "'..'"),
        ("s3://B", "valid bucket"),
        ("s3://ab", "valid bucket"),
        ("s3://bucket/a b", "spaces"),
        ("s3://key:secret@bucket/x", "credentials"),
        ("s3://bucket/x?versionId=1", "query"),
    ],
)
def test_a_backup_url_that_names_no_store_is_a_configuration_error(
    env: dict[str, str], url: str, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad JANITOR_BACKUP_URL is exit 2 naming the setting and why, before anything
    connects; a password in it is masked."""
    env["JANITOR_BACKUP_URL"] = url

    run = janitor(["plan"], env)

    assert run.code == 2
    assert run.events == []
    err = capsys.readouterr().err
    assert "JANITOR_BACKUP_URL=" in err
    assert problem in err
    assert "secret" not in err


@pytest.mark.parametrize(
    ("settings", "code"),
    [
        ({"JANITOR_BACKUP_URL": "file:///srv/backups/", "JANITOR_BACKUP_RETENTION_DAYS": "0"}, 2),
        (
            {"JANITOR_BACKUP_URL": "file:///srv/backups", "JANITOR_BACKUP_RETENTION_DAYS": "36501"},
            2,
        ),
        ({"JANITOR_BACKUP_URL": "file:///srv/x", "JANITOR_BACKUP_S3_ENDPOINT_URL": "http://s3"}, 2),
        ({"JANITOR_BACKUP_URL": "s3://bucket/x", "JANITOR_BACKUP_S3_ENDPOINT_URL": "ftp://s3"}, 2),
        (
            {
                "JANITOR_BACKUP_URL": "s3://bucket",
                "JANITOR_BACKUP_S3_ENDPOINT_URL": "http://u:p@s3",
            },
            2,
        ),
    ],
)
def test_backup_settings_are_bounded_and_go_together(
    env: dict[str, str], settings: dict[str, str], code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    """Retention days are 1-36500; an S3 endpoint needs an s3:// URL and an http(s) URL
    without credentials; each is exit 2 naming the setting, the password masked."""
    env |= settings

    run = janitor(["plan"], env)

    assert run.code == code
    err = capsys.readouterr().err
    assert "JANITOR_BACKUP" in err
    assert ":p@" not in err


def test_the_backup_url_is_kept_in_one_form_that_every_backup_uri_starts_with(
    houston: Houston, env: dict[str, str], tmp_path: Path
) -> None:
    """`file://localhost/dir/` and `file:///dir` name the same store: run.started shows
    `file:///dir`, and so do the backups' URIs."""
    release = houston.deployment("canonical", deleted_days_ago=20)
    env["JANITOR_BACKUP_URL"] = f"file://localhost{tmp_path}/"

    run = janitor(["plan"], env)

    assert run.code == 0, run.events
    assert run.events[0]["config"]["backup_url"] == f"file://{tmp_path}"
    assert run.of("database.backup")[0]["target"].startswith(f"file://{tmp_path}/{release}/")


@pytest.mark.parametrize(
    ("conninfo", "password", "kept"),
    [
        (
            "host=db user=janitor password=s3cr3t dbname=postgres",
            "s3cr3t",
            {"connect_timeout": "10"},
        ),
        ("postgresql://janitor:p%40ss@db:6432/postgres?sslmode=require", "p@ss", {"port": "6432"}),
        ("host=db user=janitor connect_timeout=3", None, {"connect_timeout": "3"}),
    ],
)
def test_pg_dump_gets_the_password_in_its_environment_never_on_its_command_line(
    conninfo: str, password: str | None, kept: dict[str, str]
) -> None:
    """The DSN given to pg_dump/pg_restore has no password, names the deployment database
    and a connect timeout; the password is PGPASSWORD of that process only."""
    target, environ = libpq_target(conninfo, "x_airflow", Timeouts(connect_s=10))

    params = conninfo_to_dict(target)
    assert "password" not in params
    assert password is None or password not in target
    assert params["dbname"] == "x_airflow"
    assert params["application_name"] == "astro-janitor"
    assert kept.items() <= params.items()
    if password is not None:
        assert environ["PGPASSWORD"] == password


def fake_client(lib: Path, major: int, printed: str) -> None:
    """What Debian's postgresql-client-NN installs, as far as the janitor looks at it."""
    tools = lib / str(major) / "bin"
    tools.mkdir(parents=True)
    for name in ("pg_dump", "pg_restore"):
        (tools / name).write_text(f"#!/bin/sh\necho '{printed}'\n")
        (tools / name).chmod(0o755)


def server_version() -> int:
    with psycopg.connect(dsn("postgres")) as conn:
        return conn.info.server_version


def test_a_pg_dump_older_than_the_server_fails_the_backup_in_the_plan_and_in_check(
    houston: Houston, env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image whose postgresql-client is older than the Airflow server: the plan reports
    the backup failed naming the package to install, the drop skipped, exit 1; `janitor
    check` lists the same; nothing is dropped."""
    major = server_version() // 10000
    fake_client(tmp_path / "lib", major, f"pg_dump (PostgreSQL) {major - 1}.4 (Debian)")
    monkeypatch.setattr(backup, "POSTGRESQL_LIB", tmp_path / "lib")
    release = houston.deployment("old-client", deleted_days_ago=20)
    database = f"{release.replace('-', '_')}_airflow"
    env["JANITOR_BACKUP_URL"] = f"file://{tmp_path}/backups"

    for args in (["plan"], ["run"]):
        run = janitor(args, env)
        assert run.code == 1, run.events
        (taken,) = run.of("database.backup")
        assert taken["outcome"] == "failed"
        assert f"pg_dump {major - 1}, older than" in taken["error"]
        assert f"postgresql-client-{major}" in taken["error"]
        assert run.outcomes("database.drop") == {database: "skipped"}
    check = janitor(["check"], env)
    assert check.code == 1
    (databases,) = [e for e in check.of("check.component") if e["target"] == "airflow-databases"]
    assert any("older than" in p for p in databases["problems"])
    assert existing_databases([database]) == {database}


@pytest.mark.parametrize(
    ("installed", "found"),
    [
        ("same", "versioned"),
        ("newer", "versioned"),
        ("none", "path"),
    ],
)
def test_the_pg_dump_of_the_servers_major_is_preferred_to_the_one_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, installed: str, found: str
) -> None:
    """/usr/lib/postgresql/<server major>/bin first (a newer pg_dump there is fine), else
    pg_dump on PATH."""
    version = server_version()
    major = version // 10000
    if installed != "none":
        shown = major if installed == "same" else major + 1
        fake_client(tmp_path, major, f"pg_dump (PostgreSQL) {shown}.0")
    monkeypatch.setattr(backup, "POSTGRESQL_LIB", tmp_path)

    tools = find_tools(version)

    assert isinstance(tools, Tools), tools
    assert tools.pg_dump.startswith(str(tmp_path)) == (found == "versioned")


def test_restore_refuses_what_it_cannot_do_without_changing_anything(
    houston: Houston, env: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No store configured, an invalid release or --as name: exit 2 on stderr; a release or
    URI with no complete backup: `database.restore` failed, exit 1; nothing is created."""
    release = houston.release("never-backed-up")
    assert janitor(["restore", release], env).code == 2
    assert "JANITOR_BACKUP_URL" in capsys.readouterr().err
    env["JANITOR_BACKUP_URL"] = f"file://{tmp_path}"
    for args in (["restore", "Not_A_Release"], ["restore", release, "--as", "x" * 64]):
        assert janitor(args, env).code == 2
    assert janitor(["backups", "Not_A_Release"], env).code == 2

    for args in (
        ["restore", release],
        ["restore", release, "--backup", f"file://{tmp_path}/{release}/20200101T000000Z/"],
    ):
        run = janitor(args, env)
        assert run.code == 1
        (event,) = run.of("database.restore")
        assert event["outcome"] == "failed"
        assert "no complete backup" in event["error"]
    assert existing_databases([f"{release.replace('-', '_')}_airflow"]) == set()


def test_a_dump_that_runs_past_its_time_bound_is_killed(houston: Houston, tmp_path: Path) -> None:
    """pg_dump waiting on a lock longer than its time bound is killed and the backup fails
    saying so, whatever the lock timeout."""
    release = houston.deployment("slow")
    database = f"{release.replace('-', '_')}_airflow"
    tools = find_tools(server_version())
    assert isinstance(tools, Tools), tools
    store = FileStore(tmp_path)
    backups = Backups(f"file://{tmp_path}", lambda: store, datetime.now(UTC), "t", timeout_s=1)
    prepared = Prepared(backups, dsn("postgres"), Timeouts(lock_s=600), tools, store)
    with psycopg.connect(dsn(database)) as holder:
        holder.execute("LOCK TABLE dag_run IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        result = backup.take(
            prepared, lambda: psycopg.connect(dsn("postgres")), release, database, []
        )
        took = time.monotonic() - started

    assert result.outcome == "failed"
    assert f"pg_dump of {database} did not finish within 1 s" in str(result.error)
    assert took < 10
    assert store.keys("") == []


def test_a_backup_never_overwrites_or_cleans_up_what_it_did_not_write(
    houston: Houston, tmp_path: Path
) -> None:
    """A backup directory of the same release and second already exists: the backup fails
    naming it and leaves it whole; a file store never replaces an object either."""
    release = houston.deployment("same-second")
    database = f"{release.replace('-', '_')}_airflow"
    tools = find_tools(server_version())
    assert isinstance(tools, Tools), tools
    store = FileStore(tmp_path)
    now = datetime.now(UTC)
    prefix = backup.backup_prefix(release, backup.stamp(now))
    store.put(prefix + backup.MANIFEST, io.BytesIO(b"an earlier backup's manifest"))
    backups = Backups(f"file://{tmp_path}", lambda: store, now, "t")
    prepared = Prepared(backups, dsn("postgres"), Timeouts(), tools, store)

    result = backup.take(prepared, lambda: psycopg.connect(dsn("postgres")), release, database, [])

    assert result.outcome == "failed"
    assert f"{store.uri(prefix)} exists" in str(result.error)
    assert store.keys("") == [prefix + backup.MANIFEST]
    with pytest.raises(StoreError, match="cannot write"):
        store.put(prefix + backup.MANIFEST, io.BytesIO(b"another"))
    assert b"".join(store.read(prefix + backup.MANIFEST)) == b"an earlier backup's manifest"
