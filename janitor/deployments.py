"""Expired deployments through the Houston database (README "What one run does", steps 1-3):
the run's Houston session (the database server's clock, the advisory run lock, the read of
the fleet) and each deployment settled under its row lock, its row purged last.

Only a run with a Houston DSN imports this module: a logs- or metrics-only run never loads
libpq (README "Benchmarks").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from janitor import assemble, houston, orphan_records, postgres
from janitor.config import Settings
from janitor.errors import ConfigurationError
from janitor.events import Log
from janitor.executor import Context, contained, keep_reason, purge_action, skip_steps
from janitor.executor import settle as settle_step
from janitor.plan import (
    Action,
    Deployment,
    DeploymentPlan,
    DeploymentSweeper,
    DeploymentWork,
    Plan,
    Result,
    Step,
    failed,
    final,
    skipped,
    unexpected,
)
from janitor.stopping import Stop

if TYPE_CHECKING:
    from janitor.audit import Adoption

Pool = ConnectionPool[psycopg.Connection[Any]]

NO_LONGER_EXPIRED = "deployment was restored or is no longer past the retention window"
NO_LONGER_ORPHAN = (
    "a deployment row now holds this release, or its orphan records changed since the plan"
)


@dataclass(frozen=True)
class FleetPlan:
    """The deployment sweepers' share of a run's plan."""

    works: tuple[DeploymentWork, ...]
    steps: tuple[Step, ...]
    unswept: tuple[str, ...]
    """Why no row may go in this run: a deployment sweeper that could not read its world."""


@dataclass(frozen=True)
class Session:
    """The run's Houston connection (its main session: the clock and the run lock)."""

    settings: Settings
    conn: psycopg.Connection[Any]
    conninfo: str
    table: houston.Table
    timeouts: postgres.Timeouts

    def now(self) -> datetime:
        """README "Time": one now per run, from the database server."""
        return houston.server_now(self.conn)

    def take_run_lock(self, stack: ExitStack, log: Log) -> bool:
        """README step 1: the advisory run lock (one per shard), held until ``stack``
        closes; False, after ``run.skipped``, when another run holds it."""
        shard = self.settings.shard
        if not houston.try_run_lock(self.conn, shard):
            holder = f"another run of shard {shard} (or an unsharded run)" if shard.sharded else ""
            log.info("run.skipped", reason=f"{holder or 'another run'} holds the run lock")
            return False
        stack.callback(houston.release_run_lock, self.conn, shard)
        return True

    def open_pool(self, stack: ExitStack) -> Pool:
        """One pooled session per worker: each holds one deployment's row lock."""
        pool = postgres.open_pool(
            self.conninfo, self.settings.concurrency, "houston", self.timeouts
        )
        return stack.enter_context(pool)

    def count_expired(self, now: datetime) -> int:
        """Rows of this shard still past the window (README "Run metrics").

        Raises psycopg.Error when they cannot be counted."""
        settings = self.settings
        return houston.count_expired(
            self.conn,
            self.table,
            now=now,
            retention_days=settings.retention_days,
            shard=settings.shard,
        )


def open_session(settings: Settings, stack: ExitStack, conninfo: str) -> Session:
    """Connects to Houston for the run; ConfigurationError (exit 2) behind a pooler in
    transaction mode; psycopg.Error when the server cannot be reached."""
    timeouts = assemble.pg_timeouts(settings)
    if postgres.pools_transactions(conninfo, timeouts):
        # Ages would be read in whatever time zone the next pooled session has.
        raise ConfigurationError(postgres.POOLED)
    conn = stack.enter_context(postgres.connect(conninfo, timeouts))
    return Session(settings, conn, conninfo, assemble.houston_table(settings), timeouts)


def describe(exc: Exception) -> str | None:
    """What a Houston failure says, or None for an exception that is no PostgreSQL error."""
    return f"Houston database: {postgres.describe(exc)}" if isinstance(exc, psycopg.Error) else None


def plan_fleet(
    session: Session,
    sweepers: Sequence[DeploymentSweeper],
    *,
    now: datetime,
    stop: Stop,
) -> FleetPlan:
    """The expired deployments of the shard (and adopted orphans), with every deployment
    sweeper's steps attached. A sweeper that cannot even read its world reports one failed
    event and blocks every purge; once ``stop`` is requested no further sweeper starts."""
    settings, main, table = session.settings, session.conn, session.table
    steps: list[Step] = []
    unswept: list[str] = []
    fleet = houston.read_fleet(
        main,
        table,
        now=now,
        retention_days=settings.retention_days,
        refusal=settings.templates().refusal,
        shard=settings.shard,
    )
    works = [DeploymentWork(d) for d in fleet.expired]
    works += [DeploymentWork(r.deployment, blocked=r.reason) for r in fleet.rejected]
    if settings.adopt_orphans and stop.reason() is None:
        adoption = _adoption(settings, main, now)
        steps += adoption.steps
        works += [DeploymentWork(d, adopted=first) for d, first in adoption.adopted]
    expired = [w.deployment for w in works if w.blocked is None]
    missing = houston.missing_privileges(main, table)
    denied = houston.privilege_fix(main, table, missing) if missing else None
    for sweeper in sweepers:
        stopped = stop.reason()
        part = (
            _deployment_plan(sweeper, expired)
            if stopped is None
            else DeploymentPlan({}, unswept=stopped)
        )
        works = _attach(works, part)
        steps += part.failures
        if part.unswept is not None:
            unswept.append(part.unswept)
    if denied is not None:
        # An adopted orphan has no row: its records stand for it (janitor.orphan_records).
        works = [w if w.adopted else _deny(w, denied) for w in works]
    return FleetPlan(tuple(works), tuple(steps), tuple(unswept))


def _adoption(settings: Settings, main: psycopg.Connection[Any], now: datetime) -> Adoption:
    """``--adopt-orphans`` (README "Orphans: janitor audit"): the audit's events and the
    orphan releases found for the grace period, to sweep like expired deployments."""
    from janitor.audit import adoption  # noqa: PLC0415 - only runs that adopt orphans

    return adoption(settings, main, now=now)


def _deployment_plan(sweeper: DeploymentSweeper, expired: Sequence[Deployment]) -> DeploymentPlan:
    """``sweeper``'s plan; whatever else it raises (a bug, an answer of a shape nobody
    expected) fails the sweeper as a whole and keeps every row."""
    with contained(sweeper.event, sweeper.subsystem) as failure:
        return sweeper.plan(expired)
    return DeploymentPlan({}, failure, f"{sweeper.subsystem} could not be swept")


def _attach(works: list[DeploymentWork], part: DeploymentPlan) -> list[DeploymentWork]:
    """Appends one sweeper's steps (and its post-checks) to each deployment's work."""
    attached = []
    for work in works:
        share = part.shares.get(work.deployment.id)
        attached.append(
            work
            if share is None
            else replace(
                work, steps=work.steps + share.steps, remaining=work.remaining + share.remaining
            )
        )
    return attached


def _deny(work: DeploymentWork, denied: str) -> DeploymentWork:
    """Plan = execution: without the row lock nothing of a deployment may be destroyed,
    so what would have been deleted is skipped in the plan and the purge fails."""
    if work.blocked is not None:
        return work
    reason = "the deployment row may not be locked and purged (see deployment.purge)"
    steps = tuple(
        final(replace(a, planned=skipped(reason)) if a.deletes else a)
        for step in work.steps
        for a in step.actions
    )
    return replace(work, steps=steps, remaining=(), denied=denied)


@dataclass(frozen=True)
class _Row:
    """What stands for a deployment in Houston: its row, or an adopted orphan's records."""

    lock: Callable[[psycopg.Connection[Any]], AbstractContextManager[bool]]
    purge: Callable[[psycopg.Connection[Any]], Result]
    table: sql.Composed
    waited: str
    gone: str
    """Why nothing is done when the lock finds it no longer to be swept."""


def _row(work: DeploymentWork, context: Context, session: Session) -> _Row:
    deployment, settings = work.deployment, context.settings
    if work.adopted is None:
        return _Row(
            lock=lambda conn: houston.locked_if_expired(
                conn,
                session.table,
                deployment,
                now=context.now,
                retention_days=settings.retention_days,
            ),
            purge=lambda conn: houston.purge(conn, session.table, deployment),
            table=session.table.ident(),
            waited=f"the row of deployment {deployment.release_name or deployment.id} in "
            f"{session.table.table}",
            gone=NO_LONGER_EXPIRED,
        )
    records = assemble.orphan_records(settings)
    release = deployment.release_name
    return _Row(
        lock=lambda conn: orphan_records.locked_if_adopted(
            conn,
            release,
            records=records,
            table=session.table,
            cutoff=context.now - timedelta(days=settings.orphan_grace_days),
        ),
        purge=lambda conn: orphan_records.forget(conn, records, release),
        table=records.ident(),
        waited=f"the orphan records of release {release} in {records.table}",
        gone=NO_LONGER_ORPHAN,
    )


def settle(
    work: DeploymentWork, plan: Plan, context: Context, session: Session, pool: Pool | None
) -> None:
    """Settles one deployment and reports its purge (README step 3): its steps run under
    its row lock (re-checked still expired), and its row is purged only when all of its
    resources are confirmed gone; ``pool`` is None in a dry run."""
    purge = purge_action(work)
    if work.blocked is not None:
        context.recorder.action(purge, skipped(work.blocked))
        return
    if work.denied is not None:
        for step in work.steps:
            settle_step(step, context)
        context.recorder.action(purge, failed(work.denied))
        return
    stopped = context.stop.reason()
    if stopped is not None:
        _skip_all(work, purge, stopped, context)
        return
    if context.dry_run:
        results = [r for step in work.steps for r in settle_step(step, context, alone=False)]
        reason = keep_reason(results, plan.purge_blocked)
        context.recorder.action(purge, skipped(reason) if reason else purge.planned)
        return
    if pool is None:  # unreachable: real runs with deployments open it
        raise RuntimeError("no Houston connection pool")
    row = _row(work, context, session)
    # The purge is reported once its transaction committed: a row reported gone is gone.
    result: Result | None = None  # set once the row lock was taken and the steps settled
    try:
        with pool.connection() as conn:
            try:
                with row.lock(conn) as still_expired:
                    if not still_expired:
                        skip_steps(work, row.gone, context)
                        result = skipped(row.gone)
                    else:
                        results = [
                            r
                            for step in work.steps
                            for r in settle_step(step, context, alone=False)
                        ]
                        reason = keep_reason(results, plan.purge_blocked)
                        result = skipped(reason) if reason else _remaining(work) or row.purge(conn)
            except psycopg.errors.LockNotAvailable:
                holders = postgres.table_holders(conn, row.table.as_string(conn))
                error = postgres.lock_wait(row.waited, session.timeouts, holders)
                skip_steps(work, "the deployment row lock was not obtained", context)
                result = failed(error)
    except Exception as exc:  # noqa: BLE001 - one deployment's trouble must not end the run
        result = _session_lost(exc, result, work, context)
    context.recorder.action(purge, result)


def _session_lost(
    exc: Exception, result: Result | None, work: DeploymentWork, context: Context
) -> Result:
    """The purge's result when the Houston session broke under a deployment
    (pg_terminate_backend, a reset) after its steps settled with ``result`` (None: before
    the row lock was taken). The transaction, and with it any purge, rolled back, or its
    COMMIT went unanswered; either way the deployment still ends with its purge event."""
    error = (
        f"Houston database: {postgres.describe(exc)}"
        if isinstance(exc, psycopg.Error)
        else unexpected(exc)
    )
    if result is None:
        skip_steps(work, "the deployment row lock was not obtained", context)
        return failed(error)
    if result.outcome == "done":
        # The COMMIT may have reached the server before the session died.
        return failed(f"{error}; the purge was not confirmed (the next run settles it)")
    return failed(f"{error}; the row stays")


def _skip_all(work: DeploymentWork, purge: Action, reason: str, context: Context) -> None:
    skip_steps(work, reason, context)
    context.recorder.action(purge, skipped(reason))


def _remaining(work: DeploymentWork) -> Result | None:
    """Why the row stays after all: something a probe still finds (skipped), or a probe
    that broke on an answer nobody expected (failed: it proves nothing gone); None to purge."""
    for probe in work.remaining:
        try:
            still_there = probe()
        except Exception as exc:  # noqa: BLE001 - README: any exception ends as a failed action
            return failed(f"what is left could not be confirmed: {unexpected(exc)}")
        if still_there:
            return skipped(still_there)
    return None
