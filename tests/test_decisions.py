"""The pure decisions, as tables: names, the retention verdict, the guard count and why a row
stays. No server is needed: each row states one rule of the README."""

from __future__ import annotations

from datetime import timedelta

import pytest

from janitor.executor import keep_reason
from janitor.naming import (
    Templates,
    check_template,
    identifier_refusal,
    release_from,
    release_name_refusal,
    repository_refusal,
)
from janitor.plan import (
    ABSENT,
    DONE,
    PLANNED,
    Action,
    Deployment,
    DeploymentWork,
    Plan,
    Result,
    failed,
    final,
    guard_refusal,
    skipped,
)
from janitor.sweepers.metrics import Retention, RetentionUnreadable, sweeper
from janitor.sweepers.orphans import classify

RELEASE_NAMES = [
    ("quasaric-sun-9051", None),
    ("a", None),
    ("0", None),
    ("", "release name is empty"),
    (None, "release name is empty"),
    ("live-one\n", "invalid release name"),
    ("-leading", "invalid release name"),
    ("trailing-", "invalid release name"),
    ("Upper", "invalid release name"),
    ("snake_case", "invalid release name"),
    ("dot.ted", "invalid release name"),
    ("x\u0661", "invalid release name"),  # Arabic-Indic digit one
]


@pytest.mark.parametrize(("name", "refusal"), RELEASE_NAMES, ids=repr)
def test_release_names_must_match_in_full(name: str | None, refusal: str | None) -> None:
    """A release name is accepted only when it matches the whole rule, nothing around it."""
    found = release_name_refusal(name)
    assert (found is None) if refusal is None else (found is not None and refusal in found)


TEMPLATES = Templates("{release_snake}_airflow", ("{release_snake}_airflow",), "{release}/airflow")
DEPLOYMENT_NAMES = [
    ("my-app", None),
    ("a" * 55, None),  # a_..._airflow: 63 bytes exactly
    ("a" * 56, "database name"),  # 64 bytes: PostgreSQL would truncate it
    ("dark---matter", None),  # {release}/airflow keeps the dashes: valid
]


@pytest.mark.parametrize(("release", "refusal"), DEPLOYMENT_NAMES)
def test_a_deployment_is_refused_when_a_resource_name_cannot_be_built(
    release: str, refusal: str | None
) -> None:
    """Every name built from a release must be valid for its store, or the row is skipped."""
    found = TEMPLATES.refusal(release)
    assert (found is None) if refusal is None else (found is not None and refusal in found)


def test_the_repository_counts_only_when_the_registry_is_swept() -> None:
    """`dark---matter` under `{release_snake}/airflow` is invalid, but only a run that sweeps
    the registry needs that name."""
    swept = Templates("{release_snake}_airflow", (), "{release_snake}/airflow")
    unswept = Templates("{release_snake}_airflow", (), None)
    assert "dark___matter/airflow" in (swept.refusal("dark---matter") or "")
    assert unswept.refusal("dark---matter") is None


@pytest.mark.parametrize(
    ("template", "ok"),
    [
        ("{release}", True),
        ("{release_snake}_airflow", True),
        ("airflow", False),
        ("{release!r}", False),
        ("{release:>10}", False),
        ("{other}", False),
        ("{release", False),
    ],
)
def test_templates_use_only_the_release_fields(template: str, ok: bool) -> None:
    """A template names {release} or {release_snake}, with no conversion or format spec."""
    if ok:
        assert check_template(template) == template
    else:
        with pytest.raises(ValueError, match=r"template|release"):
            check_template(template)


@pytest.mark.parametrize(
    ("name", "ok"),
    [("x" * 63, True), ("x" * 64, False), ("é" * 32, False), ("", False), ("a\x00b", False)],
)
def test_identifiers_fit_postgresql(name: str, ok: bool) -> None:
    """Database and role names are at most 63 bytes (not characters), non-empty, no NUL."""
    assert (identifier_refusal(name) is None) is ok


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("team/app", True),
        ("a__b/c", True),
        ("a___b/c", False),
        ("A/b", False),
        ("a/b/", False),
        ("a" * 256, False),
        ("a/airflow\n", False),
    ],
)
def test_repository_names_follow_the_distribution_grammar(name: str, ok: bool) -> None:
    """Repository names match the distribution spec in full and stay within 255 characters."""
    assert (repository_refusal(name) is None) is ok


@pytest.mark.parametrize(
    ("template", "name", "release"),
    [
        ("{release_snake}_airflow", "dark_matter_4321_airflow", "dark-matter-4321"),
        ("{release_snake}_airflow", "a_airflow_airflow", "a-airflow"),  # its suffix inside
        ("{release_snake}_airflow", "a__b_airflow", "a--b"),
        ("{release_snake}_airflow", "_airflow", None),  # no release at all
        ("{release_snake}_airflow", "a__airflow", None),  # release `a-`: not valid
        ("{release_snake}_airflow", "a-b_airflow", None),  # a dash in a snake part
        ("{release_snake}_airflow", "A_airflow", None),
        ("{release_snake}_airflow", "a_airflow\n", None),  # full match, never `$`
        ("{release_snake}_airflow", "a_airflow_x", None),
        ("{release}/airflow", "a-b/airflow", "a-b"),
        ("{release}/airflow", "a/b/airflow", None),
        ("{release}/airflow", "a_b/airflow", None),
        ("{release}-{release}", "a-b-a-b", "a-b"),  # a field used twice must agree
        ("{release}-{release}", "a-b-a-c", None),
        ("{release}-{release_snake}", "a-b-a_b", "a-b"),
        ("{release}-{release_snake}", "a-b-a_c", None),
        ("{release_snake}", "a_celery", "a-celery"),
    ],
)
def test_a_name_reads_back_into_the_release_a_template_gives_it_for(
    template: str, name: str, release: str | None
) -> None:
    """A template is inverted in full: `_` in a snake part reads as `-`, and the release
    found must render back to exactly the name (README "Orphans: janitor audit")."""
    assert release_from(template, name) == release


ROLES = ("{release_snake}_celery", "{release_snake}")


@pytest.mark.parametrize(
    ("name", "rows", "verdict"),
    [
        ("a_celery", set(), "ambiguous"),  # a's, or a-celery's
        ("a_celery", {"a"}, "ambiguous"),  # live a's, and rowless a-celery's
        ("a_celery", {"a", "a-celery"}, None),  # both readings have rows: accounted for
        ("b", set(), "b"),  # one reading, no row: an orphan of b
        ("b", {"b"}, None),
        ("b_", set(), None),  # no template gives it
        ("x_y", {"x_y"}, "ambiguous"),  # an old invalid row x_y renders to it, x-y has none
    ],
)
def test_a_name_is_an_orphan_only_when_one_rowless_release_explains_it(
    name: str, rows: set[str], verdict: str | None
) -> None:
    """Classified against role templates `{release_snake}_celery,{release_snake}`: a name
    is an orphan of its one rowless release, ambiguous when another reading exists, and
    not reported when rows account for every reading."""
    found = classify("role", [name], ROLES, frozenset(rows))
    if verdict is None:
        assert found == []
    elif verdict == "ambiguous":
        ((finding),) = found
        assert (finding.orphan, finding.release) == (False, None)
        assert (finding.ambiguity or "").startswith(f"ambiguous: {name} ")
    else:
        assert [(f.release, f.orphan) for f in found] == [(verdict, True)]


def _verdict(retention: Retention | Exception, expected_days: int = 15) -> Result:
    def read() -> Retention:
        if isinstance(retention, Exception):
            raise retention
        return retention

    (step,) = sweeper(read, "http://prometheus:9090", expected_days).plan()
    (action,) = step.actions
    return action.planned


@pytest.mark.parametrize(
    ("retention", "outcome", "reason_part"),
    [
        (Retention(timedelta(days=15)), "ok", None),
        (Retention(timedelta(hours=360)), "ok", None),
        (Retention(timedelta(days=15), "1GiB476MiB"), "ok", None),
        (Retention(timedelta(days=10)), "mismatch", "keeps 10d, configured 15d"),
        (Retention(None, "512MiB"), "mismatch", "size-only retention"),
        (Retention(timedelta(days=1, hours=12)), "mismatch", "keeps 1d12h"),
        (RetentionUnreadable("agent mode"), "failed", None),
    ],
)
def test_the_retention_verdict(
    retention: Retention | Exception, outcome: str, reason_part: str | None
) -> None:
    """Prometheus' retention is compared as a duration; size alone is no time limit."""
    result = _verdict(retention)
    assert result.outcome == outcome
    if reason_part is not None:
        assert reason_part in (result.reason or "")


def _action(name: str, planned: Result) -> Action:
    return Action("database.drop", name, planned, "r")


def _work(*planned: Result, blocked: str | None = None) -> DeploymentWork:
    steps = tuple(final(_action(f"db{i}", p)) for i, p in enumerate(planned))
    return DeploymentWork(Deployment("id", "r", "2026-01-01"), steps, blocked=blocked)


@pytest.mark.parametrize(
    ("plan", "limit", "refused"),
    [
        (Plan((_work(PLANNED, PLANNED),), (), None), 3, False),  # 2 drops + the row
        (Plan((_work(PLANNED, PLANNED),), (), None), 2, True),
        (Plan((_work(PLANNED, ABSENT),), (), None), 2, False),  # absent is not counted
        (Plan((_work(PLANNED, skipped("protected")),), (), None), 2, False),
        (Plan((_work(PLANNED, blocked="invalid"),), (), None), 1, False),  # row kept
        (Plan((_work(PLANNED),), (), "registry not swept"), 1, False),  # no row goes
        (Plan((_work(PLANNED, PLANNED),), (), None), 0, False),  # 0 means no limit
    ],
)
def test_the_guard_counts_planned_deletions_and_rows(plan: Plan, limit: int, refused: bool) -> None:
    """The guard counts what would be deleted: planned actions, plus rows that may go."""
    assert (guard_refusal(plan, limit) is not None) is refused


@pytest.mark.parametrize(
    ("results", "blocked", "kept"),
    [
        ([DONE, ABSENT], None, None),
        ([DONE, failed("x")], None, "not all resources are gone (1 failed)"),
        ([skipped("terminated"), DONE], None, "not all resources are gone (1 skipped)"),
        ([DONE], "registry not swept", "registry not swept"),
        ([PLANNED], None, None),  # a dry run: the row would go
    ],
)
def test_why_a_row_stays(results: list[Result], blocked: str | None, kept: str | None) -> None:
    """A row goes only when every resource is confirmed gone and both sweepers ran."""
    assert keep_reason(results, blocked) == kept
