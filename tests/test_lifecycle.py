"""Operator stories for the core run: expired deployments lose their databases, roles and row."""

from __future__ import annotations

from datetime import datetime

from tests.conftest import Houston, existing_databases, existing_roles, janitor


def resources(release: str) -> tuple[str, list[str]]:
    snake = release.replace("-", "_")
    return f"{snake}_airflow", [f"{snake}_airflow", f"{snake}_celery"]


def test_expired_deployment_loses_database_and_roles_and_its_row_goes_last(
    houston: Houston, env: dict[str, str]
) -> None:
    """A deployment deleted 20 days ago loses its database and roles; its row goes last."""
    expired = houston.deployment("old", deleted_days_ago=20)
    recent = houston.deployment("recent", deleted_days_ago=3)
    live = houston.deployment("live")
    database, roles = resources(expired)
    deleted_at = houston.rows()[expired]

    run = janitor(["run"], env)

    assert run.code == 0, run.events
    assert run.outcomes("database.drop") == {database: "done"}
    assert run.outcomes("role.drop") == dict.fromkeys(roles, "done")
    assert run.outcomes("deployment.purge") == {expired: "done"}
    reported = datetime.fromisoformat(run.of("deployment.purge")[0]["deleted_at"])
    assert reported == deleted_at
    purge_index = run.events.index(run.of("deployment.purge")[0])
    assert all(run.events.index(e) < purge_index for e in run.of("role.drop"))
    assert existing_databases([database]) == set()
    assert existing_roles(roles) == set()
    assert set(houston.rows()) == {recent, live}
    for release in (recent, live):
        db, rs = resources(release)
        assert existing_databases([db]) == {db}
        assert existing_roles(rs) == set(rs)
    assert run.finished["event"] == "run.finished"
    assert run.finished["counts"]["deployment.purge"] == {"done": 1}


def test_second_run_has_nothing_to_do(houston: Houston, env: dict[str, str]) -> None:
    """Run twice: the second run finds no expired deployment and prints only start and finish."""
    houston.deployment("old", deleted_days_ago=20)
    assert janitor(["run"], env).code == 0

    second = janitor(["run"], env)

    assert second.code == 0
    assert [e["event"] for e in second.events] == ["run.started", "run.finished"]
    assert second.finished["counts"] == {}


def test_dry_run_reports_the_plan_and_changes_nothing(
    houston: Houston, env: dict[str, str]
) -> None:
    """`janitor plan` prints planned events and leaves databases, roles and rows alone."""
    expired = houston.deployment("old", deleted_days_ago=20)
    database, roles = resources(expired)

    for args in (["plan"], ["run", "--dry-run"]):
        run = janitor(args, env)
        assert run.code == 0
        assert all(e["dry_run"] is True for e in run.events)
        assert run.outcomes("database.drop") == {database: "planned"}
        assert run.outcomes("role.drop") == dict.fromkeys(roles, "planned")
        assert run.outcomes("deployment.purge") == {expired: "planned"}
    assert existing_databases([database]) == {database}
    assert existing_roles(roles) == set(roles)
    assert expired in houston.rows()
