"""Each SPEC.md safety rule, attacked: the janitor must refuse and keep the row."""

from __future__ import annotations

import pytest
from psycopg import sql

from tests.conftest import Houston, admin, existing_databases, existing_roles, janitor


@pytest.mark.parametrize(
    "release",
    [
        'x"; DROP DATABASE postgres; --',
        "a' OR '1'='1",
        "UPPER-case",
        "-leading-dash",
        "trailing-",
        "dots.in.name",
        "x_airflow; DROP ROLE postgres",
    ],
)
def test_release_names_that_look_like_sql_are_skipped_and_never_used(
    houston: Houston, env: dict[str, str], release: str
) -> None:
    """A release name outside the naming rules is reported skipped on every run, row kept."""
    houston.add(release, deleted_days_ago=40)

    for _ in range(2):
        run = janitor(["run"], env)
        assert run.code == 0
        assert run.outcomes("deployment.purge") == {release: "skipped"}
        assert "invalid release name" in run.of("deployment.purge")[0]["reason"]
        assert run.of("database.drop") == run.of("role.drop") == []
    assert release in houston.rows()
    assert existing_databases(["postgres", houston.dbname]) == {"postgres", houston.dbname}
    assert existing_roles(["postgres"]) == {"postgres"}


def test_empty_release_name_is_skipped_by_row_id(houston: Houston, env: dict[str, str]) -> None:
    """A row without a release name is reported under its id and kept."""
    row_id = houston.add(None, deleted_days_ago=40)

    run = janitor(["run"], env)

    assert run.outcomes("deployment.purge") == {row_id: "skipped"}
    assert None in houston.rows()


@pytest.mark.parametrize("protected", ["postgres", "template1"])
def test_templates_resolving_to_protected_databases_are_refused(
    houston: Houston, env: dict[str, str], protected: str
) -> None:
    """A template that yields postgres/template1 is refused; the row stays for an operator."""
    houston.add(protected, deleted_days_ago=40)
    env |= {"JANITOR_DATABASE_TEMPLATE": "{release}", "JANITOR_ROLE_TEMPLATES": "{release}_r"}

    run = janitor(["run"], env)

    assert run.code == 0
    assert run.of("database.drop")[0]["outcome"] == "skipped"
    assert run.of("database.drop")[0]["reason"] == "protected"
    assert run.outcomes("deployment.purge") == {protected: "skipped"}
    assert existing_databases([protected]) == {protected}
    assert protected in houston.rows()


def test_the_houston_database_itself_is_never_dropped(
    houston: Houston, env: dict[str, str]
) -> None:
    """A release whose database name would be the Houston database is refused."""
    release = houston.dbname.replace("_", "-")
    houston.add(release, deleted_days_ago=40)
    env |= {"JANITOR_DATABASE_TEMPLATE": "{release_snake}"}

    run = janitor(["run"], env)

    assert run.outcomes("database.drop") == {houston.dbname: "skipped"}
    assert existing_databases([houston.dbname]) == {houston.dbname}
    assert release in houston.rows()


def test_superuser_roles_are_never_dropped(houston: Houston, env: dict[str, str]) -> None:
    """A role named by the template that happens to be a superuser is refused."""
    release = houston.deployment("admin", deleted_days_ago=40, roles=False, database=False)
    role = f"{release.replace('-', '_')}_airflow"
    houston.roles.add(role)
    with admin() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} SUPERUSER").format(sql.Identifier(role)))

    run = janitor(["run"], env)

    assert run.outcomes("role.drop")[role] == "skipped"
    assert existing_roles([role]) == {role}
    assert release in houston.rows()


def test_only_exact_template_names_are_dropped(houston: Houston, env: dict[str, str]) -> None:
    """Databases and roles that merely start like a deployment's names survive."""
    release = houston.deployment("old", deleted_days_ago=40)
    snake = release.replace("-", "_")
    lookalikes = [f"{snake}_airflow_backup", f"{snake}_airflow2", f"{snake}", f"x{snake}_airflow"]
    for name in lookalikes:
        houston.create_database(name)
        houston.create_role(name)

    run = janitor(["run"], env)

    assert run.code == 0
    assert set(run.outcomes("database.drop")) == {f"{snake}_airflow"}
    assert existing_databases(lookalikes) == set(lookalikes)
    assert existing_roles(lookalikes) == set(lookalikes)


def test_names_postgres_would_truncate_are_refused(houston: Houston, env: dict[str, str]) -> None:
    """A name over 63 bytes could address another database after truncation: its deployment
    is skipped with the reason and keeps its row, and the rest of the fleet is swept."""
    release = houston.release("x" * 60)
    houston.add(release, deleted_days_ago=40)
    ordinary = houston.deployment("ordinary", deleted_days_ago=40)

    run = janitor(["run"], env)

    assert run.code == 0
    purge = run.outcomes("deployment.purge")
    assert purge == {release: "skipped", ordinary: "done"}
    (skip,) = [e for e in run.of("deployment.purge") if e["target"] == release]
    assert "63 bytes" in skip["reason"]
    assert release in houston.rows()
    assert {e["deployment"] for e in run.of("database.drop")} == {ordinary}


def test_release_name_shared_with_a_live_deployment_is_not_touched(
    houston: Houston, env: dict[str, str]
) -> None:
    """An expired row whose release name a live deployment reuses must not cost it its data."""
    release = houston.deployment("reused", deleted_days_ago=40)
    houston.add(release, deleted_days_ago=None)
    database = f"{release.replace('-', '_')}_airflow"

    run = janitor(["run"], env)

    assert run.outcomes("deployment.purge") == {release: "skipped"}
    assert "live or not yet expired" in run.of("deployment.purge")[0]["reason"]
    assert existing_databases([database]) == {database}


def test_recently_deleted_and_live_deployments_are_never_touched(
    houston: Houston, env: dict[str, str]
) -> None:
    """Deleted 14 days 23 hours ago is still restorable: nothing of it is dropped."""
    almost = houston.deployment("almost", deleted_days_ago=15 - 1 / 24)
    live = houston.deployment("live")

    run = janitor(["run"], env)

    assert [e["event"] for e in run.events] == ["run.started", "run.finished"]
    assert set(houston.rows()) == {almost, live}


def test_a_houston_server_in_another_time_zone_deletes_nothing_early(
    houston: Houston, env: dict[str, str]
) -> None:
    """deletedAt is UTC without a zone: a server/database time zone of UTC+14 must not age it."""
    with admin() as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET timezone TO 'Pacific/Kiritimati'").format(
                sql.Identifier(houston.dbname)
            )
        )
    release = houston.deployment("edge", deleted_days_ago=14.8)

    run = janitor(["run"], env)

    assert run.of("database.drop") == []
    assert release in houston.rows()


def test_the_guard_refuses_a_plan_bigger_than_max_deletions(
    houston: Houston, env: dict[str, str]
) -> None:
    """Two expired deployments are 8 deletions; with --max-deletions 5 nothing changes, exit 4."""
    first = houston.deployment("one", deleted_days_ago=30)
    second = houston.deployment("two", deleted_days_ago=30)

    run = janitor(["run", "--max-deletions", "5"], env)

    assert run.code == 4
    assert run.finished["exit_code"] == 4
    refused = [e for e in run.events if e.get("outcome") == "skipped"]
    assert len(refused) == 8
    assert all(e["reason"].startswith("guard:") for e in refused)
    assert set(houston.rows()) == {first, second}
    assert len(existing_databases(houston.databases)) == 2

    assert janitor(["run", "--max-deletions", "8"], env).code == 0
    assert houston.rows() == {}


def test_guard_does_not_count_what_is_already_gone(houston: Houston, env: dict[str, str]) -> None:
    """A half-cleaned deployment counts only what is left (its row) against the guard."""
    release = houston.deployment("half", deleted_days_ago=30, database=False, roles=False)

    run = janitor(["run", "--max-deletions", "1"], env)

    assert run.code == 0
    assert run.outcomes("deployment.purge") == {release: "done"}


def test_passwords_never_appear_in_events(houston: Houston, env: dict[str, str]) -> None:
    """A DSN password is masked in run.started, in events and in error messages."""
    password = "Sup3r-s3cret-pw"
    houston.deployment("old", deleted_days_ago=30)
    env |= {
        "JANITOR_HOUSTON_DSN": f"postgresql://postgres:{password}@127.0.0.1:5432/{houston.dbname}",
        "JANITOR_AIRFLOW_DSN": f"host=127.0.0.1 port=1 user=postgres password={password}",
    }

    run = janitor(["run"], env)

    assert run.code == 1
    printed = str(run.events)
    assert password not in printed
    assert "***" in printed


def test_the_janitor_account_cannot_drop_its_own_role(
    houston: Houston, env: dict[str, str]
) -> None:
    """The role the janitor connects as (here an ordinary CREATEROLE role, not the built-in
    protected `postgres`) is protected even when a template names it."""
    env["JANITOR_HOUSTON_DSN"] = houston.janitor_role("janitor")
    janitor_role = houston.release("janitor")
    houston.add(janitor_role, deleted_days_ago=40)
    env |= {"JANITOR_ROLE_TEMPLATES": "{release}", "JANITOR_DATABASE_TEMPLATE": "{release}_x"}

    run = janitor(["run"], env)

    assert run.outcomes("role.drop") == {janitor_role: "skipped"}
    assert run.of("role.drop")[0]["reason"] == "protected"
    assert existing_roles([janitor_role]) == {janitor_role}
