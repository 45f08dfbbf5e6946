"""The console view (README "Console view"): what an operator at a terminal sees of a plan
and a run, rendered from the same events as the JSON lines, and the progress on stderr."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from janitor.cli import main
from janitor.naming import reaching_pattern
from tests.conftest import Houston
from tests.es_standin import Cluster, es_cluster, standin_only  # noqa: F401 - pytest fixture
from tests.loopback import free_port
from tests.prometheus_server import running_prometheus
from tests.registry_server import Registry, registry  # noqa: F401 - pytest fixture

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Fleet:
    """A seeded platform and how to read the janitor's console output of it."""

    env: dict[str, str]
    replacements: tuple[tuple[str, str], ...]

    def console(self, *args: str) -> tuple[int, str]:
        """Runs the janitor with ``--log-format console``; its exit code and its stdout with
        the names unique to this test replaced by fixed ones."""
        out = io.StringIO()
        code = main([*args, "--log-format", "console"], environ=self.env, stdout=out)
        text = out.getvalue()
        for unique, fixed in self.replacements:
            text = text.replace(unique, fixed)
        return code, text


@pytest.fixture
def fleet(
    houston: Houston,
    registry: Registry,  # noqa: F811 - the imported fixture
    es_cluster: Cluster,  # noqa: F811 - the imported fixture
    tmp_path: Path,
) -> Iterator[Fleet]:
    """Two expired deployments (one half-cleaned by a crash), an expired row with an
    invalid name, a recently deleted and a live one; their images; daily log indices and one
    an ILM policy manages; a Prometheus keeping 30 days where 15 are configured."""
    old = houston.deployment("old", deleted_days_ago=20)
    half = houston.deployment("half", deleted_days_ago=30, database=False)
    houston.deployment("recent", deleted_days_ago=3)
    houston.deployment("live")
    houston.add("Bad_Name", 25)
    pusher = registry.pusher()
    image = pusher.image(f"{old}/airflow", "deploy-1")
    pusher.put_manifest(f"{old}/airflow", "latest", image)
    pusher.index(f"{old}/airflow", "deploy-2", oci=True)
    pusher.image(f"{half}/airflow", "deploy-1")
    now = datetime.now(UTC)
    for days in (3, 16, 20, 30):
        es_cluster.create_index(
            es_cluster.name("fluentd", f"old.{days}"), now - timedelta(days=days)
        )
    es_cluster.create_index(
        es_cluster.name("vector", "ilm.40"), now - timedelta(days=40), lifecycle="logs-30d"
    )
    with running_prometheus(tmp_path / "prometheus", "--storage.tsdb.retention.time=30d") as url:
        env = {
            "JANITOR_HOUSTON_DSN": houston.dsn,
            "JANITOR_REGISTRY_URL": registry.url,
            "JANITOR_ELASTICSEARCH_URL": es_cluster.url,
            "JANITOR_LOG_INDEX_PATTERNS": ",".join(es_cluster.patterns),
            "JANITOR_PROMETHEUS_URL": url,
        }
        yield Fleet(
            env,
            (
                (houston.dbname, "houston"),
                (houston.prefix, "t1"),
                (es_cluster.prefix, "e1"),
                (registry.url, "http://registry:5000"),
                (es_cluster.url, "http://elasticsearch:9200"),
                (url, "http://prometheus:9090"),
            ),
        )


HEADER = """\
janitor 0.1.0: {kind} of databases, registry, logs, metrics
Settings that differ from the defaults:
  houston_dsn         host=127.0.0.1 port=5432 user=postgres dbname=houston
  registry_url        http://registry:5000
  elasticsearch_url   http://elasticsearch:9200
  log_index_patterns  fluentd.e1-*, vector.e1-*
  prometheus_url      http://prometheus:9090
"""
INVALID_NAME = "invalid release name 'Bad_Name': names must match ^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$"
PROMETHEUS = """\
Prometheus retention
  ! http://prometheus:9090: mismatch (expected 15d, actual 30d)
      ! Prometheus keeps 30d, configured 15d: set the Prometheus retention time to 15d
"""
# What the plan and the first run show of the fleet: the same, but for the outcome of
# everything that goes ("planned" in the plan, "done" in the run).
SWEPT = """\
Expired deployments: 3
  ~ Bad_Name
      ~ row  skipped: {invalid}
  - t1-half
      = database  t1_half_airflow: absent
      - roles     t1_half_airflow, t1_half_celery: {outcome}
      - tags      1 in t1-half/airflow: {outcome}
      - row       {outcome}
  - t1-old
      - database  t1_old_airflow: {outcome}
      - roles     t1_old_airflow, t1_old_celery: {outcome}
      - tags      3 in t1-old/airflow: {outcome}
      - row       {outcome}

Log indices older than 15 days
  - fluentd.e1-*  3 indices, 16 to 30 days old: {outcome}
  ~ vector.e1-*   1 index, 40 days old: skipped
      ~ managed by ILM policy [logs-30d]

{prometheus}
Totals
  {outcome:<8}  1 database, 4 roles, 4 tags, 2 rows, 3 log indices
  absent    1 database
  mismatch  1 retention check
  skipped   1 row, 1 log index

Exit code 3: no failures, but the Prometheus retention does not match
"""
PLAN = (
    HEADER.format(kind="plan (dry run: nothing is changed)")
    + """\
  dry_run             true
  log_format          console

Marks: - to delete, = already gone, ~ skipped, ! failed or mismatch

"""
    + SWEPT.format(outcome="planned", invalid=INVALID_NAME, prometheus=PROMETHEUS)
    + "This was a plan: nothing was changed.\n"
)
RUN = (
    HEADER.format(kind="run")
    + """\
  log_format          console

Marks: - deleted, = already gone, ~ skipped, ! failed or mismatch

"""
    + SWEPT.format(outcome="done", invalid=INVALID_NAME, prometheus=PROMETHEUS)
    + """\
  registry_garbage_collect: registry manifests were deleted: their storage is freed only by \
the registry's offline `registry garbage-collect --delete-untagged` (see docs/registry.md)
"""
)
AGAIN = (
    HEADER.format(kind="run")
    + f"""\
  log_format          console

Marks: - deleted, = already gone, ~ skipped, ! failed or mismatch

Expired deployments: 1
  ~ Bad_Name
      ~ row  skipped: {INVALID_NAME}

Log indices older than 15 days
    fluentd.e1-*  none past the window
  ~ vector.e1-*   1 index, 40 days old: skipped
      ~ managed by ILM policy [logs-30d]

{PROMETHEUS}
Totals
  mismatch  1 retention check
  skipped   1 row, 1 log index

Exit code 3: no failures, but the Prometheus retention does not match
"""
)


def test_plan_run_and_second_run_read_as_a_summary(
    fleet: Fleet, capsys: pytest.CaptureFixture[str]
) -> None:
    """An operator at a terminal sees, for plan, run and a second run: the settings that
    differ from the defaults, then each deployment with its database, roles, tag count and
    row, the log indices by pattern with their ages, the Prometheus verdict, the totals and
    the exit code; deployments sorted by name, no times. No progress on a stderr that is not
    a terminal."""
    assert fleet.console("plan") == (3, PLAN)
    assert fleet.console("run") == (3, RUN)
    assert fleet.console("run") == (3, AGAIN)
    assert capsys.readouterr().err == ""


def test_a_failing_run_names_what_failed_under_its_deployment(fleet: Fleet) -> None:
    """The registry is down: each deployment shows its tags failed with the error below
    them and its row kept, and the run ends with exit code 1."""
    fleet.env["JANITOR_REGISTRY_URL"] = "http://127.0.0.1:9"

    code, text = fleet.console("run", "--only", "databases,registry")

    assert code == 1
    unreachable = (
        "          ! cannot use the registry: cannot reach http://127.0.0.1:9 (GET /v2/): "
        "Failed to establish a new connection: [Errno 111] Connection refused"
    )
    assert (
        text.split("Marks:", 1)[1]
        == f"""\
 - deleted, = already gone, ~ skipped, ! failed or mismatch

Expired deployments: 3
  ~ Bad_Name
      ~ row  skipped: {INVALID_NAME}
  ~ t1-half
      = database  t1_half_airflow: absent
      - roles     t1_half_airflow, t1_half_celery: done
      ! tags      t1-half/airflow: failed
{unreachable}
      ~ row       skipped: not all resources are gone (1 failed)
  ~ t1-old
      - database  t1_old_airflow: done
      - roles     t1_old_airflow, t1_old_celery: done
      ! tags      t1-old/airflow: failed
{unreachable}
      ~ row       skipped: not all resources are gone (1 failed)

Totals
  done     1 database, 4 roles
  absent   1 database
  skipped  3 rows
  failed   2 tags

Exit code 1: an action failed, or the run could not finish
"""
    )


def test_secrets_stay_masked_and_a_failed_push_is_named_in_the_console(
    houston: Houston, env: dict[str, str]
) -> None:
    """The console view is fed after the secret scrubber: the Houston password in the
    settings and the Pushgateway password in the push error are masked; the push error
    stands under the exit code, which it leaves at 0."""
    secret = "console-s3cret-password"
    env["JANITOR_HOUSTON_DSN"] = f"postgresql://postgres:{secret}@127.0.0.1/{houston.dbname}"
    gateway = f"127.0.0.1:{free_port()}"
    env["JANITOR_PUSHGATEWAY_URL"] = f"http://janitor:{secret}@{gateway}"
    out = io.StringIO()

    code = main(["run", "--log-format", "console"], environ=env, stdout=out)

    text = out.getvalue()
    assert code == 0
    assert secret not in text
    assert re.search(
        rf"houston_dsn +postgresql://postgres:\*\*\*@127.0.0.1/{houston.dbname}\n", text
    )
    assert text.endswith(
        "Exit code 0: everything done\n"
        f"  pushgateway_error: push to the Pushgateway http://{gateway} failed: "
        "Connection refused\n"
    )


def test_json_lines_stay_the_contract_when_stdout_is_no_terminal(fleet: Fleet) -> None:
    """Without --log-format and with stdout not a terminal, the same plan prints one JSON
    object per line, one line per action (README "Events"), and no summary."""
    out = io.StringIO()

    code = main(["plan"], environ=fleet.env, stdout=out)

    assert code == 3
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert (events[0]["event"], events[-1]["event"]) == ("run.started", "run.finished")
    assert events[0]["config"]["log_format"] is None
    assert sum(e["event"] == "registry.tag.delete" for e in events) == 4
    assert all({"timestamp", "level", "run_id", "dry_run"} <= e.keys() for e in events)


@pytest.mark.parametrize(
    ("index", "pattern"),
    [
        ("fluentd.nova-1.2026.11.01", "fluentd.*"),
        ("vector.nova-1.2026.11.01", "vector.*"),
        (".ds-logs-airflow-2026.11.01-000002", "logs-airflow"),  # 7.11+: date and generation
        (".ds-logs-airflow-000002", "logs-airflow"),  # 7.9 and 7.10: generation only
        (".ds-.logs-airflow-2026.11.01-000001", ".logs-airflow"),  # a hidden data stream
        (".ds-fluentd.x-2026.11.01-000001", "fluentd.*"),
        (".ds-unrelated-2026.11.01-000001", None),
        (".ds-logs-airflow", None),  # not a backing index's name: never matched directly
        ("metrics-nova", None),
    ],
)
def test_log_indices_are_listed_under_the_pattern_that_reached_them(
    index: str, pattern: str | None
) -> None:
    """The console groups an index under the pattern matching its name, and a data stream's
    backing index under the pattern matching its stream, as Elasticsearch names them."""
    patterns = ("fluentd.*", "vector.*", "logs-airflow", ".logs-airflow")
    assert reaching_pattern(index, patterns) == pattern


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")
# A finished run's output is read within this; the janitor itself takes a second or two.
READ_TIMEOUT_S = 60.0


def read_terminals(process: subprocess.Popen[bytes], masters: dict[str, int]) -> dict[str, str]:
    """Everything the process wrote to each pseudo-terminal, until it exited (bounded)."""
    received = {name: b"" for name in masters}
    open_fds = {fd: name for name, fd in masters.items()}
    deadline = time.monotonic() + READ_TIMEOUT_S
    while open_fds and time.monotonic() < deadline:
        ready, _, _ = select.select(list(open_fds), [], [], 0.1)
        for fd in ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the process closed its end
                chunk = b""
            if chunk:
                received[open_fds[fd]] += chunk
            else:
                del open_fds[fd]
        if not ready and process.poll() is not None:
            break
    assert process.wait(timeout=READ_TIMEOUT_S) is not None
    return {name: ANSI.sub("", data.decode(errors="replace")) for name, data in received.items()}


def test_progress_shows_on_a_terminal_and_the_summary_follows(
    houston: Houston, env: dict[str, str], tmp_path: Path
) -> None:
    """`janitor run` on a terminal (a pseudo-terminal here): stderr shows deployments and
    batches done of total, stdout the summary (console by default on a terminal) with no
    progress in it."""
    for name in ("one", "two", "three"):
        houston.deployment(name, deleted_days_ago=20)
    with running_prometheus(tmp_path / "prometheus", "--storage.tsdb.retention.time=15d") as url:
        env["JANITOR_PROMETHEUS_URL"] = url
        terminals = {name: pty.openpty() for name in ("stdout", "stderr")}
        process = subprocess.Popen(
            [sys.executable, "-m", "janitor", "run"],
            stdin=subprocess.DEVNULL,
            stdout=terminals["stdout"][1],
            stderr=terminals["stderr"][1],
            env=env | {"PYTHONPATH": str(ROOT), "TERM": "xterm-256color", "COLUMNS": "100"},
            cwd=ROOT,
        )
        for _, follower in terminals.values():
            os.close(follower)
        try:
            seen = read_terminals(process, {k: leader for k, (leader, _) in terminals.items()})
        finally:
            for leader, _ in terminals.values():
                os.close(leader)

    assert process.returncode == 0, seen
    assert re.search(r"deployments +\S* +3/3", seen["stderr"]), seen["stderr"]
    assert re.search(r"batches +\S* +1/1", seen["stderr"]), seen["stderr"]
    assert "Expired deployments: 3" in seen["stdout"]
    assert "Exit code 0: everything done" in seen["stdout"]
    assert "3/3" not in seen["stdout"]
