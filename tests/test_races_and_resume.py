"""Races and crash recovery: a restore wins, runs do not overlap, a half-done job finishes."""

from __future__ import annotations

import io
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

from janitor.config import load_settings
from janitor.events import make_logger
from janitor.houston import RUN_LOCK_KEY
from janitor.runner import run as run_janitor
from janitor.sweepers import databases
from tests.conftest import Houston, Run, admin, dsn, existing_databases, existing_roles, janitor


def wait_until_janitor_waits_for_a_lock(houston: Houston, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    with admin() as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(
                "SELECT 1 FROM pg_stat_activity WHERE datname = %s"
                " AND application_name = 'astro-janitor' AND wait_event_type = 'Lock'",
                (houston.dbname,),
            ).fetchone()
            if waiting:
                return
            time.sleep(0.02)
    raise AssertionError("the janitor never waited for the row lock")


def test_a_restore_between_plan_and_execute_wins(houston: Houston, env: dict[str, str]) -> None:
    """Houston restores the deployment while the janitor plans: nothing of it is destroyed."""
    release = houston.deployment("restored", deleted_days_ago=30)
    database = f"{release.replace('-', '_')}_airflow"
    with psycopg.connect(houston.dsn) as restore:
        # The restore has updated the row but not committed when the janitor plans.
        restore.execute(
            'UPDATE "houston$default"."Deployment" SET "deletedAt" = NULL WHERE "releaseName" = %s',
            (release,),
        )
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(janitor, ["run"], env)
            wait_until_janitor_waits_for_a_lock(houston)
            restore.commit()
            run: Run = pending.result(timeout=60)

    assert run.code == 0
    assert run.outcomes("database.drop") == {database: "skipped"}
    assert "restored" in run.of("database.drop")[0]["reason"]
    assert run.outcomes("deployment.purge") == {release: "skipped"}
    assert existing_databases([database]) == {database}
    assert houston.rows()[release] is None


def test_a_run_holding_the_lock_makes_the_next_one_skip(
    houston: Houston, env: dict[str, str]
) -> None:
    """While another run holds the run lock, a run logs run.skipped, exits 0, changes nothing."""
    release = houston.deployment("old", deleted_days_ago=30)
    with psycopg.connect(houston.dsn, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (RUN_LOCK_KEY,))
        run = janitor(["run"], env)

    assert run.code == 0
    assert [e["event"] for e in run.events] == ["run.started", "run.skipped", "run.finished"]
    assert run.of("run.skipped")[0]["reason"] == "another run holds the run lock"
    assert release in houston.rows()


def test_two_runs_at_once_drop_everything_exactly_once(
    houston: Houston, env: dict[str, str]
) -> None:
    """Two runs started together: every database and role is dropped once, nothing fails."""
    releases = [houston.deployment(f"d{i}", deleted_days_ago=30) for i in range(6)]

    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda _: janitor(["run"], env), range(2)))
    runs = [Run(r.code, [e for e in r.events if "outcome" in e]) for r in runs]

    assert [r.code for r in runs] == [0, 0]
    done = [(e["event"], e["target"]) for r in runs for e in r.events if e["outcome"] == "done"]
    assert len(done) == len(set(done)) == len(releases) * 4
    assert houston.rows() == {}
    assert existing_databases(houston.databases) == set()


def test_a_half_cleaned_deployment_is_finished(houston: Houston, env: dict[str, str]) -> None:
    """After a crash left the database dropped but roles and row behind, the next run ends it."""
    release = houston.deployment("half", deleted_days_ago=30, database=False)
    snake = release.replace("-", "_")

    run = janitor(["run"], env)

    assert run.code == 0
    assert run.outcomes("database.drop") == {f"{snake}_airflow": "absent"}
    assert run.outcomes("role.drop") == {f"{snake}_airflow": "done", f"{snake}_celery": "done"}
    assert run.outcomes("deployment.purge") == {release: "done"}


def test_open_airflow_sessions_do_not_block_the_drop(houston: Houston, env: dict[str, str]) -> None:
    """A scheduler still connected to the deployment database is disconnected; the drop goes on."""
    release = houston.deployment("busy", deleted_days_ago=30)
    database = f"{release.replace('-', '_')}_airflow"
    scheduler = psycopg.connect(dsn(database), autocommit=True)
    try:
        run = janitor(["run"], env)
    finally:
        scheduler.close()

    assert run.outcomes("database.drop") == {database: "done"}
    assert existing_databases([database]) == set()


def test_servers_before_13_terminate_sessions_then_drop(houston: Houston) -> None:
    """The pre-13 path (no WITH (FORCE)) disallows connections, terminates sessions, drops."""
    houston.create_database(f"{houston.prefix}_legacy")
    name = f"{houston.prefix}_legacy"
    session = psycopg.connect(dsn(name), autocommit=True)
    server = databases.Server(
        connect=lambda: psycopg.connect(dsn("postgres"), autocommit=True),
        conninfo=dsn("postgres"),
        version=120000,
        account=databases.Account("postgres", superuser=True, createrole=True, may_signal=True),
        databases={name: databases.DatabaseFacts("postgres", may_drop=True)},
        roles={},
        protected_databases=frozenset(),
        protected_roles=frozenset(),
    )
    try:
        result = databases.drop_database(server, name)
    finally:
        session.close()

    assert result.outcome == "done"
    assert existing_databases([name]) == set()


def test_a_role_with_grants_elsewhere_loses_them_and_is_dropped(
    houston: Houston, env: dict[str, str]
) -> None:
    """Grants in another database are revoked (DROP OWNED there); that database's data stays."""
    release = houston.deployment("granted", deleted_days_ago=30)
    role = f"{release.replace('-', '_')}_celery"
    shared = f"{houston.prefix}_shared"
    houston.create_database(shared)
    with psycopg.connect(dsn(shared), autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT SELECT ON dag_run TO {}").format(sql.Identifier(role)))
        conn.execute("INSERT INTO dag_run (dag_id) VALUES ('kept')")
    with admin() as conn:
        conn.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
                sql.Identifier(shared), sql.Identifier(role)
            )
        )

    run = janitor(["run"], env)

    assert run.outcomes("role.drop")[role] == "done"
    assert existing_roles([role]) == set()
    with psycopg.connect(dsn(shared)) as conn:
        assert conn.execute("SELECT dag_id FROM dag_run").fetchall() == [("kept",)]


def test_a_role_owning_objects_elsewhere_fails_naming_them_and_keeps_the_row(
    houston: Houston, env: dict[str, str]
) -> None:
    """Objects the role owns in another database are never dropped; the event says where."""
    release = houston.deployment("owner", deleted_days_ago=30)
    role = f"{release.replace('-', '_')}_celery"
    shared = f"{houston.prefix}_shared"
    houston.create_database(shared)
    with psycopg.connect(dsn(shared), autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER TABLE dag_run OWNER TO {}").format(sql.Identifier(role)))

    run = janitor(["run"], env)

    assert run.code == 1
    failure = next(e for e in run.of("role.drop") if e["target"] == role)
    assert failure["outcome"] == "failed"
    assert f"object(s) in database {shared}" in failure["error"]
    assert run.outcomes("deployment.purge") == {release: "skipped"}
    assert existing_databases([shared]) == {shared}
    assert release in houston.rows()


def test_a_row_that_cannot_be_deleted_fails_and_the_run_goes_on(
    houston: Houston, env: dict[str, str]
) -> None:
    """A foreign key keeps one row: its purge fails with the reason, the other row goes."""
    blocked = houston.deployment("referenced", deleted_days_ago=30)
    other = houston.deployment("free", deleted_days_ago=30)
    houston.execute(
        'CREATE TABLE "houston$default"."Invite" (id serial, "deploymentId" text'
        ' REFERENCES "houston$default"."Deployment"(id))'
    )
    houston.execute(
        'INSERT INTO "houston$default"."Invite" ("deploymentId")'
        ' SELECT id FROM "houston$default"."Deployment" WHERE "releaseName" = %s',
        (blocked,),
    )

    run = janitor(["run"], env)

    assert run.code == 1
    assert run.outcomes("deployment.purge") == {blocked: "failed", other: "done"}
    assert (
        "foreign key"
        in next(e for e in run.of("deployment.purge") if e["target"] == blocked)["error"]
    )
    assert set(houston.rows()) == {blocked}
    rerun = janitor(["run"], env)
    assert set(rerun.outcomes("database.drop").values()) == {"absent"}


def test_an_unreachable_airflow_server_keeps_every_row(
    houston: Houston, env: dict[str, str]
) -> None:
    """The deployment databases' server is down: one failed event, exit 1, no row purged."""
    release = houston.deployment("old", deleted_days_ago=30)
    env["JANITOR_AIRFLOW_DSN"] = "host=127.0.0.1 port=1 user=postgres dbname=postgres"

    run = janitor(["run"], env)

    assert run.code == 1
    assert run.of("database.drop")[0]["outcome"] == "failed"
    assert run.outcomes("deployment.purge") == {release: "skipped"}
    assert release in houston.rows()


def test_an_unreachable_houston_database_fails_the_run(env: dict[str, str]) -> None:
    """No Houston, no plan: run.finished carries the error and exit code 1."""
    env["JANITOR_HOUSTON_DSN"] = "host=127.0.0.1 port=1 user=postgres dbname=houston"

    run = janitor(["run"], env)

    assert run.code == 1
    assert run.finished["exit_code"] == 1
    assert "Houston database" in run.finished["error"]


def test_ages_are_measured_with_the_database_clock_not_the_pod_clock(
    houston: Houston, env: dict[str, str]
) -> None:
    """A pod whose clock runs a year ahead deletes nothing early."""
    recent = houston.deployment("recent", deleted_days_ago=3)
    settings = load_settings({}, env)
    pod_clock = datetime.now(UTC) + timedelta(days=365)
    out = io.StringIO()

    code = run_janitor(
        settings,
        make_logger("json", run_id="t", dry_run=False, stream=out),
        clock=lambda: pod_clock,
    )

    assert code == 0
    assert recent in houston.rows()
    assert "database.drop" not in out.getvalue()


def test_registry_not_swept_keeps_the_row_after_dropping_databases(
    houston: Houston, env: dict[str, str]
) -> None:
    """Without JANITOR_REGISTRY_URL the databases go but the row stays (registry not swept)."""
    release = houston.deployment("old", deleted_days_ago=30)
    del env["JANITOR_REGISTRY_URL"]

    run = janitor(["run"], env)

    assert run.code == 0
    assert set(run.outcomes("database.drop").values()) == {"done"}
    assert run.of("deployment.purge")[0]["reason"] == "registry not swept"
    assert release in houston.rows()
