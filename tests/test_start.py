"""A fast start: a command imports only what it uses (issue: fleet scale and a fast start)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = (
    "kubernetes",
    "elasticsearch",
    "elastic_transport",
    "psycopg",
    "pydantic",
    "structlog",
    "rich",
    "prometheus_client",
)

PROBE = """
import json, sys
from janitor.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})))
"""


def _imported(*argv: str, env: dict[str, str] | None = None) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_janitor_version_imports_no_client_library() -> None:
    """`janitor --version` loads none of the database, HTTP, Kubernetes or logging libraries."""
    assert _imported("--version") & set(HEAVY) == set()


def test_a_logs_only_run_does_not_load_the_kubernetes_client() -> None:
    """Outside a cluster and without the kubernetes metrics source, the Kubernetes client
    (the heaviest import) is never loaded."""
    env = {"JANITOR_ELASTICSEARCH_URL": "http://127.0.0.1:9"}
    assert "kubernetes" not in _imported("plan", "--log-format", "json", env=env)


def test_a_logs_only_run_does_not_load_aiohttp_for_the_elasticsearch_client() -> None:
    """The Elasticsearch client's asynchronous node (aiohttp, installed for the Kubernetes
    client) is never loaded: the janitor speaks to Elasticsearch synchronously."""
    env = {"JANITOR_ELASTICSEARCH_URL": "http://127.0.0.1:9"}
    loaded = _imported("plan", "--log-format", "json", env=env)
    assert "elasticsearch" in loaded
    assert "aiohttp" not in loaded


def test_a_run_without_a_houston_dsn_does_not_load_libpq() -> None:
    """A logs-only run never loads psycopg (libpq): the deployment half of a run, and the
    DSN rules, are loaded only with a Houston DSN."""
    env = {"JANITOR_ELASTICSEARCH_URL": "http://127.0.0.1:9"}
    loaded = _imported("run", "--log-format", "json", env=env)
    assert {"psycopg", "psycopg_pool"} & loaded == set()


def test_a_run_without_a_config_file_or_a_console_loads_neither_pyyaml_nor_rich() -> None:
    """PyYAML is loaded for --config only, and rich for the console view only (structlog
    is loaded without its rich tracebacks)."""
    env = {"JANITOR_ELASTICSEARCH_URL": "http://127.0.0.1:9"}
    assert {"yaml", "rich"} & _imported("run", "--log-format", "json", env=env) == set()


def test_aiohttp_stays_importable_after_the_elasticsearch_client_loaded() -> None:
    """Hiding aiohttp from elastic-transport is undone once the client is loaded."""
    probe = "import janitor.clients.elasticsearch, aiohttp; print(aiohttp.__name__)"
    done = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout.strip() == "aiohttp", done.stderr


def test_a_run_without_a_pushgateway_does_not_load_the_metrics_client() -> None:
    """Without JANITOR_PUSHGATEWAY_URL, prometheus_client (the run metrics) is not loaded."""
    env = {"JANITOR_ELASTICSEARCH_URL": "http://127.0.0.1:9"}
    assert "prometheus_client" not in _imported("run", "--log-format", "json", env=env)
