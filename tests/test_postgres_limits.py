"""PostgreSQL as operators really run it: bounded waits, a run deadline, and plans that know
what the janitor's account may drop (README "Time limits", "PostgreSQL privileges")."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from tests.conftest import ADMIN_DSN, Houston, admin, existing_databases, existing_roles, janitor
from tests.postgres_server import private_cluster, transaction_pooler  # noqa: F401 - fixtures


def _snake(release: str) -> str:
    return release.replace("-", "_")


def test_a_database_the_account_may_not_drop_is_failed_in_the_plan_and_never_attempted(
    houston: Houston, env: dict[str, str]
) -> None:
    """Managed PostgreSQL: the janitor is a CREATEROLE role, the deployment's database is
    owned by the deployment's role. `plan` and `run` both report `failed` with the GRANT
    that fixes it, exit 1; the run sends no DROP DATABASE; `check` says the same."""
    release = houston.deployment("owned", deleted_days_ago=30)
    database, owner = f"{_snake(release)}_airflow", f"{_snake(release)}_airflow"
    env["JANITOR_HOUSTON_DSN"] = houston.janitor_role("janitor")
    janitor_role = houston.release("janitor")

    plan = janitor(["plan"], env)
    run = janitor(["run"], env)
    check = janitor(["check"], env)

    for result in (plan, run):
        assert result.code == 1
        (drop,) = result.of("database.drop")
        assert drop["outcome"] == "failed"
        assert f'GRANT "{owner}" TO "{janitor_role}"' in drop["error"]
        assert f'ALTER DATABASE "{database}" OWNER TO "{janitor_role}"' in drop["error"]
        roles = {e["target"]: e for e in result.of("role.drop")}
        assert roles[owner]["outcome"] == "failed"
        assert "owns database" in roles[owner]["error"]
        assert result.outcomes("deployment.purge") == {release: "skipped"}
    assert plan.outcomes("role.drop")[f"{_snake(release)}_celery"] == "planned"
    assert run.outcomes("role.drop")[f"{_snake(release)}_celery"] == "done"
    assert "must be owner" not in str(run.events)
    assert existing_databases([database]) == {database}
    assert release in houston.rows()
    (databases_check,) = [e for e in check.of("check.component") if e["target"] != "houston"]
    assert any(f'GRANT "{owner}"' in p for p in databases_check["problems"])


def test_a_member_of_the_owner_drops_the_database_and_purges_the_row(
    houston: Houston, env: dict[str, str]
) -> None:
    """Once the janitor's role is granted the owner role, the same deployment is swept."""
    release = houston.deployment("granted", deleted_days_ago=30)
    env["JANITOR_HOUSTON_DSN"] = houston.janitor_role("janitor")
    with admin() as conn:
        conn.execute(
            sql.SQL("GRANT {} TO {}").format(
                sql.Identifier(f"{_snake(release)}_airflow"),
                sql.Identifier(houston.release("janitor")),
            )
        )

    run = janitor(["run"], env)

    assert run.code == 0, run.events
    assert run.outcomes("database.drop") == {f"{_snake(release)}_airflow": "done"}
    assert set(run.outcomes("role.drop").values()) == {"done"}
    assert run.outcomes("deployment.purge") == {release: "done"}


@pytest.fixture
def holder() -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """Another session, as a DBA console would hold it: in an open transaction."""
    conn = psycopg.connect(ADMIN_DSN, application_name="dba-console")
    yield conn
    conn.close()


def test_a_lock_held_by_another_session_fails_that_drop_naming_the_holder(
    houston: Houston, env: dict[str, str], holder: psycopg.Connection[tuple[object, ...]]
) -> None:
    """A session keeps a transaction open after COMMENT ON DATABASE: the drop waits one
    JANITOR_LOCK_TIMEOUT_SECONDS, then is `failed` naming the holder; the other deployment
    is swept, the run ends with its summary, and the next run finishes the job."""
    held = houston.deployment("held", deleted_days_ago=30)
    other = houston.deployment("other", deleted_days_ago=30)
    database = f"{_snake(held)}_airflow"
    holder.execute(sql.SQL("COMMENT ON DATABASE {} IS 'in use'").format(sql.Identifier(database)))
    env["JANITOR_LOCK_TIMEOUT_SECONDS"] = "1"

    started = time.monotonic()
    run = janitor(["run"], env)
    took = time.monotonic() - started

    assert run.code == 1
    assert run.finished["event"] == "run.finished"
    drop = {e["target"]: e for e in run.of("database.drop")}[database]
    assert drop["outcome"] == "failed"
    assert "waited 1s" in drop["error"]
    assert "dba-console" in drop["error"]
    assert "idle in transaction" in drop["error"]
    assert run.outcomes("deployment.purge") == {held: "skipped", other: "done"}
    assert took < 30, "bounded by the lock timeout, not by the holder"

    holder.rollback()
    again = janitor(["run"], env)
    assert again.code == 0
    assert again.outcomes("deployment.purge") == {held: "done"}


def test_a_row_locked_past_the_timeout_fails_the_purge_and_touches_nothing(
    houston: Houston, env: dict[str, str], holder: psycopg.Connection[tuple[object, ...]]
) -> None:
    """A restore in Houston that holds the deployment row longer than the lock timeout: the
    purge is `failed` naming who holds the table, its database and roles are not touched."""
    release = houston.deployment("restoring", deleted_days_ago=30)
    holder.execute(f"SET search_path = {houston.dbname}")  # any statement opens the transaction
    holder.close()
    restoring = psycopg.connect(houston.dsn, application_name="houston-restore")
    restoring.execute(
        'SELECT 1 FROM "houston$default"."Deployment" WHERE "releaseName" = %s FOR UPDATE',
        (release,),
    )
    env["JANITOR_LOCK_TIMEOUT_SECONDS"] = "1"
    try:
        run = janitor(["run"], env)
    finally:
        restoring.close()

    assert run.code == 1
    (purge,) = run.of("deployment.purge")
    assert purge["outcome"] == "failed"
    assert "houston-restore" in purge["error"]
    assert set(run.outcomes("database.drop").values()) == {"skipped"}
    assert existing_databases([f"{_snake(release)}_airflow"]) == {f"{_snake(release)}_airflow"}


def test_the_deadline_lets_the_work_in_flight_finish_and_skips_the_rest(
    houston: Houston, env: dict[str, str], holder: psycopg.Connection[tuple[object, ...]]
) -> None:
    """JANITOR_DEADLINE_SECONDS=1 while the first deployment's drop waits 2 s on a lock: that
    drop finishes, the next deployment is `skipped` (deadline reached) and keeps its row,
    `run.finished` says deadline_reached; the next run picks it up."""
    first = houston.deployment("first", deleted_days_ago=40)
    second = houston.deployment("second", deleted_days_ago=30)
    holder.execute(
        sql.SQL("COMMENT ON DATABASE {} IS 'in use'").format(
            sql.Identifier(f"{_snake(first)}_airflow")
        )
    )
    release = threading.Timer(2.0, holder.rollback)
    release.start()
    env |= {"JANITOR_DEADLINE_SECONDS": "1", "JANITOR_CONCURRENCY": "1"}

    run = janitor(["run"], env)
    release.join()

    assert run.code == 0, run.events
    assert run.finished["deadline_reached"] is True
    purges = {e["target"]: e for e in run.of("deployment.purge")}
    assert purges[first]["outcome"] == "done"
    assert purges[second]["outcome"] == "skipped"
    assert purges[second]["reason"] == "deadline reached"
    assert second in houston.rows()

    del env["JANITOR_DEADLINE_SECONDS"]
    again = janitor(["run"], env)
    assert again.outcomes("deployment.purge") == {second: "done"}


def test_drop_blockers_are_failed_in_the_plan_with_what_clears_each(
    houston: Houston,
    env: dict[str, str],
    private_cluster: str,  # noqa: F811 - fixture
) -> None:
    """A prepared transaction, a logical replication slot and a subscription in a deployment
    database: `failed` naming each with the statement that clears it; the janitor clears
    none of them itself. Cleared by the operator, the next run drops the database."""
    release = houston.release("blocked")
    houston.add(release, deleted_days_ago=30)
    database = f"{_snake(release)}_airflow"
    with psycopg.connect(private_cluster, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    in_database = private_cluster.replace("dbname=postgres", f"dbname={database}")
    with psycopg.connect(in_database, autocommit=True) as conn:
        conn.execute("CREATE TABLE t (x int)")
        # Before the prepared transaction: a slot waits for running transactions to end.
        conn.execute("SELECT pg_create_logical_replication_slot('airflow_cdc', 'test_decoding')")
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.execute("PREPARE TRANSACTION 'airflow-xa'")
        conn.execute(
            "CREATE SUBSCRIPTION mirror CONNECTION 'dbname=nowhere' PUBLICATION p"
            " WITH (connect = false)"
        )
    env["JANITOR_AIRFLOW_DSN"] = private_cluster

    run = janitor(["run"], env)

    assert run.code == 1
    (drop,) = run.of("database.drop")
    assert drop["outcome"] == "failed"
    assert "ROLLBACK PREPARED 'airflow-xa'" in drop["error"]
    assert "pg_drop_replication_slot('airflow_cdc')" in drop["error"]
    assert "DROP SUBSCRIPTION mirror" in drop["error"]
    assert release in houston.rows()

    with psycopg.connect(in_database, autocommit=True) as conn:
        conn.execute("ROLLBACK PREPARED 'airflow-xa'")
        conn.execute("SELECT pg_drop_replication_slot('airflow_cdc')")
        conn.execute("ALTER SUBSCRIPTION mirror SET (slot_name = NONE)")
        conn.execute("DROP SUBSCRIPTION mirror")
    again = janitor(["run"], env)
    assert again.code == 0, again.events
    assert again.outcomes("database.drop") == {database: "done"}
    assert again.outcomes("deployment.purge") == {release: "done"}


def test_a_transaction_pooler_in_front_of_houston_is_named_by_check_and_refused_by_run(
    houston: Houston,
    env: dict[str, str],
    transaction_pooler: str,  # noqa: F811 - fixture
) -> None:
    """PgBouncer in transaction mode shares one session between clients: the run lock and
    the session's time zone would not hold. `check` says so; `run` refuses (exit 2) before
    touching anything."""
    release = houston.deployment("pooled", deleted_days_ago=30)
    env["JANITOR_HOUSTON_DSN"] = f"{transaction_pooler} user=postgres dbname={houston.dbname}"
    env["JANITOR_AIRFLOW_DSN"] = ADMIN_DSN

    check = janitor(["check"], env)
    run = janitor(["run"], env)

    assert check.code == 1
    (houston_check,) = [e for e in check.of("check.component") if e["target"] == "houston"]
    assert any("pool_mode=transaction" in p for p in houston_check["problems"])
    assert run.code == 2
    assert "pool_mode=transaction" in run.finished["error"]
    assert release in houston.rows()
    assert existing_roles([f"{_snake(release)}_airflow"]) == {f"{_snake(release)}_airflow"}
