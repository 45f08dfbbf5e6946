"""Operator stories for the log sweeper: which indices go, which stay, and at what cost.

Each test runs against the Elasticsearch stand-in, or against the real cluster named by
JANITOR_TEST_ELASTICSEARCH_URL; those that configure the server (faults, versions,
security, TLS) or count requests say so and need the stand-in.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from elastic_transport import TransportError
from elasticsearch import Elasticsearch

from janitor.clients.elasticsearch import (
    check_elasticsearch,
    connect_elasticsearch,
    describe,
    verify_elasticsearch,
)
from janitor.config import load_settings
from janitor.errors import ConfigurationError
from janitor.naming import name_date_pattern
from janitor.plan import Result, Step
from janitor.sweepers.logs import EVENT, MAX_REQUEST_LINE, LogRetention, plan_logs, sweeper
from tests.es_standin import (
    Cluster,
    Grants,
    es_cluster,
    request_lines,
    running_standin,
    standin_only,
    tls,
)
from tests.loopback import Tls, finishes, free_port

__all__ = ["es_cluster", "tls"]  # fixtures, imported for pytest

NOW = datetime(2026, 11, 20, 12, 0, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def plan(
    cluster: Cluster,
    now: datetime = NOW,
    *,
    retention_days: int = 15,
    age_source: Any = "creation_date",
    patterns: Sequence[str] | None = None,
    timestring: str = "%Y.%m.%d",
) -> list[Step]:
    return plan_logs(
        cluster.connect(),
        patterns=patterns or cluster.patterns,
        retention_days=retention_days,
        age_source=age_source,
        timestring=timestring,
        now=now,
    )


def plan_pattern(es: Any, pattern: str) -> list[Step]:
    """The plan for ``pattern`` with every other setting at its default, at ``NOW``."""
    return plan_logs(
        es,
        patterns=[pattern],
        retention_days=15,
        age_source="creation_date",
        timestring="%Y.%m.%d",
        now=NOW,
    )


def run(steps: Sequence[Step]) -> dict[str, Result]:
    """Every action's outcome by index name, running the steps as the runner would."""
    outcomes: dict[str, Result] = {}
    for step in steps:
        results = step.run() if step.run else [a.planned for a in step.actions]
        assert len(results) == len(step.actions)
        for action, result in zip(step.actions, results, strict=True):
            assert action.event == EVENT
            outcomes[action.target] = result
    return outcomes


def planned(steps: Sequence[Step]) -> dict[str, Any]:
    return {
        a.target: (a.planned.outcome, a.fields.get("age_days")) for s in steps for a in s.actions
    }


def test_expired_log_indices_go_in_one_delete_and_young_ones_stay(es_cluster: Cluster) -> None:
    """Indices of both shippers past 15 days are planned with their age, then deleted."""
    old_fluentd = es_cluster.create_index(
        es_cluster.name("fluentd", "quasar-1234.2026.11.01"), NOW - 19 * DAY
    )
    old_vector = es_cluster.create_index(
        es_cluster.name("vector", "quasar-1234.2026.11.02"), NOW - 18 * DAY - timedelta(hours=5)
    )
    closed = es_cluster.create_index(
        es_cluster.name("fluentd", "quasar-1234.2026.10.30"), NOW - 21 * DAY, closed=True
    )
    young = es_cluster.create_index(es_cluster.name("fluentd", "quasar-1234.2026.11.19"), NOW - DAY)

    before = len(es_cluster.standin.requests) if es_cluster.standin else 0

    steps = plan(es_cluster)

    assert planned(steps) == {
        old_fluentd: ("planned", 19),
        old_vector: ("planned", 18),
        closed: ("planned", 21),
    }
    assert es_cluster.existing() == {old_fluentd, old_vector, closed, young}, "plan is read-only"
    assert len(steps) == 1, "one DELETE for the whole batch"
    assert {n: r.outcome for n, r in run(steps).items()} == dict.fromkeys(
        [old_fluentd, old_vector, closed], "done"
    )
    assert es_cluster.existing() == {young}
    if es_cluster.standin is not None:
        sent = [
            r.line
            for r in es_cluster.standin.requests[before:]
            if f"*{es_cluster.prefix}*" not in r.target  # the test's own existing() calls
        ]
        assert sent == [
            f"GET /fluentd.{es_cluster.prefix}-*,vector.{es_cluster.prefix}-*"
            "?allow_no_indices=true&expand_wildcards=open,closed"
            "&filter_path=*.aliases,*.settings.index.creation_date,*.settings.index.hidden,"
            "*.settings.index.lifecycle.name&ignore_unavailable=true HTTP/1.1",
            f"DELETE /{','.join(sorted([closed, old_fluentd, old_vector]))} HTTP/1.1",
        ]


def test_older_than_n_days_is_exact_to_the_second(es_cluster: Cluster) -> None:
    """Created at now - 15 d goes; created one second later stays."""
    at_cutoff = es_cluster.create_index(
        es_cluster.name("fluentd", "edge.2026.11.05"), NOW - 15 * DAY
    )
    just_after = es_cluster.create_index(
        es_cluster.name("fluentd", "edge2.2026.11.05"), NOW - 15 * DAY + timedelta(seconds=1)
    )

    outcomes = run(plan(es_cluster))

    assert outcomes == {at_cutoff: Result("done")}
    assert es_cluster.existing() == {just_after}


def test_nothing_to_delete_is_an_empty_plan(es_cluster: Cluster) -> None:
    """No matching index, or only young ones: no step, no error (unlike Curator's exit 1)."""
    assert plan(es_cluster) == []
    es_cluster.create_index(es_cluster.name("vector", "fresh.2026.11.20"), NOW - timedelta(hours=1))

    assert plan(es_cluster) == []


def test_hidden_indices_aliases_and_other_names_are_never_touched(es_cluster: Cluster) -> None:
    """Only names matching a pattern are candidates; a hidden one is skipped with a reason."""
    hidden = es_cluster.create_index(
        es_cluster.name("fluentd", "audit.2026.10.01"), NOW - 50 * DAY, hidden=True
    )
    unrelated = es_cluster.create_index(f"{es_cluster.prefix}-billing-2026.10.01", NOW - 50 * DAY)
    es_cluster.add_alias(unrelated, es_cluster.name("fluentd", "billing-alias"))
    expired = es_cluster.create_index(es_cluster.name("fluentd", "web.2026.10.01"), NOW - 50 * DAY)
    patterns = (*es_cluster.patterns, hidden)  # even named explicitly, a hidden index stays

    steps = plan(es_cluster, patterns=patterns)
    outcomes = run(steps)

    assert outcomes == {
        hidden: Result("skipped", reason="hidden index (index.hidden: true)"),
        expired: Result("done"),
    }
    assert es_cluster.existing() == {hidden, unrelated}


def test_a_data_stream_past_the_window_keeps_only_its_write_index(es_cluster: Cluster) -> None:
    """A pattern matching a stream's name sweeps its old backing indices, never the write one."""
    stream = es_cluster.name("vector", "quasar-1234")
    *older, write = es_cluster.create_data_stream(stream, generations=3)
    later = datetime.now(UTC) + 40 * DAY  # every backing index is past the window by then

    outcomes = run(plan(es_cluster, later))

    assert outcomes == {
        **dict.fromkeys(older, Result("done")),
        write: Result("skipped", reason=f"write index of data stream [{stream}]"),
    }
    assert es_cluster.backing_indices(stream) == [write]
    assert es_cluster.existing() == {write}


def test_ages_from_names_use_the_date_in_the_name_and_skip_names_without_one(
    es_cluster: Cluster,
) -> None:
    """age source 'name': the suffix date counts from its midnight UTC, creation date ignored."""
    names = {
        day: es_cluster.create_index(es_cluster.name("fluentd", f"quasar-1234.2026.11.{day:02d}"))
        for day in (1, 4, 5, 6)
    }
    undated = es_cluster.create_index(es_cluster.name("fluentd", "quasar-1234.latest"))
    now = datetime(2026, 11, 20, 0, 0, 0, tzinfo=UTC)  # cutoff: 2026-11-05T00:00Z

    steps = plan(es_cluster, now, age_source="name")
    outcomes = run(steps)

    assert planned(steps)[names[1]] == ("planned", 19)
    assert outcomes == {
        names[1]: Result("done"),
        names[4]: Result("done"),
        names[5]: Result("done"),
        undated: Result("skipped", reason="no date matching '%Y.%m.%d' in the index name"),
    }
    assert es_cluster.existing() == {names[6], undated}


def test_an_index_that_vanished_before_its_batch_ran_is_absent(es_cluster: Cluster) -> None:
    """Deleted by someone else between plan and run: reported absent, the others done."""
    gone = es_cluster.create_index(es_cluster.name("fluentd", "a.2026.10.01"), NOW - 50 * DAY)
    stays = es_cluster.create_index(es_cluster.name("fluentd", "b.2026.10.01"), NOW - 50 * DAY)
    steps = plan(es_cluster)
    es_cluster.admin.indices.delete(index=gone)

    outcomes = run(steps)

    assert outcomes == {gone: Result("absent"), stays: Result("done")}
    assert es_cluster.existing() == set()


def test_a_batch_already_deleted_costs_one_probe_not_one_request_per_index(
    es_cluster: Cluster,
) -> None:
    """Every index gone (a retried DELETE that had gone through): one 404, one probe, all absent."""
    names = [
        es_cluster.create_index(es_cluster.name("vector", f"r{i}.2026.10.01"), NOW - 40 * DAY)
        for i in range(5)
    ]
    steps = plan(es_cluster)
    es_cluster.admin.indices.delete(index=names)
    before = len(es_cluster.standin.requests) if es_cluster.standin else 0

    outcomes = run(steps)

    assert outcomes == dict.fromkeys(names, Result("absent"))
    if es_cluster.standin is not None:
        sent = [r.method for r in es_cluster.standin.requests[before:]]
        assert sent == ["DELETE", "GET"]


def test_one_index_refusing_deletion_does_not_block_its_batch(es_cluster: Cluster) -> None:
    """A name turned alias meanwhile makes DELETE a 400: the batch is split, the rest go."""
    names = [
        es_cluster.create_index(es_cluster.name("fluentd", f"s{i}.2026.10.01"), NOW - 40 * DAY)
        for i in range(6)
    ]
    steps = plan(es_cluster)
    turned = names[3]
    es_cluster.admin.indices.delete(index=turned)
    elsewhere = es_cluster.create_index(f"{es_cluster.prefix}-elsewhere")
    es_cluster.add_alias(elsewhere, turned)

    outcomes = run(steps)

    assert {n: r.outcome for n, r in outcomes.items()} == {
        **dict.fromkeys(names, "done"),
        turned: "failed",
    }
    assert "matches an alias" in str(outcomes[turned].error)
    assert es_cluster.existing() == {elsewhere}


def test_an_index_held_by_a_snapshot_fails_alone_and_the_rest_go_in_one_more_request() -> None:
    """A 400 snapshot_in_progress_exception names the index a running snapshot holds: it is
    failed with that error, the five others go in one more DELETE, not a halving search."""
    standin_only()
    with running_standin() as standin:
        names = [f"fluentd.r{i}.2026.10.01" for i in range(6)]
        for name in names:
            standin.add_index(name, NOW - 40 * DAY)
        standin.start_snapshot(names[2])
        es = connect(standin.url)
        steps = plan_pattern(es, "fluentd.*")

        outcomes = run(steps)

        assert {n: r.outcome for n, r in outcomes.items()} == {
            **dict.fromkeys(names, "done"),
            names[2]: "failed",
        }
        assert str(outcomes[names[2]].error).startswith(
            "HTTP 400 snapshot_in_progress_exception: Cannot delete indices that are being "
            f"snapshotted: [[{names[2]}/"
        )
        assert standin.index_names() == {names[2]}
        assert len(request_lines(standin, "DELETE")) == 2


def test_the_write_index_of_an_alias_is_never_deleted(es_cluster: Cluster) -> None:
    """An alias's write index stays, skipped naming the alias: is_write_index true, or the
    only index of an alias that leaves it unset. Indices sharing an unset alias, or holding
    it with is_write_index false, go; an alias that also holds an index the patterns do not
    reach costs one GET _alias to count its indices."""

    def old(name: str) -> str:
        return es_cluster.create_index(es_cluster.name("fluentd", name), NOW - 30 * DAY)

    def alias(name: str) -> str:
        return f"{es_cluster.prefix}-alias-{name}"

    writer, reader = old("writer.2026.10.01"), old("reader.2026.10.01")
    es_cluster.add_alias(writer, alias("logs"), is_write_index=True)
    es_cluster.add_alias(reader, alias("logs"))
    solo = old("solo.2026.10.01")
    es_cluster.add_alias(solo, alias("solo"))
    pair = [old("pair-a.2026.10.01"), old("pair-b.2026.10.01")]
    for index in pair:
        es_cluster.add_alias(index, alias("pair"))
    spread = old("spread.2026.10.01")
    archive = es_cluster.create_index(f"{es_cluster.prefix}-archive", NOW - 30 * DAY)
    for index in (spread, archive):
        es_cluster.add_alias(index, alias("spread"))
    switched_off = old("off.2026.10.01")
    es_cluster.add_alias(switched_off, alias("off"), is_write_index=False)
    before = len(es_cluster.standin.requests) if es_cluster.standin else 0

    steps = plan(es_cluster)
    outcomes = run(steps)

    assert outcomes == {
        writer: Result("skipped", reason=f"write index of alias [{alias('logs')}]"),
        solo: Result("skipped", reason=f"write index of alias [{alias('solo')}]"),
        **dict.fromkeys([reader, *pair, spread, switched_off], Result("done")),
    }
    assert es_cluster.existing() == {writer, solo, archive}
    if es_cluster.standin is not None:
        sent = [
            r.line.split("?")[0]
            for r in es_cluster.standin.requests[before:]
            if f"*{es_cluster.prefix}*" not in r.target  # the test's own existing() call
        ]
        assert sent[1] == f"GET /_alias/{alias('solo')},{alias('spread')}"
        assert [line.split(" ")[0] for line in sent] == ["GET", "GET", "DELETE"]


def test_indices_an_ilm_policy_manages_are_left_to_it(es_cluster: Cluster) -> None:
    """index.lifecycle.name set: skipped naming the policy, however old; the others go."""
    policy = f"{es_cluster.prefix}-logs-policy"
    managed = es_cluster.create_index(
        es_cluster.name("vector", "managed.2026.10.01"), NOW - 30 * DAY, lifecycle=policy
    )
    unmanaged = es_cluster.create_index(
        es_cluster.name("vector", "unmanaged.2026.10.01"), NOW - 30 * DAY
    )

    outcomes = run(plan(es_cluster))

    assert outcomes == {
        managed: Result("skipped", reason=f"managed by ILM policy [{policy}]"),
        unmanaged: Result("done"),
    }
    assert es_cluster.existing() == {managed}


@pytest.mark.parametrize("wildcard", [False, True], ids=["by-name", "by-dot-pattern"])
def test_a_hidden_data_stream_named_with_a_leading_dot_gives_up_its_old_backing_indices(
    es_cluster: Cluster, wildcard: bool
) -> None:
    """Issue 10: a pattern may name a hidden data stream (.logs-airflow): its old backing
    indices go, its write index stays; a hidden dot index the same pattern reaches stays,
    as every other hidden or system index does."""
    stream = f".{es_cluster.prefix}-logs-airflow"
    *older, write = es_cluster.create_data_stream(stream, generations=3, hidden=True)
    stray = es_cluster.create_index(f".{es_cluster.prefix}-logs-stray", NOW - 30 * DAY, hidden=True)
    later = datetime.now(UTC) + 40 * DAY
    pattern = f".{es_cluster.prefix}-logs-*" if wildcard else stream

    outcomes = run(plan(es_cluster, later, patterns=[pattern]))

    expected = {
        **dict.fromkeys(older, Result("done")),
        write: Result("skipped", reason=f"write index of data stream [{stream}]"),
    }
    if wildcard:
        expected[stray] = Result("skipped", reason="system or hidden index (name starts with '.')")
    assert outcomes == expected
    assert es_cluster.backing_indices(stream) == [write]
    assert es_cluster.existing() == {write, stray}


def test_a_system_data_stream_is_never_swept(es_cluster: Cluster) -> None:
    """A data stream Elasticsearch owns keeps all its backing indices, named by a pattern or
    not."""
    standin_only()
    assert es_cluster.standin is not None
    stream = es_cluster.name("vector", "system")
    *older, write = es_cluster.create_data_stream(stream, generations=2)
    es_cluster.standin.mark_system(stream)

    outcomes = run(plan(es_cluster, datetime.now(UTC) + 40 * DAY))

    assert outcomes == {
        older[0]: Result("skipped", reason=f"backing index of system data stream [{stream}]"),
        write: Result("skipped", reason=f"write index of data stream [{stream}]"),
    }


def test_a_sweep_costs_one_request_per_read_and_per_full_delete_line() -> None:
    """With a hidden data stream, an alias to count and 400 long names past the window, the
    whole sweep (version check included) sends 1 + ⌈names / 4 KB⌉ + 3 requests."""
    standin_only()
    with running_standin() as standin:
        admin = Cluster(standin.url, Elasticsearch(standin.url), "bench", standin)
        names = [f"fluentd.quasar-{i:04d}-{'x' * 30}.2026.10.01" for i in range(400)]
        for name in names:
            standin.add_index(name, NOW - 30 * DAY)
        admin.add_alias(names[0], "all-logs")
        admin.add_alias("fluentd.quasar-0001-" + "x" * 30 + ".2026.10.01", "all-logs")
        admin.add_alias(names[2], "archive-logs")
        admin.create_index("archive", NOW - 30 * DAY)
        admin.add_alias("archive", "archive-logs")
        admin.create_data_stream(".logs-airflow", generations=2, hidden=True)
        retention = LogRetention(("fluentd.*", ".logs-airflow"), retention_days=15)
        before = len(standin.requests)

        steps = sweeper(lambda: connect(standin.url), standin.url, retention, NOW).plan()
        outcomes = run(steps)

        sent = [r.line for r in standin.requests[before:]]
        names_bytes = len(",".join(names))
        assert {r.outcome for r in outcomes.values()} == {"done"}
        assert len(sent) <= 1 + math.ceil(names_bytes / MAX_REQUEST_LINE) + 3
        assert [line.split(" ")[1].split("?")[0] for line in sent[:4]] == [
            "/",
            "/fluentd.*,.logs-airflow",
            "/_data_stream/fluentd.*,.logs-airflow*",
            "/_alias/archive-logs",
        ]
        assert len(sent) == 4 + len([s for s in steps if s.run is not None])


def test_batches_fill_the_request_line_and_never_overflow_it() -> None:
    """1,000 long, partly non-ASCII names: as few DELETEs as 4 KB lines allow, none refused."""
    standin_only()
    with running_standin() as standin:
        names = [
            f"fluentd.quasar-{i:04d}-{'é' if i % 3 else 'e'}-{'x' * (i % 40)}.2026.10.01"
            for i in range(1000)
        ]
        for name in names:
            standin.add_index(name, NOW - 30 * DAY)
        es = connect(standin.url)

        steps = plan_pattern(es, "fluentd.*")
        outcomes = run(steps)

        deletes = request_lines(standin, "DELETE")
        assert {r.outcome for r in outcomes.values()} == {"done"}
        assert standin.index_names() == set()
        assert len(deletes) == len(steps) > 1
        # CRLF counted, for Netty releases that counted the CR against the limit.
        assert max(len(line) for line in deletes) <= MAX_REQUEST_LINE - 2
        for line, following in itertools.pairwise(deletes):
            next_name = following.split(" ")[1].lstrip("/").split(",")[0]
            assert len(line) + 1 + len(next_name) > MAX_REQUEST_LINE - 2, "batch was not full"


def test_batches_are_independent_and_may_run_concurrently() -> None:
    """The runner's workers may send every batch at once: each settles its own indices."""
    standin_only()
    with running_standin() as standin:
        for i in range(600):
            standin.add_index(f"vector.release-{i:04d}.2026.10.01", NOW - 30 * DAY)
        steps = plan_pattern(connect(standin.url), "vector.*")

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(lambda s: s.run() if s.run else [], steps))

        assert len(steps) > 1
        assert all(r == Result("done") for batch in results for r in batch)
        assert standin.index_names() == set()


def test_a_429_is_retried_and_the_batch_still_goes() -> None:
    """Elasticsearch pushing back once (429) costs a retry, not a failed index."""
    standin_only()
    with running_standin() as standin:
        standin.add_index("fluentd.quasar.2026.10.01", NOW - 30 * DAY)
        steps = plan_pattern(connect(standin.url), "fluentd.*")
        standin.fail_next("DELETE", 429)

        outcomes = run(steps)

        assert outcomes == {"fluentd.quasar.2026.10.01": Result("done")}
        assert len(request_lines(standin, "DELETE")) == 2


def test_a_batch_failing_after_its_retries_is_failed_with_the_server_error() -> None:
    """503 on every attempt: each index of the batch is failed, with Elasticsearch's reason."""
    standin_only()
    with running_standin() as standin:
        standin.add_index("fluentd.quasar.2026.10.01", NOW - 30 * DAY)
        es = connect_elasticsearch(
            standin.url, username=None, password=None, api_key=None, ca_bundle=None, retries=1
        )
        steps = plan_pattern(es, "fluentd.*")
        standin.fail_next("DELETE", 503, times=2)

        outcomes = run(steps)

        result = outcomes["fluentd.quasar.2026.10.01"]
        assert result.outcome == "failed"
        assert result.error == (
            "HTTP 503 unavailable_shards_exception: rejected by the stand-in's fault injection"
        )
        assert standin.index_names() == {"fluentd.quasar.2026.10.01"}


def test_a_429_asking_for_an_hour_fails_the_batch_at_once() -> None:
    """Retry-After: 3600 on the DELETE is past the retry budget: one request, no hour-long
    sleep; the batch is failed with the 429 and the wait asked for, and the index stays."""
    standin_only()
    with running_standin() as standin:
        standin.add_index("fluentd.quasar.2026.10.01", NOW - 30 * DAY)
        steps = plan_pattern(connect(standin.url), "fluentd.*")
        standin.fail_next("DELETE", 429, times=5, retry_after="3600")

        outcomes = finishes(lambda: run(steps))

        result = outcomes["fluentd.quasar.2026.10.01"]
        assert result.outcome == "failed"
        assert result.error == (
            "HTTP 429 es_rejected_execution_exception: rejected by the stand-in's fault "
            "injection (Retry-After: 3600)"
        )
        assert len(request_lines(standin, "DELETE")) == 1
        assert standin.index_names() == {"fluentd.quasar.2026.10.01"}


def test_elasticsearch_9_is_swept_through_rest_compatibility() -> None:
    """An ES 9 server answers the 8.x client's compatible-with=8 requests; deletes work."""
    standin_only()
    with running_standin(version="9.1.0") as standin:
        standin.add_index("vector.quasar.2026.10.01", NOW - 30 * DAY)
        es = connect(standin.url)

        version = verify_elasticsearch(es, standin.url)
        outcomes = run(plan_pattern(es, "vector.*"))

        assert version == "9.1.0"
        assert outcomes == {"vector.quasar.2026.10.01": Result("done")}


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"product_header": False}, "is not Elasticsearch"),
        ({"version": "7.17.25"}, "refused an Elasticsearch 8 client's request"),
        ({"version": "10.0.0"}, "refused an Elasticsearch 8 client's request"),
    ],
)
def test_a_server_that_is_no_supported_elasticsearch_is_a_configuration_error(
    options: dict[str, Any], expected: str
) -> None:
    """Forks and unsupported versions stop the run before anything is deleted (exit 2)."""
    standin_only()
    with running_standin(**options) as standin:
        standin.add_index("fluentd.quasar.2026.10.01", NOW - 30 * DAY)
        url = standin.url.replace("http://", "http://janitor:hunter2@")
        es = connect_elasticsearch(url, username=None, password=None, api_key=None, ca_bundle=None)

        with pytest.raises(ConfigurationError) as refused:
            verify_elasticsearch(es, url)

        assert expected in str(refused.value)
        assert f"JANITOR_ELASTICSEARCH_URL={standin.url}" in str(refused.value)
        assert "hunter2" not in str(refused.value)
        assert standin.index_names() == {"fluentd.quasar.2026.10.01"}


def test_basic_auth_and_api_keys_log_in_and_a_wrong_password_is_a_configuration_error() -> None:
    """JANITOR_ELASTICSEARCH_USERNAME/_PASSWORD and _API_KEY both work; bad ones exit 2."""
    standin_only()
    grants = Grants(frozenset({"monitor"}))
    with running_standin(
        users={"janitor": ("s3cret", grants)}, api_keys={"aWQ6a2V5": ("janitor", grants)}
    ) as standin:
        by_password = connect_elasticsearch(
            standin.url, username="janitor", password="s3cret", api_key=None, ca_bundle=None
        )
        by_key = connect_elasticsearch(
            standin.url, username=None, password=None, api_key="aWQ6a2V5", ca_bundle=None
        )
        wrong = connect_elasticsearch(
            standin.url, username="janitor", password="wrong", api_key=None, ca_bundle=None
        )

        assert verify_elasticsearch(by_password, standin.url) == "8.19.0"
        assert verify_elasticsearch(by_key, standin.url) == "8.19.0"
        with pytest.raises(ConfigurationError) as rejected:
            verify_elasticsearch(wrong, standin.url)
        assert "rejected the credentials" in str(rejected.value)
        assert "wrong" not in str(rejected.value)


def test_a_ca_bundle_lets_the_janitor_trust_a_private_ca(tls: Tls) -> None:
    """JANITOR_ELASTICSEARCH_CA_BUNDLE: trusted with it, a configuration error without it."""
    standin_only()
    with running_standin(tls=tls) as standin:
        trusted = connect_elasticsearch(
            standin.url, username=None, password=None, api_key=None, ca_bundle=tls.ca, retries=0
        )
        untrusted = connect_elasticsearch(
            standin.url, username=None, password=None, api_key=None, ca_bundle=None, retries=0
        )

        assert verify_elasticsearch(trusted, standin.url) == "8.19.0"
        with pytest.raises(ConfigurationError, match="CERTIFICATE_VERIFY_FAILED"):
            verify_elasticsearch(untrusted, standin.url)


def test_https_to_a_plain_http_elasticsearch_says_to_use_http() -> None:
    """JANITOR_ELASTICSEARCH_URL=https://… for a server speaking plain HTTP: a configuration
    error saying to use http://, not to set a CA bundle."""
    standin_only()
    with running_standin() as standin:
        url = standin.url.replace("http://", "https://")

        with pytest.raises(ConfigurationError) as refused:
            verify_elasticsearch(connect(url), url)

        assert str(refused.value) == (
            f"JANITOR_ELASTICSEARCH_URL={url}: the server at {url} speaks plain HTTP, not TLS: "
            "use http:// in JANITOR_ELASTICSEARCH_URL"
        )


def test_an_unreachable_elasticsearch_is_worded_like_every_remote() -> None:
    """Nothing listening: the error names the server, the request and the refused
    connection, in the words the registry and Prometheus errors use."""
    url = f"http://127.0.0.1:{free_port()}"
    es = connect_elasticsearch(
        url, username=None, password=None, api_key=None, ca_bundle=None, retries=0
    )

    with pytest.raises(TransportError) as unreachable:
        verify_elasticsearch(es, url)

    assert describe(unreachable.value) == (
        f"cannot reach {url} (GET /): Failed to establish a new connection: "
        "[Errno 111] Connection refused"
    )


def test_a_ca_bundle_with_a_plain_http_url_is_a_configuration_error(tmp_path: Path) -> None:
    """A CA bundle only makes sense for https: said when settings load."""
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not used")
    environ = {
        "JANITOR_ELASTICSEARCH_URL": "http://127.0.0.1:9200",
        "JANITOR_ELASTICSEARCH_CA_BUNDLE": str(bundle),
    }
    with pytest.raises(ConfigurationError, match="needs an https://"):
        load_settings({}, environ)


def test_check_names_the_missing_privileges() -> None:
    """janitor check: monitor, and view_index_metadata + delete_index on each pattern."""
    standin_only()
    partial = Grants(
        frozenset({"monitor"}),
        ((("fluentd.*",), frozenset({"view_index_metadata"})),),
    )
    full = Grants(frozenset({"manage"}), ((("*",), frozenset({"all"})),))
    with running_standin(users={"partial": ("pw", partial), "full": ("pw", full)}) as standin:
        lacking = connect_elasticsearch(
            standin.url, username="partial", password="pw", api_key=None, ca_bundle=None
        )
        enough = connect_elasticsearch(
            standin.url, username="full", password="pw", api_key=None, ca_bundle=None
        )

        assert check_elasticsearch(lacking, ["fluentd.*", "vector.*"]) == [
            "partial lacks delete_index on indices 'fluentd.*'",
            "partial lacks view_index_metadata, delete_index on indices 'vector.*'",
        ]
        assert check_elasticsearch(enough, ["fluentd.*", "vector.*"]) == []


def test_check_without_security_finds_nothing_missing(es_cluster: Cluster) -> None:
    """A cluster without security has no privileges to miss; with security, ours suffice."""
    assert check_elasticsearch(es_cluster.connect(), es_cluster.patterns) == []


def test_a_timestring_with_an_unsupported_directive_is_a_configuration_error() -> None:
    """%U (week number) cannot be read back into a date: refused up front."""
    with pytest.raises(ValueError, match="unsupported directive %U"):
        name_date_pattern("%Y.%U")


@pytest.mark.parametrize(
    "timestring",
    ["", "%d", "%H", "%m.%d", "%Y.%m", "%Y", "%y.%d", "%d.%m.%H", "latest", "%Y.%m.%d.%j"],
)
def test_a_timestring_that_names_no_calendar_day_is_a_configuration_error(
    timestring: str,
) -> None:
    """Without a year and a day, strptime reads 1900-01-01 and every index looked 46,353
    days old (issue 17): refused (the settings loader names JANITOR_LOG_TIMESTRING)."""
    with pytest.raises(ValueError, match="must name a calendar day"):
        name_date_pattern(timestring)


@pytest.mark.parametrize("timestring", ["%Y.%m.%d.%Y", "%Y.%m.%d.%d", "%H.%Y.%m.%d.%H"])
def test_a_directive_given_twice_is_a_configuration_error(timestring: str) -> None:
    """strptime cannot read a repeated directive (re.error mid-run): refused up front."""
    with pytest.raises(ValueError, match="appears twice"):
        name_date_pattern(timestring)


@pytest.mark.parametrize(
    ("timestring", "suffix"),
    [
        ("%Y.%m.%d", "2026.11.01"),
        ("%Y.%j", "2026.305"),
        ("%y.%m.%d", "26.11.01"),
        ("%Y%m%d", "20261101"),
        ("%d-%m-%Y", "01-11-2026"),
        ("%Y.%m.%d.%H", "2026.11.01.00"),
        ("%Y.%m.%d%%", "2026.11.01%"),
    ],
)
def test_every_way_of_naming_a_day_reads_the_same_date(
    es_cluster: Cluster, timestring: str, suffix: str
) -> None:
    """Month and day, or day of the year, with a 4- or 2-digit year: 2026-11-01 is 19 days
    before NOW whichever timestring names it."""
    index = es_cluster.create_index(es_cluster.name("fluentd", f"quasar-1234.{suffix}"))

    steps = plan(es_cluster, age_source="name", timestring=timestring)

    assert planned(steps) == {index: ("planned", 19)}


def test_the_date_nearest_the_end_of_the_name_wins(es_cluster: Cluster) -> None:
    """quasar-1234.26.11.01 with %y.%m.%d is 2026-11-01, not "34.26.11" misread from the
    release name's digits (which left such indices undated for ever)."""
    index = es_cluster.create_index(es_cluster.name("fluentd", "quasar-1234.26.11.01"))

    steps = plan(es_cluster, age_source="name", timestring="%y.%m.%d")

    assert planned(steps) == {index: ("planned", 19)}


def test_a_name_date_before_1970_is_skipped_and_a_future_one_is_young(
    es_cluster: Cluster,
) -> None:
    """A name date no log index can have never makes it look old: before the epoch it is
    skipped with the date as reason; in the future the index is simply young."""
    ancient = es_cluster.create_index(es_cluster.name("fluentd", "a.1900.01.01"))
    sixties = es_cluster.create_index(es_cluster.name("fluentd", "b.1969.12.31"))
    future = es_cluster.create_index(es_cluster.name("fluentd", "c.2999.01.01"), NOW - 90 * DAY)
    old = es_cluster.create_index(es_cluster.name("fluentd", "d.2026.10.01"))

    outcomes = run(plan(es_cluster, age_source="name"))

    assert outcomes == {
        ancient: Result("skipped", reason="date '1900.01.01' in the index name is before 1970"),
        sixties: Result("skipped", reason="date '1969.12.31' in the index name is before 1970"),
        old: Result("done"),
    }
    assert es_cluster.existing() == {ancient, sixties, future}


def test_an_unreadable_creation_date_fails_that_index_alone(es_cluster: Cluster) -> None:
    """A creation date that is no epoch-milliseconds number (from a rewriting proxy, say)
    fails its own index with the value named; the other old index still goes (issue 17:
    one ValueError aborted the whole plan)."""
    standin_only()
    assert es_cluster.standin is not None
    bad = {
        es_cluster.create_index(es_cluster.name("fluentd", "a"), NOW - 40 * DAY): "2026-10-01",
        es_cluster.create_index(es_cluster.name("fluentd", "b"), NOW - 40 * DAY): "9" * 20,
        es_cluster.create_index(es_cluster.name("fluentd", "c"), NOW - 40 * DAY): "9" * 15,
        es_cluster.create_index(es_cluster.name("fluentd", "d"), NOW - 40 * DAY): "-1",
    }
    for name, shown in bad.items():
        es_cluster.standin.mangle_creation_date(name, shown)
    good = es_cluster.create_index(es_cluster.name("vector", "e"), NOW - 40 * DAY)

    outcomes = run(plan(es_cluster))

    assert outcomes == {
        name: Result(
            "failed",
            error=f"index [{name}]: index.creation_date {shown!r} is not epoch milliseconds",
        )
        for name, shown in bad.items()
    } | {good: Result("done")}
    assert es_cluster.existing() == set(bad)


def connect(url: str) -> Any:
    return connect_elasticsearch(url, username=None, password=None, api_key=None, ca_bundle=None)
