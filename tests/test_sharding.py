"""Sharding (README "Sharding", issue 12): `--shard I/N` splits the deployments between the
pods of an Indexed Job by a stable hash of the release name; logs, metrics and backup
retention run on shard 0 only; a run lock and a Lease per shard; one Pushgateway group per
shard. On the real PostgreSQL, Elasticsearch stand-in, Prometheus and Pushgateway."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kubernetes import client

from janitor.cli import main
from janitor.config import load_settings
from janitor.houston import try_run_lock
from janitor.naming import RELEASE_NAME
from janitor.sharding import MAX_SHARDS, Shard, shard_of
from tests.conftest import Houston, existing_databases, janitor
from tests.es_standin import Cluster, es_cluster  # noqa: F401 - pytest fixture
from tests.k8s_api_server import ApiState
from tests.prometheus_server import running_prometheus
from tests.pushgateway_server import Pushgateway, running_pushgateway
from tests.test_adopt_orphans import age, records_of
from tests.test_audit import orphan
from tests.test_run_in_cluster import NAMESPACE, run_in_cluster
from tests.test_run_logs import log_env

ROOT = Path(__file__).resolve().parent.parent
WAIT_S = 60.0


@settings(max_examples=300, derandomize=True, deadline=None)
@given(
    fleet=st.lists(
        st.from_regex(RELEASE_NAME, fullmatch=True) | st.text(max_size=80), max_size=200
    ),
    shards=st.integers(1, MAX_SHARDS),
)
def test_the_shards_partition_any_fleet_exactly(fleet: list[str], shards: int) -> None:
    """Whatever the release names (valid, odd, empty, repeated) and whatever n in 1..64,
    each release falls in exactly one of the n shards and together they hold the fleet."""
    parts = [{r for r in fleet if Shard(i, shards).owns(r)} for i in range(shards)]

    assert set().union(*parts) == set(fleet)
    assert sum(len(part) for part in parts) == len(set(fleet))


def test_a_release_lands_in_the_same_shard_in_every_process() -> None:
    """The shard is sha256 of the UTF-8 name, first 8 bytes big-endian, mod n: values worked
    out with `sha256sum`, and the same in a process with another string hash seed."""
    # printf quasar-1234 | sha256sum → 859915425347ff4a…; printf '' | sha256sum → e3b0c442…
    assert [shard_of("quasar-1234", n) for n in (3, 7, 64)] == [1, 0, 10]
    assert [shard_of("", n) for n in (3, 7, 64)] == [1, 1, 20]
    program = "from janitor.sharding import shard_of; print(shard_of('nova-42', 7))"
    other = subprocess.run(
        [sys.executable, "-c", program],
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert other.stdout.strip() == str(shard_of("nova-42", 7)) == "3"


def test_the_shard_comes_from_the_flag_the_environment_the_file_or_the_indexed_job(
    tmp_path: Path,
) -> None:
    """--shard wins over JANITOR_SHARD, which wins over the YAML file; with JANITOR_SHARDS
    and no shard given, Kubernetes' JOB_COMPLETION_INDEX is the index; a given shard wins
    over the count; JOB_COMPLETION_INDEX alone (an unsharded Indexed Job) changes nothing."""
    config = tmp_path / "janitor.yaml"
    config.write_text("shard: 0/4\n")
    indexed = {"JANITOR_SHARDS": "3", "JOB_COMPLETION_INDEX": "2"}

    def shard(flags: dict[str, Any], env: dict[str, str], file: Path | None = None) -> str:
        return str(load_settings(flags, env, file).shard)

    assert shard({}, {}) == "0/1"
    assert shard({}, {}, config) == "0/4"
    assert shard({}, {"JANITOR_SHARD": "3/4"}, config) == "3/4"
    assert shard({"shard": "1/2"}, {"JANITOR_SHARD": "3/4"}, config) == "1/2"
    assert shard({}, indexed) == "2/3"
    assert shard({"shard": "0/1"}, indexed) == "0/1"
    assert shard({}, {"JOB_COMPLETION_INDEX": "5"}) == "0/1"
    summary = load_settings({}, indexed).summary()
    assert (summary["shard"], summary["shards"]) == ("2/3", 3)


@pytest.mark.parametrize(
    ("args", "env", "complaint"),
    [
        (["--shard", "3/3"], {}, "--shard='3/3' (command line): must be INDEX/COUNT"),
        (["--shard", "1/65"], {}, "--shard='1/65' (command line): must be INDEX/COUNT"),
        (["--shard", "0/0"], {}, "--shard='0/0' (command line)"),
        (["--shard=-1/3"], {}, "--shard='-1/3' (command line)"),
        (["--shard", "1 / 3"], {}, "--shard='1 / 3' (command line)"),
        ([], {"JANITOR_SHARD": "1/3\n"}, r"JANITOR_SHARD='1/3\n' (environment)"),
        ([], {"JANITOR_SHARD": "\u0661/3"}, "JANITOR_SHARD='\u0661/3' (environment)"),
        ([], {"JANITOR_SHARD": "one of three"}, "JANITOR_SHARD='one of three' (environment)"),
        ([], {"JANITOR_SHARDS": "0"}, "JANITOR_SHARDS='0' (environment): must be a whole"),
        ([], {"JANITOR_SHARDS": "65"}, "JANITOR_SHARDS='65' (environment): must be at most 64"),
        ([], {"JANITOR_SHARDS": "2.5"}, "JANITOR_SHARDS='2.5' (environment): must be a whole"),
        (
            [],
            {"JANITOR_SHARDS": "3"},
            "JANITOR_SHARDS=3 needs the shard's index: run it in an Indexed Job (Kubernetes "
            "sets JOB_COMPLETION_INDEX) or pass --shard INDEX/3",
        ),
        (
            [],
            {"JANITOR_SHARDS": "3", "JOB_COMPLETION_INDEX": "3"},
            "JOB_COMPLETION_INDEX/JANITOR_SHARDS='3/3' (environment): must be INDEX/COUNT "
            "with 0 <= INDEX < COUNT <= 64, e.g. 0/3",
        ),
    ],
)
def test_a_bad_shard_is_a_plain_configuration_error(
    args: list[str], env: dict[str, str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A shard out of range or not INDEX/COUNT: one plain stderr line naming the setting
    and the value, exit 2, no events, nothing touched."""
    code = main(["plan", *args], environ={"JANITOR_PROMETHEUS_URL": "http://127.0.0.1:1", **env})

    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert err.startswith("janitor: invalid configuration: ")
    assert complaint in err
    assert err.count("\n") == 1


def fleet_of_shards(houston: Houston, shards: int, each: int) -> dict[int, list[str]]:
    """``each`` expired deployments (database, roles, row) in every one of ``shards``."""
    found: dict[int, list[str]] = {i: [] for i in range(shards)}
    for i in count():
        name = f"d{i}"
        part = found[shard_of(houston.release(name), shards)]
        if len(part) < each:
            part.append(houston.deployment(name, deleted_days_ago=20))
        if all(len(p) == each for p in found.values()):
            return found
    raise AssertionError("unreachable")


def database_of(release: str) -> str:
    return f"{release.replace('-', '_')}_airflow"


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "janitor", *args, "--log-format", "json"],
        cwd=ROOT,
        env={**env, "PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def finish(process: subprocess.Popen[bytes]) -> tuple[int, list[dict[str, Any]]]:
    out, err = process.communicate(timeout=WAIT_S)
    events = [json.loads(line) for line in out.decode().splitlines()]
    assert events, err.decode()
    assert events[-1]["event"] == "run.finished", err.decode()
    return process.returncode, events


def waiting_on_a_row_lock(houston: Houston) -> bool:
    """Whether a session of this Houston database waits for a lock (the janitor's row lock)."""
    with psycopg.connect(houston.dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
            " WHERE NOT l.granted AND a.datname = current_database()"
        ).fetchone()
    return bool(row and row[0])


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus keeping the 15 days the janitor expects by default."""
    workdir = tmp_path_factory.mktemp("shards") / "prometheus"
    with running_prometheus(workdir, "--storage.tsdb.retention.time=15d") as url:
        yield url


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pushgateway]:
    with running_pushgateway(tmp_path_factory.mktemp("shards") / "gateway") as running:
        yield running


def test_three_shards_sweep_every_deployment_exactly_once_and_the_fleet_work_once(
    houston: Houston,
    env: dict[str, str],
    es_cluster: Cluster,  # noqa: F811 - the imported fixture
    prometheus: str,
    gateway: Pushgateway,
) -> None:
    """An operator splits 12 expired deployments over 3 shards. Each `plan --shard i/3`
    shows exactly its own deployments. Shard 1 runs first and waits on a row an operator
    holds; meanwhile a second run of shard 1 is skipped (the shard's lock) while shard 2
    runs through (no shared lock). Then shard 0 runs, the only one to delete the old log
    index and check Prometheus. In the end every deployment was purged exactly once, every
    database is gone, and the Pushgateway holds one group per shard."""
    fleet = fleet_of_shards(houston, 3, 4)
    old_index = es_cluster.create_index(
        es_cluster.name("fluentd", "old"), datetime.now(UTC) - timedelta(days=20)
    )
    env |= log_env(es_cluster) | {
        "JANITOR_PROMETHEUS_URL": prometheus,
        "JANITOR_PUSHGATEWAY_URL": gateway.url,
        "JANITOR_LOCK_TIMEOUT_SECONDS": "30",
    }
    for i, releases in fleet.items():
        plan = janitor(["plan", "--shard", f"{i}/3"], env)
        assert plan.code == 0, plan.events
        assert set(plan.outcomes("deployment.purge")) == set(releases)
        assert plan.of("run.started")[0]["shard"] == f"{i}/3"

    held = fleet[1][0]
    operator = psycopg.connect(houston.dsn)
    operator.execute(
        'SELECT 1 FROM "houston$default"."Deployment" WHERE "releaseName" = %s FOR UPDATE',
        (held,),
    )
    try:
        first = spawn(["run", "--shard", "1/3"], env)
        deadline = time.monotonic() + WAIT_S
        while not waiting_on_a_row_lock(houston):
            assert time.monotonic() < deadline, "shard 1 never waited on the held row"
            assert first.poll() is None, "shard 1 ended without waiting on the held row"
            time.sleep(0.1)
        same = spawn(["run", "--shard", "1/3"], env)
        other = spawn(["run", "--shard", "2/3"], env)
        same_code, same_events = finish(same)
        other_code, other_events = finish(other)
        assert first.poll() is None, "shard 1 finished while its row was held"
    finally:
        operator.rollback()
        operator.close()
    first_code, first_events = finish(first)
    zero = janitor(["run", "--shard", "0/3"], env)

    runs = [first_events, same_events, other_events, zero.events]
    assert [first_code, same_code, other_code, zero.code] == [0, 0, 0, 0]
    assert [e["event"] for e in same_events] == ["run.started", "run.skipped", "run.finished"]
    assert same_events[1]["reason"] == (
        "another run of shard 1/3 (or an unsharded run) holds the run lock"
    )
    purged = Counter(
        e["target"]
        for events in runs
        for e in events
        if e["event"] == "deployment.purge" and e["outcome"] == "done"
    )
    assert purged == Counter(r for releases in fleet.values() for r in releases)
    assert houston.rows() == {}
    assert existing_databases({database_of(r) for r in purged}) == set()
    started = {e["shard"]: e["subsystems"] for events in runs for e in events[:1]}
    assert started == {
        "0/3": ["databases", "logs", "metrics"],
        "1/3": ["databases"],
        "2/3": ["databases"],
    }
    fleet_work = sorted(
        (e["event"], e["outcome"])
        for events in runs
        for e in events
        if e["event"] in ("logs.index.delete", "metrics.retention.check")
    )
    assert fleet_work == [("logs.index.delete", "done"), ("metrics.retention.check", "ok")]
    assert old_index not in es_cluster.existing()
    pushed = {
        g["labels"]["shard"]: g
        for g in gateway.groups()
        if g["labels"].get("instance") == houston.dbname
    }
    assert set(pushed) == {"0/3", "1/3", "2/3"}
    for group in pushed.values():
        remaining = group["janitor_expired_deployments_remaining"]["metrics"][0]["value"]
        assert float(remaining) == 0


def test_the_run_lock_of_a_shard_keeps_out_that_shard_and_an_unsharded_run_only(
    houston: Houston, env: dict[str, str]
) -> None:
    """While another session holds shard 1/3's run lock, shard 2/3 sweeps its deployments,
    shard 1/3 and an unsharded run are skipped (exit 0, rows kept); once it lets go,
    shard 1/3 runs."""
    fleet = fleet_of_shards(houston, 3, 1)
    with psycopg.connect(houston.dsn, autocommit=True) as holder:
        assert try_run_lock(holder, Shard(1, 3))
        other = janitor(["run", "--shard", "2/3"], env)
        same = janitor(["run", "--shard", "1/3"], env)
        whole = janitor(["run"], env)

    assert (other.code, same.code, whole.code) == (0, 0, 0)
    assert other.outcomes("deployment.purge") == {fleet[2][0]: "done"}
    assert same.of("run.skipped")
    assert whole.of("run.skipped")
    assert set(houston.rows()) == {fleet[0][0], fleet[1][0]}
    after = janitor(["run", "--shard", "1/3"], env)
    assert after.outcomes("deployment.purge") == {fleet[1][0]: "done"}


def test_each_shard_holds_its_own_lease(
    houston: Houston, env: dict[str, str], api: tuple[client.ApiClient, ApiState]
) -> None:
    """In a cluster, another pod holds shard 1/3's Lease: shard 2/3 takes and releases
    astro-janitor-shard-2-of-3 and sweeps its deployment; shard 1/3 is skipped, naming its
    Lease; the unsharded Lease is never touched."""
    api_client, state = api
    fleet = fleet_of_shards(houston, 3, 1)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    holder = {
        "holderIdentity": "astro-janitor-1-xyz",
        "leaseDurationSeconds": 600,
        "acquireTime": now,
        "renewTime": now,
        "leaseTransitions": 0,
    }
    with state.lock:
        state.put_lease(NAMESPACE, "astro-janitor-shard-1-of-3", holder)

    other_code, other_text = run_in_cluster(env | {"JANITOR_SHARD": "2/3"}, api_client)
    same_code, same_text = run_in_cluster(env | {"JANITOR_SHARD": "1/3"}, api_client)

    assert (other_code, same_code) == (0, 0)
    assert '"run.skipped"' not in other_text
    assert "another run holds the lease astronomer/astro-janitor-shard-1-of-3" in same_text
    assert set(houston.rows()) == {fleet[0][0], fleet[1][0]}
    with state.lock:
        leases = dict(state.leases)
    assert set(leases) == {
        (NAMESPACE, "astro-janitor-shard-1-of-3"),
        (NAMESPACE, "astro-janitor-shard-2-of-3"),
    }
    assert leases[(NAMESPACE, "astro-janitor-shard-2-of-3")]["spec"].get("holderIdentity") in (
        None,
        "",
    )


def test_each_shard_adopts_only_the_orphans_of_its_releases(
    houston: Houston, env: dict[str, str]
) -> None:
    """Two orphans, one per shard of 2: each shard records only its own orphan's names
    without forgetting the other's; past the grace period each shard sweeps only its own."""
    ghosts: dict[int, str] = {}
    for i in count():
        shard = shard_of(houston.release(f"ghost{i}"), 2)
        if shard not in ghosts:
            ghosts[shard] = orphan(houston, f"ghost{i}")
        if len(ghosts) == 2:
            break
    env["JANITOR_ADOPT_ORPHANS"] = "true"

    for i in (0, 1):
        assert janitor(["run", "--shard", f"{i}/2"], env).code == 0
        assert records_of(houston, ghosts[i]) != {}
    assert records_of(houston, ghosts[0]) != {}
    for ghost in ghosts.values():
        age(houston, ghost, "30 days")

    one = janitor(["run", "--shard", "1/2"], env)

    assert one.code == 0, one.events
    assert one.outcomes("database.drop") == {database_of(ghosts[1]): "done"}
    assert existing_databases({database_of(ghosts[0])}) == {database_of(ghosts[0])}
    zero = janitor(["run", "--shard", "0/2"], env)
    assert zero.outcomes("database.drop") == {database_of(ghosts[0]): "done"}
