"""Log retention inside a whole run: old indices go, the rest stays, a non-ES server is exit 2."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import Houston, janitor
from tests.es_standin import Cluster, es_cluster, standin_only  # noqa: F401 - pytest fixture
from tests.prometheus_server import login_page, serving


def log_env(cluster: Cluster) -> dict[str, str]:
    env = {
        "JANITOR_ELASTICSEARCH_URL": cluster.url,
        "JANITOR_LOG_INDEX_PATTERNS": ",".join(cluster.patterns),
    }
    if cluster.api_key:
        env["JANITOR_ELASTICSEARCH_API_KEY"] = cluster.api_key
    if cluster.ca_bundle:
        env["JANITOR_ELASTICSEARCH_CA_BUNDLE"] = str(cluster.ca_bundle)
    return env


def test_indices_older_than_the_window_go_in_a_real_run_and_only_then(
    es_cluster: Cluster,  # noqa: F811 - the imported fixture
) -> None:
    """16-day-old log indices are deleted, 14-day-old ones and other indices stay; the dry run
    before it changes nothing and a second run has nothing to do."""
    now = datetime.now(UTC)
    old = es_cluster.create_index(
        es_cluster.name("fluentd", "nova-1.old"), now - timedelta(days=16)
    )
    young = es_cluster.create_index(
        es_cluster.name("vector", "nova-1.young"), now - timedelta(days=14)
    )
    other = es_cluster.create_index(f"metrics-{es_cluster.prefix}", now - timedelta(days=40))
    env = log_env(es_cluster)

    plan = janitor(["plan"], env)
    assert plan.code == 0
    assert plan.outcomes("logs.index.delete") == {old: "planned"}
    assert es_cluster.existing() >= {old, young, other}

    run = janitor(["run"], env)
    assert run.code == 0
    (event,) = run.of("logs.index.delete")
    assert (event["target"], event["outcome"], event["age_days"]) == (old, "done", 16)
    assert old not in es_cluster.existing()
    assert {young, other} <= es_cluster.existing()

    again = janitor(["run"], env)
    assert again.code == 0
    assert again.of("logs.index.delete") == []


def test_logs_and_databases_in_one_run_share_the_houston_clock(
    es_cluster: Cluster,  # noqa: F811 - the imported fixture
    houston: Houston,
    env: dict[str, str],
) -> None:
    """With a Houston DSN, one run sweeps deployments and indices and exits 0."""
    release = houston.deployment("old", deleted_days_ago=30)
    index = es_cluster.create_index(
        es_cluster.name("fluentd", f"{release}.x"), datetime.now(UTC) - timedelta(days=20)
    )

    run = janitor(["run"], env | log_env(es_cluster))

    assert run.code == 0
    assert run.outcomes("logs.index.delete") == {index: "done"}
    assert run.outcomes("deployment.purge") == {release: "done"}


def test_a_pattern_naming_a_hidden_data_stream_is_swept_not_refused(
    es_cluster: Cluster,  # noqa: F811 - the imported fixture
) -> None:
    """Issue 10: JANITOR_LOG_INDEX_PATTERNS=fluentd.*,.logs-airflow was refused (exit 2); now
    the run sweeps: the old fluentd index goes, the hidden stream keeps its young indices and
    its write index, exit 0."""
    stream = f".{es_cluster.prefix}-logs-airflow"
    backing = es_cluster.create_data_stream(stream, generations=2, hidden=True)
    old = es_cluster.create_index(
        es_cluster.name("fluentd", "nova-1.old"), datetime.now(UTC) - timedelta(days=20)
    )
    env = log_env(es_cluster)
    env["JANITOR_LOG_INDEX_PATTERNS"] = f"fluentd.{es_cluster.prefix}-*,{stream}"

    run = janitor(["run"], env)

    assert run.code == 0, run.events
    assert run.outcomes("logs.index.delete") == {old: "done"}
    assert set(backing) <= es_cluster.existing()


@pytest.mark.parametrize("timestring", ["", " "])
def test_an_empty_timestring_as_helm_renders_it_reads_names_with_the_default(
    es_cluster: Cluster,  # noqa: F811 - the imported fixture
    timestring: str,
) -> None:
    """Age from names with JANITOR_LOG_TIMESTRING empty: today's index stays and a 20-day-old
    one goes with age_days 20 (issue 17: every index went, each 46353 days old)."""
    now = datetime.now(UTC)
    today = es_cluster.create_index(es_cluster.name("fluentd", f"a.{now:%Y.%m.%d}"))
    old = es_cluster.create_index(
        es_cluster.name("vector", f"b.{now - timedelta(days=20):%Y.%m.%d}")
    )
    env = log_env(es_cluster) | {
        "JANITOR_LOG_AGE_SOURCE": "name",
        "JANITOR_LOG_TIMESTRING": timestring,
    }

    run = janitor(["run"], env)

    assert run.code == 0
    (event,) = run.of("logs.index.delete")
    assert (event["target"], event["outcome"], event["age_days"]) == (old, "done", 20)
    assert today in es_cluster.existing()


def test_an_unreadable_creation_date_fails_one_index_and_the_run_goes_on(
    es_cluster: Cluster,  # noqa: F811 - the imported fixture
    houston: Houston,
    env: dict[str, str],
) -> None:
    """A non-numeric index.creation_date fails that index, naming it and the value; the
    databases and the other indices are still swept, exit 1 (issue 17: a traceback)."""
    standin_only()
    assert es_cluster.standin is not None
    release = houston.deployment("old", deleted_days_ago=30)
    month_ago = datetime.now(UTC) - timedelta(days=30)
    bad = es_cluster.create_index(es_cluster.name("fluentd", "bad"), month_ago)
    es_cluster.standin.mangle_creation_date(bad, "yesterday")
    good = es_cluster.create_index(es_cluster.name("fluentd", "good"), month_ago)

    run = janitor(["run"], env | log_env(es_cluster))

    assert run.code == 1
    assert run.outcomes("deployment.purge") == {release: "done"}
    assert run.outcomes("logs.index.delete") == {bad: "failed", good: "done"}
    (failure,) = [e for e in run.of("logs.index.delete") if e["outcome"] == "failed"]
    assert failure["error"] == (
        f"index [{bad}]: index.creation_date 'yesterday' is not epoch milliseconds"
    )
    assert bad in es_cluster.existing()


def test_the_largest_windows_run_without_overflow(
    es_cluster: Cluster,  # noqa: F811 - the imported fixture
    houston: Houston,
    env: dict[str, str],
) -> None:
    """36500-day windows (the documented bound) plan against PostgreSQL and Elasticsearch
    without an overflow: nothing is that old, so nothing is planned."""
    houston.deployment("old", deleted_days_ago=400)
    es_cluster.create_index(
        es_cluster.name("fluentd", "x.2000.01.01"), datetime.now(UTC) - timedelta(days=400)
    )
    windows = {"JANITOR_RETENTION_DAYS": "36500", "JANITOR_LOG_RETENTION_DAYS": "36500"}

    for source in ("creation_date", "name"):
        run = janitor(
            ["plan"], env | log_env(es_cluster) | windows | {"JANITOR_LOG_AGE_SOURCE": source}
        )
        assert run.code == 0
        assert run.of("logs.index.delete") == []
        assert run.of("deployment.purge") == []


def test_a_server_that_is_not_elasticsearch_is_a_configuration_error() -> None:
    """A login page answering on the URL: exit 2, nothing deleted, the URL named."""
    with serving(login_page) as server:
        run = janitor(["run"], {"JANITOR_ELASTICSEARCH_URL": server.url})

    assert run.code == 2
    assert "JANITOR_ELASTICSEARCH_URL" in run.finished["error"]
    assert run.of("logs.index.delete") == []


def test_an_unreachable_elasticsearch_fails_the_logs_sweep_with_exit_1() -> None:
    """Nothing listens: one failed logs event naming the patterns, exit 1."""
    run = janitor(["run"], {"JANITOR_ELASTICSEARCH_URL": "http://127.0.0.1:1"})

    assert run.code == 1
    (event,) = run.of("logs.index.delete")
    assert (event["target"], event["outcome"]) == ("fluentd.*,vector.*", "failed")


def test_check_command_probes_elasticsearch(
    es_cluster: Cluster,  # noqa: F811 - the imported fixture
) -> None:
    """`janitor check` verifies the product and the privileges on the patterns."""
    run = janitor(["check"], log_env(es_cluster))

    assert run.code == 0
    assert run.outcomes("check.component") == {"elasticsearch": "ok"}
