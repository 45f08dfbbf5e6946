"""Odd rows in the deployments table: each is skipped with its reason and kept, and the rest
of the fleet is swept as usual (issue: inputs that break the janitor today, 2 and 5)."""

from __future__ import annotations

import pytest

from tests.conftest import Houston, existing_databases, janitor
from tests.registry_server import (  # noqa: F401 - pytest fixtures
    Registry,
    registry,
)

HOSTILE_RELEASE_NAMES = [
    "live-one\n",  # `$` in a Python regex accepts a final newline
    "live-one\r",
    "live-one ",
    " live-one",
    "Live-one",
    "live_one",
    "live-one-",
    "live\u2011one",  # non-breaking hyphen
    "live-\uff11",  # fullwidth digit one: \d would take it
]


@pytest.mark.parametrize("release", HOSTILE_RELEASE_NAMES, ids=repr)
def test_a_release_name_that_is_not_exactly_valid_keeps_its_row(
    houston: Houston, env: dict[str, str], release: str
) -> None:
    """A row deleted 25 days ago whose release name fails a full match is skipped and kept,
    while an ordinary expired deployment beside it is swept."""
    row_id = houston.add(release, deleted_days_ago=25)
    ordinary = houston.deployment("ordinary", deleted_days_ago=25)

    run = janitor(["run"], env)

    assert run.code == 0, run.events
    purges = {e["id"]: e for e in run.of("deployment.purge")}
    assert purges[row_id]["outcome"] == "skipped"
    assert "invalid release name" in purges[row_id]["reason"]
    assert release in houston.rows()
    assert ordinary not in houston.rows()


def test_a_release_name_too_long_for_its_repository_skips_only_that_deployment(
    houston: Houston,
    env: dict[str, str],
    registry: Registry,  # noqa: F811 - the imported fixture
) -> None:
    """A valid 248-character release name gives a repository name past 255 characters: that
    row is skipped with the reason and kept; every other deployment's tags, databases and rows
    are still swept, exit 0."""
    long_release = "a" * 248
    houston.add(long_release, deleted_days_ago=30)
    ordinary = houston.deployment("ordinary", deleted_days_ago=30)
    registry.pusher().image(f"{ordinary}/airflow", "1.0.0")
    env["JANITOR_REGISTRY_URL"] = registry.url

    run = janitor(["run"], env)

    assert run.code == 0, run.events
    assert run.outcomes("deployment.purge") == {long_release: "skipped", ordinary: "done"}
    (skip,) = [e for e in run.of("deployment.purge") if e["target"] == long_release]
    assert "longer than 255" in skip["reason"] or "63 bytes" in skip["reason"]
    assert run.outcomes("registry.tag.delete") == {f"{ordinary}/airflow:1.0.0": "done"}
    assert set(houston.rows()) == {long_release}


def test_a_release_the_repository_template_cannot_name_is_skipped_and_checked(
    houston: Houston,
    env: dict[str, str],
    registry: Registry,  # noqa: F811 - the imported fixture
) -> None:
    """With `{release_snake}` in the repository template, `dark---matter` would give the
    invalid `dark___matter/airflow`: the row is skipped and kept, its database is untouched,
    the rest runs, and `janitor check` names the row."""
    dark = houston.release("dark---matter")
    houston.add(dark, deleted_days_ago=30)
    database = f"{dark.replace('-', '_')}_airflow"
    houston.create_database(database)
    ordinary = houston.deployment("ordinary", deleted_days_ago=30)
    env |= {
        "JANITOR_REGISTRY_URL": registry.url,
        "JANITOR_REGISTRY_REPOSITORY_TEMPLATE": "{release_snake}/airflow",
    }

    run = janitor(["run"], env)

    assert run.code == 0, run.events
    assert run.outcomes("deployment.purge") == {dark: "skipped", ordinary: "done"}
    assert existing_databases({database}) == {database}
    assert dark in houston.rows()

    check = janitor(["check"], env)
    assert check.code == 1
    (houston_check,) = [e for e in check.of("check.component") if e["target"] == "houston"]
    assert any("dark___matter/airflow" in p for p in houston_check["problems"])


def test_a_template_that_names_nothing_valid_is_a_configuration_error(
    houston: Houston, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """A template that cannot give a valid name even for an ordinary release is refused
    before anything connects: exit 2, naming the setting."""
    env["JANITOR_REGISTRY_URL"] = "http://127.0.0.1:1"
    env["JANITOR_REGISTRY_REPOSITORY_TEMPLATE"] = "Team/{release}"

    run = janitor(["run"], env)

    assert run.code == 2
    assert run.events == []
    assert "JANITOR_REGISTRY_REPOSITORY_TEMPLATE" in capsys.readouterr().err
