"""`--adopt-orphans` (issue 14) on the real PostgreSQL and registry: an orphan found on every
audit for JANITOR_ORPHAN_GRACE_DAYS, measured with the database clock, is swept like an
expired deployment; the grace period is simulated by moving `first_seen` back in the
janitor's own table. Only this story's records are ever moved back: the shared server's
other orphans stay inside their grace period.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from janitor.houston import Table
from janitor.orphan_records import Records, locked_if_adopted, record
from tests.conftest import Houston, admin, existing_databases, existing_roles, janitor
from tests.registry_server import Registry, registry  # noqa: F401 - pytest fixture
from tests.test_audit import mine, orphan

RECORDS = '"houston$default".janitor_orphan'


def records_of(houston: Houston, release: str) -> dict[tuple[str, str], Any]:
    with psycopg.connect(houston.dsn) as conn:
        rows = conn.execute(
            'SELECT kind, name, first_seen FROM "houston$default".janitor_orphan'
            " WHERE release = %s",
            (release,),
        ).fetchall()
    return {(kind, name): first for kind, name, first in rows}


def age(houston: Houston, release: str, interval: str) -> None:
    """Moves the first sighting of ``release``'s orphans back by ``interval``."""
    houston.execute(
        'UPDATE "houston$default".janitor_orphan SET first_seen = first_seen - %s::interval'
        " WHERE release = %s",
        (interval, release),
    )


def has_records_table(houston: Houston) -> bool:
    with psycopg.connect(houston.dsn) as conn:
        row = conn.execute("SELECT to_regclass(%s)", (RECORDS,)).fetchone()
    return bool(row and row[0])


def test_an_orphan_found_for_the_grace_period_is_swept_like_an_expired_deployment(
    houston: Houston,
    env: dict[str, str],
    registry: Registry,  # noqa: F811 - the imported fixture
) -> None:
    """Run 1 records the ghost's database, roles and repository (first_seen from the
    database clock). A day short of the 7-day grace period nothing is adopted; past it the
    plan shows the drops and deletes, the guard counts them, and the real run sweeps them:
    the purge deletes the ghost's records (no row: `absent`). A live deployment next to it
    keeps everything; afterwards the audit finds nothing of the ghost."""
    live = houston.deployment("live")
    ghost = orphan(houston, "ghost")
    pusher = registry.pusher()
    pusher.image(f"{live}/airflow", "1.0.0", label=live)
    pusher.image(f"{ghost}/airflow", "1.0.0", label=ghost)
    pusher.index(f"{ghost}/airflow", "multi", oci=True, label=ghost)
    env |= {"JANITOR_REGISTRY_URL": registry.url, "JANITOR_ORPHAN_GRACE_DAYS": "7"}
    snake = ghost.replace("-", "_")
    names = {
        ("database", f"{snake}_airflow"),
        ("role", f"{snake}_airflow"),
        ("role", f"{snake}_celery"),
        ("repository", f"{ghost}/airflow"),
    }

    first = janitor(["run", "--adopt-orphans"], env)

    assert first.code == 0, first.events
    found = mine(first.events, "orphan.database", houston)[f"{snake}_airflow"]
    assert (found["outcome"], found["adoptable"]) == ("found", False)
    recorded = records_of(houston, ghost)
    assert set(recorded) == names
    assert found["first_seen"] == recorded[("database", f"{snake}_airflow")].isoformat()
    assert first.of("database.drop") == []

    age(houston, ghost, "6 days")
    waiting = janitor(["run", "--adopt-orphans"], env)
    assert waiting.code == 0
    assert waiting.of("database.drop") == waiting.of("deployment.purge") == []

    age(houston, ghost, "1 day 1 minute")
    plan = janitor(["plan", "--adopt-orphans"], env)
    assert plan.code == 0, plan.events
    assert plan.outcomes("database.drop") == {f"{snake}_airflow": "planned"}
    assert plan.outcomes("role.drop") == {
        f"{snake}_airflow": "planned",
        f"{snake}_celery": "planned",
    }
    assert set(plan.outcomes("registry.tag.delete").values()) == {"planned"}
    (purge,) = plan.of("deployment.purge")
    assert (purge["target"], purge["outcome"], purge["adopted_orphan"]) == (ghost, "planned", True)
    assert mine(plan.events, "orphan.role", houston)[f"{snake}_celery"]["adoptable"] is True
    guarded = janitor(["run", "--adopt-orphans", "--max-deletions", "4"], env)
    assert guarded.code == 4
    assert existing_databases({f"{snake}_airflow"}) == {f"{snake}_airflow"}

    swept = janitor(["run", "--adopt-orphans"], env)

    assert swept.code == 0, swept.events
    assert swept.outcomes("database.drop") == {f"{snake}_airflow": "done"}
    assert swept.outcomes("role.drop") == {f"{snake}_airflow": "done", f"{snake}_celery": "done"}
    assert set(swept.outcomes("registry.tag.delete")) == {
        f"{ghost}/airflow:1.0.0",
        f"{ghost}/airflow:multi",
    }
    (purge,) = swept.of("deployment.purge")
    assert (purge["outcome"], purge["orphan_records_deleted"]) == ("absent", 4)
    assert records_of(houston, ghost) == {}
    assert existing_databases({f"{snake}_airflow"}) == set()
    assert existing_roles({f"{snake}_airflow", f"{snake}_celery"}) == set()
    assert pusher.tags(f"{ghost}/airflow") == []
    assert pusher.tags(f"{live}/airflow") == ["1.0.0"]
    live_snake = live.replace("-", "_")
    assert existing_databases({f"{live_snake}_airflow"}) == {f"{live_snake}_airflow"}
    assert set(houston.rows()) == {live}

    after = janitor(["audit"], env)
    assert after.code == 0
    assert not [e for e in after.events if ghost in e.get("target", "")]


def test_an_orphan_missing_from_one_audit_starts_its_grace_period_again(
    houston: Houston, env: dict[str, str]
) -> None:
    """Found continuously means on every audit: a database that was gone for one run (a
    restore put it back) loses its record, and comes back with a new first_seen, not
    adopted; the audit command records sightings too when adoption is on."""
    ghost = houston.release("flicker")
    database = f"{ghost.replace('-', '_')}_airflow"
    houston.create_database(database)
    env["JANITOR_ADOPT_ORPHANS"] = "true"

    assert janitor(["audit"], env).code == 0
    age(houston, ghost, "30 days")
    with admin() as conn:
        conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(database)))
    assert janitor(["run"], env).code == 0
    assert records_of(houston, ghost) == {}

    houston.create_database(database)
    back = janitor(["run"], env)

    assert back.code == 0
    assert back.of("database.drop") == []
    event = mine(back.events, "orphan.database", houston)[database]
    assert event["adoptable"] is False
    (first_seen,) = records_of(houston, ghost).values()
    assert event["first_seen"] == first_seen.isoformat()


def test_a_row_that_comes_back_for_an_orphan_wins(houston: Houston, env: dict[str, str]) -> None:
    """A restore from a Houston backup brings the ghost's row back: its names are accounted
    for again, nothing is adopted and its records go. Under the lock right before a sweep,
    a row holding the release makes the re-check fail as well."""
    ghost = orphan(houston, "restored")
    env["JANITOR_ADOPT_ORPHANS"] = "true"
    assert janitor(["run"], env).code == 0
    age(houston, ghost, "30 days")
    houston.add(ghost, deleted_days_ago=1)

    run = janitor(["run"], env)

    assert run.code == 0
    assert run.of("database.drop") == run.of("deployment.purge") == []
    assert records_of(houston, ghost) == {}
    records = Records("houston$default")
    table = Table("houston$default", "Deployment")
    with psycopg.connect(houston.dsn, autocommit=True) as conn:
        ((now,),) = conn.execute("SELECT now()").fetchall()
        record(conn, records, [("role", "r", ghost)], (), now=now - timedelta(days=30))
        with locked_if_adopted(conn, ghost, records=records, table=table, cutoff=now) as adoptable:
            assert adoptable is False
        houston.execute(
            'DELETE FROM "houston$default"."Deployment" WHERE "releaseName" = %s', (ghost,)
        )
        with locked_if_adopted(conn, ghost, records=records, table=table, cutoff=now) as adoptable:
            assert adoptable is True


def test_an_orphan_whose_names_are_ambiguous_is_never_adopted(
    houston: Houston, env: dict[str, str]
) -> None:
    """The orphan database of release b is past the grace period, but one of b's role
    names (`b_celery`) could also be release b-celery's: b is not adopted, and its event
    says why."""
    p = houston.prefix
    env |= {
        "JANITOR_ROLE_TEMPLATES": "{release_snake}_celery,{release_snake}",
        "JANITOR_ADOPT_ORPHANS": "true",
    }
    houston.create_database(f"{p}_b_airflow")
    houston.create_role(f"{p}_b_celery")
    assert janitor(["run"], env).code == 0
    age(houston, f"{p}-b", "30 days")

    run = janitor(["run"], env)

    assert run.code == 0, run.events
    assert run.of("database.drop") == run.of("role.drop") == []
    event = mine(run.events, "orphan.database", houston)[f"{p}_b_airflow"]
    assert event["adoptable"] is False
    assert event["adoption_refused"].startswith(f"ambiguous: {p}_b_celery is given by")
    assert existing_databases({f"{p}_b_airflow"}) == {f"{p}_b_airflow"}


def test_without_adoption_a_run_neither_audits_nor_creates_the_records_table(
    houston: Houston, env: dict[str, str]
) -> None:
    """Adoption is off by default: a run prints no orphan events and the Houston database
    gains no table; `janitor audit` alone records nothing either."""
    orphan(houston, "ignored")

    run = janitor(["run"], env)
    audited = janitor(["audit"], env)

    assert run.code == audited.code == 0
    assert not [e for e in run.events if e["event"].startswith("orphan.")]
    assert mine(audited.events, "orphan.database", houston)
    assert not has_records_table(houston)


def test_an_account_that_may_not_create_the_records_table_is_told_the_grant(
    houston: Houston, env: dict[str, str]
) -> None:
    """The janitor's non-superuser role lacks CREATE on the Houston schema: `orphan.record`
    fails naming both fixes (the GRANT, or an operator-made table with its grants); nothing
    is adopted; exit 1."""
    env["JANITOR_HOUSTON_DSN"] = houston.janitor_role("janitor")
    orphan(houston, "ghost")

    run = janitor(["run", "--adopt-orphans"], env)

    assert run.code == 1
    (failure,) = run.of("orphan.record")
    assert failure["target"] == "houston$default.janitor_orphan"
    assert "42501" in failure["error"]
    assert (
        f'GRANT CREATE ON SCHEMA "houston$default" TO "{houston.release("janitor")}"'
        in (failure["error"])
    )
    assert "GRANT SELECT, INSERT, UPDATE, DELETE ON" in failure["error"]
    assert run.of("database.drop") == []
    assert not has_records_table(houston)


def test_an_adopted_orphan_database_gets_its_final_backup_before_the_drop(
    houston: Houston, env: dict[str, str], tmp_path: Path
) -> None:
    """With JANITOR_BACKUP_URL, an adopted orphan's database is backed up and verified
    before it is dropped, as an expired deployment's is; `janitor backups` lists the backup
    under the orphan's release."""
    ghost = orphan(houston, "kept")
    database = f"{ghost.replace('-', '_')}_airflow"
    env |= {"JANITOR_ADOPT_ORPHANS": "true", "JANITOR_BACKUP_URL": f"file://{tmp_path}/backups"}
    assert janitor(["run"], env).code == 0
    age(houston, ghost, "8 days")

    run = janitor(["run"], env)

    assert run.code == 0, run.events
    (backup,) = run.of("database.backup")
    assert (backup["outcome"], backup["deployment"], backup["database"]) == (
        "done",
        ghost,
        database,
    )
    drop = run.of("database.drop")[0]
    assert (drop["target"], drop["outcome"]) == (database, "done")
    assert run.events.index(backup) < run.events.index(drop)
    listed = janitor(["backups", ghost], env)
    assert listed.code == 0
    assert [e["target"] for e in listed.of("backup.listed")] == [backup["target"]]
