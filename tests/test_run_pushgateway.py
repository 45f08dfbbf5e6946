"""Run metrics (README "Run metrics"): a real run pushes them to a real Pushgateway, a real
Prometheus scrapes them from there, and a push that fails never changes the exit code."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import psycopg
import pytest

from janitor.houston import RUN_LOCK_KEY
from tests.conftest import Houston, janitor
from tests.loopback import free_port
from tests.pushgateway_server import (
    Pushgateway,
    prometheus_scraping,
    query_until,
    running_pushgateway,
)

USER, PASSWORD = "janitor", "push-gateway-s3cret"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pushgateway]:
    """A Pushgateway that asks for basic auth, as one behind an ingress would."""
    with running_pushgateway(
        tmp_path_factory.mktemp("push") / "gateway", (USER, PASSWORD)
    ) as running:
        yield running


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory, gateway: Pushgateway) -> Iterator[str]:
    """A Prometheus scraping the gateway every second (honor_labels, basic auth)."""
    with prometheus_scraping(tmp_path_factory.mktemp("scrape") / "prometheus", gateway) as url:
        yield url


def janitor_series(instance: str) -> str:
    return f'{{__name__=~"janitor_.+", job="astro-janitor", instance="{instance}"}}'


def counted(seen: dict[str, float]) -> dict[str, float]:
    """The janitor_last_run_actions series that are not 0."""
    return {k: v for k, v in seen.items() if k.startswith("janitor_last_run_actions{") and v}


def test_a_real_run_pushes_its_metrics_and_prometheus_scrapes_them(
    houston: Houston, env: dict[str, str], gateway: Pushgateway, prometheus: str
) -> None:
    """A run purges one expired deployment and must keep one with an invalid name: Prometheus,
    scraping the Pushgateway the run pushed to (through its basic auth), returns exit code 0,
    the run's times and counts and 1 expired row left, grouped by the Houston database. A
    second run that fails (the registry is down) pushes exit code 1 and 2 rows left, keeps
    the last success time of the first, and leaves no count of the first run behind."""
    houston.deployment("gone", deleted_days_ago=20)
    houston.add("Bad_Name", 25)
    houston.deployment("recent", deleted_days_ago=3)
    env["JANITOR_PUSHGATEWAY_URL"] = gateway.url
    before = time.time()

    run = janitor(["run"], env)

    after = time.time()
    assert run.code == 0, run.events
    assert "pushgateway_error" not in run.finished
    series = janitor_series(houston.dbname)
    first = query_until(prometheus, series, lambda seen: "janitor_last_run_exit_code" in seen)
    assert first["janitor_last_run_exit_code"] == 0
    assert first["janitor_expired_deployments_remaining"] == 1
    assert first["janitor_last_run_duration_seconds"] == run.finished["duration_s"]
    assert before <= first["janitor_last_run_timestamp_seconds"] <= after
    assert (
        first["janitor_last_success_timestamp_seconds"]
        == first["janitor_last_run_timestamp_seconds"]
    )
    assert counted(first) == {
        'janitor_last_run_actions{event="database.drop",outcome="done"}': 1,
        'janitor_last_run_actions{event="role.drop",outcome="done"}': 2,
        'janitor_last_run_actions{event="deployment.purge",outcome="done"}': 1,
        'janitor_last_run_actions{event="deployment.purge",outcome="skipped"}': 1,
    }
    assert first['janitor_last_run_actions{event="deployment.purge",outcome="failed"}'] == 0

    houston.deployment("later", deleted_days_ago=20)
    env["JANITOR_REGISTRY_URL"] = f"http://127.0.0.1:{free_port()}"

    failing = janitor(["run"], env)

    assert failing.code == 1
    assert "pushgateway_error" not in failing.finished
    second = query_until(
        prometheus, series, lambda seen: seen.get("janitor_last_run_exit_code") == 1
    )
    assert second["janitor_last_run_exit_code"] == 1
    assert second["janitor_expired_deployments_remaining"] == 2
    assert (
        second["janitor_last_run_timestamp_seconds"]
        > first["janitor_last_success_timestamp_seconds"]
    )
    assert (
        second["janitor_last_success_timestamp_seconds"]
        == first["janitor_last_success_timestamp_seconds"]
    )
    assert counted(second) == {
        'janitor_last_run_actions{event="database.drop",outcome="done"}': 1,
        'janitor_last_run_actions{event="role.drop",outcome="done"}': 2,
        'janitor_last_run_actions{event="registry.tag.delete",outcome="failed"}': 1,
        'janitor_last_run_actions{event="deployment.purge",outcome="skipped"}': 2,
    }


def test_without_houston_the_group_is_default_and_no_rows_are_counted(
    gateway: Pushgateway, prometheus: str
) -> None:
    """A metrics-only janitor pushes to instance "default", with its check counted and no
    janitor_expired_deployments_remaining (it has no deployments table to count)."""
    env = {"JANITOR_PROMETHEUS_URL": prometheus, "JANITOR_PUSHGATEWAY_URL": gateway.url}

    run = janitor(["run"], env)

    assert run.code == 0, run.events
    seen = query_until(
        prometheus, janitor_series("default"), lambda s: "janitor_last_run_exit_code" in s
    )
    assert seen["janitor_last_run_exit_code"] == 0
    assert "janitor_expired_deployments_remaining" not in seen
    assert counted(seen) == {
        'janitor_last_run_actions{event="metrics.retention.check",outcome="ok"}': 1
    }


def test_a_dry_run_and_a_run_locked_out_push_nothing(
    houston: Houston, env: dict[str, str], gateway: Pushgateway
) -> None:
    """`janitor plan`, and a run skipped because another run holds the lock, leave the
    gateway without a group for this Houston database: only a run that did its work
    reports, so a stuck lock holder cannot keep the last success fresh."""
    houston.deployment("gone", deleted_days_ago=20)
    env["JANITOR_PUSHGATEWAY_URL"] = gateway.url

    plan = janitor(["plan"], env)
    with psycopg.connect(houston.dsn, autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (RUN_LOCK_KEY,))
        skipped = janitor(["run"], env)

    assert (plan.code, skipped.code) == (0, 0)
    assert skipped.of("run.skipped")
    assert "pushgateway_error" not in plan.finished | skipped.finished
    instances = {group["labels"].get("instance") for group in gateway.groups()}
    assert houston.dbname not in instances


@pytest.fixture
def silent_gateway() -> Iterator[str]:
    """A server that accepts connections and never answers (a hung proxy)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


@pytest.mark.parametrize("down", ["refused", "silent"])
def test_a_pushgateway_that_is_down_leaves_the_exit_code_alone(
    houston: Houston,
    env: dict[str, str],
    silent_gateway: str,
    down: str,
) -> None:
    """Nothing listens at the Pushgateway URL, or it never answers: the run still purges
    and exits 0; within the push timeout run.finished, still the last line, says the push
    failed, naming the gateway without the password of its URL."""
    gone = houston.deployment("gone", deleted_days_ago=20)
    address = f"127.0.0.1:{free_port()}" if down == "refused" else silent_gateway
    env["JANITOR_PUSHGATEWAY_URL"] = f"http://{USER}:{PASSWORD}@{address}/"
    env["JANITOR_PUSHGATEWAY_TIMEOUT_SECONDS"] = "1"
    started = time.monotonic()

    run = janitor(["run"], env)

    assert time.monotonic() - started < 10
    assert run.code == 0, run.events
    assert gone not in houston.rows()
    assert run.finished["event"] == "run.finished"
    error = run.finished["pushgateway_error"]
    assert error.startswith(f"push to the Pushgateway http://{address} failed: ")
    # The socket timeout and the bound on the whole push both run out after one second.
    expected = ("Connection refused",) if down == "refused" else ("timed out", "within 1 s")
    assert error.endswith(expected), error
    assert PASSWORD not in str(run.events)
