"""`janitor check`: can the janitor reach everything and do its job? Changes nothing.

Exit 0 when every configured component is fine, 1 listing what is missing (SPEC.md).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import psycopg

from janitor import houston
from janitor.clients.elasticsearch import (
    check_elasticsearch,
    verify_elasticsearch,
)
from janitor.config import Settings
from janitor.events import Log
from janitor.naming import SAMPLE_RELEASE, render
from janitor.remotes import elasticsearch_client, prometheus_client, registry_client
from janitor.sweepers import databases, metrics

Probe = Callable[[], Iterable[str]]


def check(settings: Settings, log: Log) -> int:
    probes: list[tuple[str, Probe]] = []
    houston_info = settings.houston_conninfo()
    airflow_info = settings.airflow_conninfo()
    if houston_info is not None:
        probes.append(("houston", lambda: houston_problems(settings, houston_info)))
    if airflow_info is not None and "databases" in settings.subsystems:
        probes.append(("airflow-databases", lambda: airflow_problems(airflow_info)))
    if "registry" in settings.subsystems:
        probes.append(("registry", lambda: registry_problems(settings)))
    if "logs" in settings.subsystems:
        probes.append(("elasticsearch", lambda: elasticsearch_problems(settings)))
    if "metrics" in settings.subsystems and settings.prometheus_url is not None:
        probes.append(("prometheus", lambda: prometheus_problems(settings)))
    failures = 0
    for component, probe in probes:
        try:
            problems = list(probe())
        except Exception as exc:  # noqa: BLE001 - any failure to probe is itself the finding
            problems = [f"{type(exc).__name__}: {exc}"]
        if problems:
            failures += 1
            log.error("check.component", target=component, outcome="failed", problems=problems)
        else:
            log.info("check.component", target=component, outcome="ok")
    code = 1 if failures else 0
    log.info("check.finished", exit_code=code, components=len(probes), failed=failures)
    return code


def houston_problems(settings: Settings, conninfo: str) -> Iterator[str]:
    table = houston.table_of(settings)
    with houston.connect(conninfo) as conn:
        found = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL",
            (table.ident().as_string(conn),),
        ).fetchone()
        if not (found and found[0]):
            yield f"table {settings.houston_schema}.{settings.houston_table} not found"
            return
        columns = {
            row[0]
            for row in conn.execute(
                "SELECT column_name FROM information_schema.columns"
                " WHERE table_schema = %s AND table_name = %s",
                (settings.houston_schema, settings.houston_table),
            )
        }
        for column in (table.id_column, table.release_column, table.deleted_column):
            if column not in columns:
                yield f"column {column!r} not found in {settings.houston_table}"
        # FOR UPDATE needs UPDATE; the purge needs DELETE.
        for privilege in ("SELECT", "UPDATE", "DELETE"):
            row = conn.execute(
                "SELECT has_table_privilege(current_user, %s, %s)",
                (table.ident().as_string(conn), privilege),
            ).fetchone()
            if not (row and row[0]):
                yield f"missing {privilege} on {settings.houston_schema}.{settings.houston_table}"
        yield from _rows_never_swept(settings, table, conn)


# Enough rows to show the kind of trouble; the run reports every one of them.
ROWS_SHOWN = 5


def _rows_never_swept(
    settings: Settings, table: houston.Table, conn: psycopg.Connection[Any]
) -> Iterator[str]:
    """Expired rows that every run will skip and keep, until an operator looks at them."""
    fleet = houston.read_fleet(
        conn,
        table,
        now=houston.server_now(conn),
        retention_days=settings.retention_days,
        refusal=settings.templates().refusal,
    )
    for rejected in fleet.rejected[:ROWS_SHOWN]:
        row = rejected.deployment
        yield f"expired deployment row id={row.id} is skipped on every run: {rejected.reason}"
    if len(fleet.rejected) > ROWS_SHOWN:
        yield f"... and {len(fleet.rejected) - ROWS_SHOWN} more such rows (see `janitor plan`)"


def registry_problems(settings: Settings) -> list[str]:
    client = registry_client(settings)
    try:
        hint = render(settings.registry_repository_template, SAMPLE_RELEASE)
        return client.check(hint)
    finally:
        client.close()


def elasticsearch_problems(settings: Settings) -> list[str]:
    url = settings.elasticsearch_url or ""
    es = elasticsearch_client(settings)
    verify_elasticsearch(es, url)
    return check_elasticsearch(es, settings.log_index_patterns)


def prometheus_problems(settings: Settings) -> list[str]:
    url = settings.prometheus_url or ""
    client = prometheus_client(settings)
    return metrics.prometheus_problems(client, url)


def airflow_problems(conninfo: str) -> Iterator[str]:
    yield from databases.server_problems(lambda: psycopg.connect(conninfo, autocommit=True))
