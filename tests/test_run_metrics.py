"""The metrics check inside a whole run: exit 3 on mismatch, 1 when Prometheus is unreachable."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Houston, janitor
from tests.prometheus_server import running_prometheus


@pytest.fixture(scope="module")
def prometheus_10d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus keeping 10 days."""
    directory = tmp_path_factory.mktemp("run-metrics") / "server"
    with running_prometheus(directory, "--storage.tsdb.retention.time=10d") as url:
        yield url


def test_a_metrics_only_run_exits_3_on_mismatch_and_0_when_configured_alike(
    prometheus_10d: str,
) -> None:
    """No Houston needed: the check alone decides the exit code, in dry run as in a real run."""
    env = {"JANITOR_PROMETHEUS_URL": prometheus_10d}

    for args in (["run"], ["plan"]):
        mismatch = janitor(args, env)
        assert mismatch.code == 3
        (check,) = mismatch.of("metrics.retention.check")
        assert (check["outcome"], check["expected"], check["actual"]) == ("mismatch", "15d", "10d")
        assert mismatch.finished["exit_code"] == 3

    matching = janitor(["run"], env | {"JANITOR_METRICS_RETENTION_DAYS": "10"})
    assert matching.code == 0
    assert matching.outcomes("metrics.retention.check") == {prometheus_10d: "ok"}


def test_a_failure_elsewhere_outranks_a_mismatch(
    prometheus_10d: str, houston: Houston, env: dict[str, str]
) -> None:
    """A failed action makes the run exit 1 even when the retention also mismatches."""
    houston.deployment("old", deleted_days_ago=30)
    env |= {
        "JANITOR_PROMETHEUS_URL": prometheus_10d,
        "JANITOR_AIRFLOW_DSN": "host=127.0.0.1 port=1 user=postgres dbname=postgres",
    }

    run = janitor(["run"], env)

    assert run.code == 1
    assert run.outcomes("metrics.retention.check") == {prometheus_10d: "mismatch"}


def test_unreachable_prometheus_fails_the_check_with_exit_1(tmp_path: Path) -> None:
    """Nothing listens at the URL: the check is failed, exit 1, with the address named."""
    run = janitor(["run"], {"JANITOR_PROMETHEUS_URL": "http://127.0.0.1:1"})

    assert run.code == 1
    (check,) = run.of("metrics.retention.check")
    assert check["outcome"] == "failed"
    assert "127.0.0.1:1" in check["error"]


def test_check_command_probes_prometheus(prometheus_10d: str) -> None:
    """`janitor check` reads the retention (a mismatch is the run's finding, not a problem)."""
    run = janitor(["check"], {"JANITOR_PROMETHEUS_URL": prometheus_10d})

    assert run.code == 0
    assert run.outcomes("check.component") == {"prometheus": "ok"}


@pytest.mark.parametrize(
    ("flags", "code", "outcome", "actual"),
    [
        (
            ("--storage.tsdb.retention.time=15d", "--storage.tsdb.retention.size=1500MB"),
            0,
            "ok",
            "15d",
        ),
        (("--storage.tsdb.retention.size=1500MB",), 3, "mismatch", None),
    ],
    ids=["15d-and-1500MB", "1500MB-only"],
)
def test_a_size_limit_printed_in_compound_units_is_read_not_failed(
    tmp_path: Path, flags: tuple[str, ...], code: int, outcome: str, actual: str | None
) -> None:
    """Issue 10: Prometheus 2.42 shows --storage.tsdb.retention.size=1500MB as 1GiB476MiB; the
    run judges the time part (exit 0), or a size-only limit as a mismatch (exit 3), not failed."""
    with running_prometheus(tmp_path / "server", *flags) as url:
        run = janitor(["run"], {"JANITOR_PROMETHEUS_URL": url})

    assert run.code == code
    (check,) = run.of("metrics.retention.check")
    assert (check["outcome"], check["actual"], check["size_limit"]) == (
        outcome,
        actual,
        "1GiB476MiB",
    )
