"""`janitor check`: can the janitor reach everything and do its job? Changes nothing.

Exit 0 when every configured component is fine, 1 listing what is missing (README
"Command line"). Each sweeper reports through the same ``problems()`` it has for this.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING

from janitor import assemble, houston, postgres
from janitor.config import Settings
from janitor.errors import ExitCode
from janitor.events import Log
from janitor.plan import Deployment, unexpected

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

# The component names `check.component` events have always carried.
COMPONENTS = {
    "databases": "airflow-databases",
    "registry": "registry",
    "logs": "elasticsearch",
    "metrics": "prometheus",
    "backups": "backup-store",
}
# Enough rows to show the kind of trouble; `janitor plan` reports every one of them.
ROWS_SHOWN = 5


def check(settings: Settings, log: Log, *, kube: ApiClient | None = None) -> int:
    probes: list[tuple[str, Callable[[], list[str]]]] = []
    conninfo = settings.houston_conninfo()
    expired: list[Deployment] = []
    if conninfo is not None:
        probes.append(("houston", lambda: list(houston_problems(settings, conninfo, expired))))
    failures = 0
    with ExitStack() as stack:
        chosen = assemble.sweepers(settings, stack, now=datetime.now(UTC), kube=kube)
        # Run after the houston probe, which fills `expired`: the deployment sweepers
        # report what their plan of the expired fleet would fail.
        probes += [
            (COMPONENTS[s.subsystem], partial(s.problems, expired)) for s in chosen.deployment
        ]
        probes += [(COMPONENTS[s.subsystem], s.problems) for s in chosen.standalone]
        for component, probe in probes:
            try:
                problems = probe()
            except Exception as exc:  # noqa: BLE001 - any failure to probe is itself the finding
                problems = [unexpected(exc)]
            if problems:
                failures += 1
                log.error("check.component", target=component, outcome="failed", problems=problems)
            else:
                log.info("check.component", target=component, outcome="ok")
    code = ExitCode.FAILED if failures else ExitCode.OK
    log.info("check.finished", exit_code=int(code), components=len(probes), failed=failures)
    return int(code)


def houston_problems(settings: Settings, conninfo: str, expired: list[Deployment]) -> Iterator[str]:
    """The deployments table, the janitor's privileges on it, and expired rows that every
    run will skip and keep until an operator looks at them; ``expired`` receives the
    deployments a run would sweep."""
    table = assemble.houston_table(settings)
    timeouts = assemble.pg_timeouts(settings)
    if postgres.pools_transactions(conninfo, timeouts):
        yield postgres.POOLED
        return
    with postgres.connect(conninfo, timeouts) as conn:
        problems = list(houston.table_problems(conn, table))
        yield from problems
        if problems:
            return
        fleet = houston.read_fleet(
            conn,
            table,
            now=houston.server_now(conn),
            retention_days=settings.retention_days,
            refusal=settings.templates().refusal,
            shard=settings.shard,
        )
    expired.extend(fleet.expired)
    for rejected in fleet.rejected[:ROWS_SHOWN]:
        row = rejected.deployment
        yield f"expired deployment row id={row.id} is skipped on every run: {rejected.reason}"
    if len(fleet.rejected) > ROWS_SHOWN:
        yield f"... and {len(fleet.rejected) - ROWS_SHOWN} more such rows (see `janitor plan`)"
