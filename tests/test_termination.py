"""A run always ends with its own summary: on SIGTERM, and when something unexpected breaks
(SPEC.md "What one run does" step 6; issue: inputs that break the janitor today, 8)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.conftest import ADMIN_DSN, Houston, existing_databases, janitor

ROOT = Path(__file__).resolve().parent.parent
# Every wait in these stories is bounded; none is expected to come near it.
WAIT_S = 30.0


def _wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _someone_waits_on(blocker: psycopg.Connection[Any]) -> bool:
    """Whether a session waits on a lock ``blocker`` holds: only this test's janitor can, while
    other suites' janitors on the shared server wait on locks of their own."""
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
            (blocker.info.backend_pid,),
        ).fetchone()
    return bool(row and row[0])


def test_sigterm_lets_the_drop_in_flight_settle_skips_the_rest_and_ends_with_the_summary(
    houston: Houston, env: dict[str, str]
) -> None:
    """Kubernetes deletes the Job while a DROP DATABASE waits on another session's lock: the
    drop settles once the lock goes, no other deployment is started (each `skipped`,
    reason `terminated`, rows kept), and `run.finished` is the last line, exit 1."""
    first = houston.deployment("first", deleted_days_ago=40)
    others = [houston.deployment(f"later{i}", deleted_days_ago=30) for i in range(3)]
    first_database = f"{first.replace('-', '_')}_airflow"
    blocker = psycopg.connect(ADMIN_DSN)
    blocker.execute(
        sql.SQL("COMMENT ON DATABASE {} IS 'held by an operator'").format(
            sql.Identifier(first_database)
        )
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "janitor", "run", "--concurrency", "1", "--log-format", "json"],
        cwd=ROOT,
        env={**env, "PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(
            lambda: _someone_waits_on(blocker), "the janitor's DROP DATABASE to wait on the lock"
        )
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # the signal is handled between two bytecodes of the main thread
        blocker.rollback()
        out, err = process.communicate(timeout=WAIT_S)
    finally:
        blocker.close()
        if process.poll() is None:
            process.kill()
            process.wait()

    events = [json.loads(line) for line in out.decode().splitlines()]
    assert process.returncode == 1, err.decode()
    finished = events[-1]
    assert finished["event"] == "run.finished"
    assert finished["exit_code"] == 1
    assert finished["reason"] == "terminated"
    drops = {e["target"]: e for e in events if e["event"] == "database.drop"}
    assert drops[first_database]["outcome"] == "done"
    assert existing_databases({first_database}) == set()
    purges = {e["target"]: e for e in events if e["event"] == "deployment.purge"}
    for release in others:
        assert purges[release]["outcome"] == "skipped"
        assert purges[release]["reason"] == "terminated"
        assert release in houston.rows()

    again = janitor(["run"], env)
    assert again.code == 0
    assert set(houston.rows()) == set()


class _GarbledElasticsearch(BaseHTTPRequestHandler):
    """Answers like Elasticsearch 8 to `GET /`, then a JSON list where an object belongs."""

    def do_GET(self) -> None:
        body: Any = (
            {"version": {"number": "8.13.0"}, "tagline": "You Know, for Search"}
            if self.path.split("?")[0] == "/"
            else ["not", "an", "object"]
        )
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.elasticsearch+json;compatible-with=8")
        self.send_header("X-Elastic-Product", "Elasticsearch")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def garbled_elasticsearch() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _GarbledElasticsearch)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_an_answer_of_a_shape_nobody_expected_still_ends_with_the_summary(
    houston: Houston, env: dict[str, str], garbled_elasticsearch: str
) -> None:
    """An Elasticsearch whose index listing is a JSON list: the databases are swept, and the
    run ends with `run.finished`, exit 1, naming the error."""
    release = houston.deployment("old", deleted_days_ago=30)
    env["JANITOR_ELASTICSEARCH_URL"] = garbled_elasticsearch

    run = janitor(["run"], env)

    assert run.code == 1
    assert run.finished["event"] == "run.finished"
    assert run.finished["exit_code"] == 1
    failures = [e for e in run.events if e.get("outcome") == "failed"]
    assert "error" in run.finished or failures
    assert release not in houston.rows() or failures
