"""One run: lock, plan, guard, execute, summarise (README "What one run does").

Data flows one way: settings → sources → plan → executor → events. Dry run is the same
path with execution skipped. The runner knows the Houston table, the run lock, the plan
and the recorder; every sweeper reaches it through one contract (janitor.plan.Sweeper and
DeploymentSweeper), built from the settings by janitor.assemble.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg
import structlog
from psycopg import sql
from psycopg_pool import ConnectionPool

from janitor import __version__, assemble, houston, orphan_records, postgres, pushgateway
from janitor.config import Settings
from janitor.errors import ConfigurationError, ExitCode
from janitor.events import Log, Progress, Recorder
from janitor.plan import (
    PLANNED,
    Action,
    Deployment,
    DeploymentPlan,
    DeploymentSweeper,
    DeploymentWork,
    Plan,
    Result,
    Step,
    Sweeper,
    failed,
    final,
    guard_refusal,
    skipped,
    unexpected,
)
from janitor.stopping import DEADLINE_REACHED, TERMINATED, Stop

if TYPE_CHECKING:
    from collections.abc import Callable

    from kubernetes.client import ApiClient

    from janitor.audit import Adoption

    Clock = Callable[[], datetime]

GONE = frozenset({"done", "absent"})
NO_LONGER_EXPIRED = "deployment was restored or is no longer past the retention window"
NO_LONGER_ORPHAN = (
    "a deployment row now holds this release, or its orphan records changed since the plan"
)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Context:
    """What the executor needs beyond the plan."""

    settings: Settings
    table: houston.Table
    now: datetime
    dry_run: bool
    recorder: Recorder
    houston_pool: ConnectionPool[psycopg.Connection[Any]] | None
    workers: Executor
    stop: Stop


@dataclass
class _Ending:
    """How ``_run`` ended: the exit code and the fields ``run.finished`` gains."""

    code: ExitCode = ExitCode.OK
    notes: dict[str, Any] = field(default_factory=dict)
    expired_remaining: int | None = None
    """Rows still past the window after the run, counted only when metrics are pushed."""
    count_error: str | None = None
    locked_out: bool = False
    """Another run holds the lock: this one did nothing and reports no run metrics."""


def run(
    settings: Settings,
    log: Log,
    *,
    clock: Clock = utc_now,
    kube: ApiClient | None = None,
    stop: Stop | None = None,
    progress: Progress | None = None,
) -> int:
    """Performs one run and returns its exit code; run.finished is always the last line,
    whatever is raised (a bug included: exit 1 with the error and where it was raised).

    ``clock`` is the pod's clock (used only without a Houston database, for the Lease and
    the run metrics); ``kube`` is the Kubernetes API client when running in a cluster; once
    ``stop`` is requested (SIGTERM), no new work starts and the run ends with exit 1;
    ``progress`` is told how many deployments and batches are done of how many.
    """
    stop = stop if stop is not None else Stop()
    stop.set_deadline(settings.deadline_seconds)
    started = time.monotonic()
    recorder = Recorder(log, progress)
    log.info(
        "run.started",
        version=__version__,
        subsystems=list(settings.subsystems),
        shard=str(settings.shard),
        config=settings.summary(),
    )
    ending = _Ending()
    error: str | None = None
    try:
        _run(settings, recorder, clock=clock, kube=kube, stop=stop, ending=ending)
    except ConfigurationError as exc:
        ending.code, error = ExitCode.INVALID_CONFIGURATION, str(exc)
    except psycopg.Error as exc:
        ending.code, error = ExitCode.FAILED, f"Houston database: {postgres.describe(exc)}"
    except Exception as exc:  # noqa: BLE001 - README: run.finished is always the last line
        # KubernetesError (the Lease) included: its message names the API and the status.
        ending.code, error = ExitCode.FAILED, _run_error(exc)
    stopped = stop.reason()
    if stopped == TERMINATED and ending.code in (ExitCode.OK, ExitCode.RETENTION_MISMATCH):
        ending.code = ExitCode.FAILED  # killed from outside before its work was done
    finished: dict[str, Any] = {
        "counts": recorder.counts(),
        "exit_code": int(ending.code),
        "duration_s": round(time.monotonic() - started, 3),
    }
    if error is not None:
        finished["error"] = error
    if stopped == TERMINATED:
        finished["reason"] = stopped
    elif stopped == DEADLINE_REACHED:
        # README "Time limits": skipped work keeps its rows for the next run; the exit code
        # is what the work done earned.
        finished["deadline_reached"] = True
    finished |= ending.notes
    event_error = _post_summary_event(settings, kube, finished, ending.code)
    if event_error is not None:
        finished["kubernetes_event_error"] = event_error
    push_error = _push_metrics(settings, ending, finished, clock)
    if push_error is not None:
        finished["pushgateway_error"] = push_error
    failing = ending.code in (ExitCode.FAILED, ExitCode.INVALID_CONFIGURATION)
    (log.error if failing else log.info)("run.finished", **finished)
    return int(ending.code)


def _run_error(exc: Exception) -> str:
    from janitor.lease import KubernetesError  # noqa: PLC0415 - only in a cluster

    return str(exc) if isinstance(exc, KubernetesError) else unexpected(exc)


def _post_summary_event(
    settings: Settings, kube: ApiClient | None, finished: dict[str, Any], code: int
) -> str | None:
    """The optional Event on the CronJob; its failure never changes the run's exit code."""
    namespace, cronjob = settings.lease_namespace, settings.cronjob_name
    if kube is None or not settings.kubernetes_events or not namespace or not cronjob:
        return None
    from janitor.lease import KubernetesError, post_run_event  # noqa: PLC0415 - only in a cluster

    try:
        post_run_event(
            kube,
            namespace=namespace,
            cronjob_name=cronjob,
            summary=finished | {"dry_run": settings.dry_run},
            exit_code=code,
        )
    except KubernetesError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - README: run.finished is always the last line
        # The client's own parsing of an answer of a shape nobody expected (a proxy's page,
        # a truncated body) raises ValueError and friends, not KubernetesError.
        return unexpected(exc)
    return None


def _push_metrics(
    settings: Settings, ending: _Ending, finished: dict[str, Any], clock: Clock
) -> str | None:
    """README "Run metrics": a real run ends by pushing them; what went wrong, or None. A
    failed push never changes the exit code."""
    target = assemble.pushgateway_target(settings)
    if target is None or ending.locked_out:
        # A skipped run pushing exit 0 would refresh the last success while another run,
        # perhaps one stuck for days, holds the lock.
        return None
    metrics = pushgateway.RunMetrics(
        finished_at=clock().timestamp(),
        exit_code=int(ending.code),
        duration_s=finished["duration_s"],
        counts=finished["counts"],
        expired_remaining=ending.expired_remaining,
    )
    problems = [pushgateway.push(target, metrics), ending.count_error]
    return "; ".join(p for p in problems if p is not None) or None


def _count_expired(
    settings: Settings,
    main: psycopg.Connection[Any] | None,
    table: houston.Table,
    now: datetime,
    ending: _Ending,
) -> None:
    """Counts the rows still past the window once the run is done, when they are pushed."""
    if main is None or assemble.pushgateway_target(settings) is None:
        return
    try:
        ending.expired_remaining = houston.count_expired(
            main, table, now=now, retention_days=settings.retention_days, shard=settings.shard
        )
    except psycopg.Error as exc:
        # The run's work is done: a failed count costs only this metric.
        ending.count_error = (
            "janitor_expired_deployments_remaining not pushed: could not count the expired "
            f"rows ({postgres.describe(exc)})"
        )


def _run(
    settings: Settings,
    recorder: Recorder,
    *,
    clock: Clock,
    kube: ApiClient | None,
    stop: Stop,
    ending: _Ending,
) -> None:
    dry_run = settings.dry_run
    with ExitStack() as stack:
        conninfo = settings.houston_conninfo()
        timeouts = assemble.pg_timeouts(settings)
        if conninfo is not None and postgres.pools_transactions(conninfo, timeouts):
            # Ages would be read in whatever time zone the next pooled session has.
            raise ConfigurationError(postgres.POOLED)
        main = stack.enter_context(postgres.connect(conninfo, timeouts)) if conninfo else None
        # README "Time": one now per run, from the database server when there is one.
        now = houston.server_now(main) if main is not None else clock()
        if not dry_run and not _take_locks(
            settings, stack, main, kube=kube, clock=clock, recorder=recorder
        ):
            ending.locked_out = True
            return
        workers = stack.enter_context(ThreadPoolExecutor(settings.concurrency, "janitor"))
        table = assemble.houston_table(settings)
        run_id = str(structlog.get_context(recorder.log).get("run_id", ""))
        sweepers = assemble.sweepers(
            settings, stack, now=now, houston=main, kube=kube, run_id=run_id
        )
        plan = build_plan(settings, sweepers, main, table=table, now=now, stop=stop)
        refusal = guard_refusal(plan, settings.max_deletions)
        if refusal is not None:
            _refuse(plan, recorder, refusal)
            ending.code = ExitCode.GUARD_REFUSED
            _count_expired(settings, main, table, now, ending)
            return
        pool = None
        if plan.deployments and not dry_run and conninfo is not None:
            houston_pool = postgres.open_pool(conninfo, settings.concurrency, "houston", timeouts)
            pool = stack.enter_context(houston_pool)
        context = Context(settings, table, now, dry_run, recorder, pool, workers, stop)
        execute(plan, context)
        _count_expired(settings, main, table, now, ending)
        counts = recorder.counts()
        for sweeper in sweepers.deployment:
            ending.notes |= sweeper.notes(counts)
    outcomes = recorder.outcomes()
    if "failed" in outcomes:
        ending.code = ExitCode.FAILED
    elif "mismatch" in outcomes:
        ending.code = ExitCode.RETENTION_MISMATCH


def _take_locks(
    settings: Settings,
    stack: ExitStack,
    main: psycopg.Connection[Any] | None,
    *,
    kube: ApiClient | None,
    clock: Clock,
    recorder: Recorder,
) -> bool:
    """README step 1: the advisory run lock on Houston and, in a cluster, the Lease, held
    until ``stack`` closes. False (after ``run.skipped``) when another run holds one."""
    shard = settings.shard
    if main is not None:
        if not houston.try_run_lock(main, shard):
            holder = f"another run of shard {shard} (or an unsharded run)" if shard.sharded else ""
            recorder.log.info("run.skipped", reason=f"{holder or 'another run'} holds the run lock")
            return False
        stack.callback(houston.release_run_lock, main, shard)
    if kube is not None and settings.lease_namespace:
        # In a cluster, also a Lease, so a manual Job and the scheduled one never work at
        # once (even against different Houston databases); one Lease per shard.
        from janitor.lease import hold_lease  # noqa: PLC0415 - only in a cluster

        lease = shard.name(settings.lease_name)
        held = stack.enter_context(
            hold_lease(
                kube,
                namespace=settings.lease_namespace,
                name=lease,
                holder=settings.pod_name or socket.gethostname(),
                duration_s=settings.lease_duration_seconds,
                clock=clock,
            )
        )
        if not held:
            reason = f"another run holds the lease {settings.lease_namespace}/{lease}"
            recorder.log.info("run.skipped", reason=reason)
            return False
    return True


def build_plan(
    settings: Settings,
    sweepers: assemble.Sweepers,
    main: psycopg.Connection[Any] | None,
    *,
    table: houston.Table,
    now: datetime,
    stop: Stop,
) -> Plan:
    """Asks every sweeper for its plan. A sweeper that cannot even read its world reports
    one failed event and, for a deployment sweeper, blocks every purge; the others run.
    Once ``stop`` is requested, no further sweeper starts reading (one skipped event each;
    the deployments are skipped when executed)."""
    works: list[DeploymentWork] = []
    steps: list[Step] = []
    blocked = list(settings.unswept_reasons())
    if main is not None and sweepers.deployment:
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
        for sweeper in sweepers.deployment:
            stopped = stop.reason()
            part = (
                _deployment_plan(sweeper, expired)
                if stopped is None
                else DeploymentPlan({}, unswept=stopped)
            )
            works = _attach(works, part)
            steps += part.failures
            if part.unswept is not None:
                blocked.append(part.unswept)
        if denied is not None:
            # An adopted orphan has no row: its records stand for it (janitor.orphan_records).
            works = [w if w.adopted else _deny(w, denied) for w in works]
    for standalone in sweepers.standalone:
        stopped = stop.reason()
        if stopped is None:
            steps += _standalone_plan(standalone)
        else:
            steps.append(final(Action(standalone.event, standalone.subsystem, skipped(stopped))))
    purge_blocked = ", ".join(blocked) if blocked else None
    return Plan(deployments=tuple(works), steps=tuple(steps), purge_blocked=purge_blocked)


def _adoption(settings: Settings, main: psycopg.Connection[Any], now: datetime) -> Adoption:
    """``--adopt-orphans`` (README "Orphans: janitor audit"): the audit's events and the
    orphan releases found for the grace period, to sweep like expired deployments."""
    from janitor.audit import adoption  # noqa: PLC0415 - only runs that adopt orphans

    return adoption(settings, main, now=now)


def _deployment_plan(sweeper: DeploymentSweeper, expired: Sequence[Deployment]) -> DeploymentPlan:
    """``sweeper``'s plan; whatever else it raises (a bug, an answer of a shape nobody
    expected) fails the sweeper as a whole and keeps every row."""
    with _contained(sweeper.event, sweeper.subsystem) as failure:
        return sweeper.plan(expired)
    return DeploymentPlan({}, failure, f"{sweeper.subsystem} could not be swept")


def _standalone_plan(sweeper: Sweeper) -> list[Step]:
    with _contained(sweeper.event, sweeper.subsystem) as failure:
        return sweeper.plan()
    return list(failure)


@contextmanager
def _contained(event: str, target: str) -> Iterator[list[Step]]:
    """Turns an exception of the block, except ConfigurationError (exit 2, nothing
    changed), into one failed step appended to the yielded list."""
    failure: list[Step] = []
    try:
        yield failure
    except ConfigurationError:
        raise
    except Exception as exc:  # noqa: BLE001 - one broken sweeper must not stop the others
        failure.append(final(Action(event, target, failed(unexpected(exc)))))


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


def _refuse(plan: Plan, recorder: Recorder, refusal: str) -> None:
    """README exit 4: nothing changes; every planned deletion is reported as refused."""
    for action in plan.actions():
        recorder.action(action, skipped(refusal) if action.deletes else action.planned)
    for work in plan.deployments:
        recorder.action(_purge_action(work), skipped(refusal))


def execute(plan: Plan, context: Context) -> None:
    pool, recorder = context.workers, context.recorder
    recorder.begin(deployments=len(plan.deployments), batches=len(plan.steps))
    # Rows sharing a release name share its resources: settled one after the other, the
    # second finds them absent (two sessions dropping one role at once fail with "tuple
    # concurrently deleted"). Each name is one task; distinct names run in parallel.
    by_release: dict[str, list[DeploymentWork]] = {}
    for work in plan.deployments:
        name = work.deployment.release_name or work.deployment.id
        by_release.setdefault(name, []).append(work)
    pending: list[Future[Any]] = [
        pool.submit(_settle_in_turn, works, plan, context) for works in by_release.values()
    ]
    pending += [pool.submit(recorder.counted, "batches", _settle, s, context) for s in plan.steps]
    for future in pending:
        future.result()


def _settle_in_turn(works: Sequence[DeploymentWork], plan: Plan, context: Context) -> None:
    for work in works:
        context.recorder.counted("deployments", _settle_deployment, work, plan, context)


def _settle(step: Step, context: Context, *, alone: bool = True) -> list[Result]:
    """Executes one step (unless dry run) and emits one event per action. A step that is a
    unit of work of its own (``alone``: a batch, a check) not started before a stop was
    requested is skipped with the stop's reason; a deployment's steps all run once the
    deployment has started (README "Time limits": work in flight finishes)."""
    stopped = context.stop.reason() if alone else None
    if stopped is not None and step.run is not None:
        results = [skipped(stopped) if a.deletes else a.planned for a in step.actions]
    elif context.dry_run or step.run is None:
        results = [a.planned for a in step.actions]
    else:
        try:
            results = list(step.run())
        except Exception as exc:  # noqa: BLE001 - one broken step must not stop the others
            results = [failed(unexpected(exc))] * len(step.actions)
    for action, result in zip(step.actions, results, strict=True):
        context.recorder.action(action, result)
    return results


def _purge_action(work: DeploymentWork) -> Action:
    deployment = work.deployment
    fields: dict[str, Any] = {"id": deployment.id, "deleted_at": deployment.deleted_at}
    if work.adopted is not None:
        fields = {"adopted_orphan": True, "first_seen": work.adopted}
    return Action(
        "deployment.purge",
        deployment.release_name or deployment.id,
        PLANNED,
        deployment.release_name or None,
        fields,
    )


@dataclass(frozen=True)
class _Row:
    """What stands for a deployment in Houston: its row, or an adopted orphan's records."""

    lock: Callable[[psycopg.Connection[Any]], AbstractContextManager[bool]]
    purge: Callable[[psycopg.Connection[Any]], Result]
    table: sql.Composed
    waited: str
    gone: str
    """Why nothing is done when the lock finds it no longer to be swept."""


def _row(work: DeploymentWork, context: Context) -> _Row:
    deployment, settings = work.deployment, context.settings
    if work.adopted is None:
        return _Row(
            lock=lambda conn: houston.locked_if_expired(
                conn,
                context.table,
                deployment,
                now=context.now,
                retention_days=settings.retention_days,
            ),
            purge=lambda conn: houston.purge(conn, context.table, deployment),
            table=context.table.ident(),
            waited=f"the row of deployment {deployment.release_name or deployment.id} in "
            f"{context.table.table}",
            gone=NO_LONGER_EXPIRED,
        )
    records = assemble.orphan_records(settings)
    release = deployment.release_name
    return _Row(
        lock=lambda conn: orphan_records.locked_if_adopted(
            conn,
            release,
            records=records,
            table=context.table,
            cutoff=context.now - timedelta(days=settings.orphan_grace_days),
        ),
        purge=lambda conn: orphan_records.forget(conn, records, release),
        table=records.ident(),
        waited=f"the orphan records of release {release} in {records.table}",
        gone=NO_LONGER_ORPHAN,
    )


def _settle_deployment(work: DeploymentWork, plan: Plan, context: Context) -> None:
    purge = _purge_action(work)
    if work.blocked is not None:
        context.recorder.action(purge, skipped(work.blocked))
        return
    if work.denied is not None:
        for step in work.steps:
            _settle(step, context)
        context.recorder.action(purge, failed(work.denied))
        return
    stopped = context.stop.reason()
    if stopped is not None:
        _skip_all(work, purge, stopped, context)
        return
    if context.dry_run:
        results = [r for step in work.steps for r in _settle(step, context, alone=False)]
        reason = keep_reason(results, plan.purge_blocked)
        context.recorder.action(purge, skipped(reason) if reason else purge.planned)
        return
    if context.houston_pool is None:  # unreachable: real runs with deployments open it
        raise RuntimeError("no Houston connection pool")
    row = _row(work, context)
    # The purge is reported once its transaction committed: a row reported gone is gone.
    result: Result | None = None  # set once the row lock was taken and the steps settled
    try:
        with context.houston_pool.connection() as conn:
            try:
                with row.lock(conn) as still_expired:
                    if not still_expired:
                        _skip_steps(work, row.gone, context)
                        result = skipped(row.gone)
                    else:
                        results = [
                            r for step in work.steps for r in _settle(step, context, alone=False)
                        ]
                        reason = keep_reason(results, plan.purge_blocked)
                        result = skipped(reason) if reason else _remaining(work) or row.purge(conn)
            except psycopg.errors.LockNotAvailable:
                holders = postgres.table_holders(conn, row.table.as_string(conn))
                timeouts = assemble.pg_timeouts(context.settings)
                error = postgres.lock_wait(row.waited, timeouts, holders)
                _skip_steps(work, "the deployment row lock was not obtained", context)
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
        _skip_steps(work, "the deployment row lock was not obtained", context)
        return failed(error)
    if result.outcome == "done":
        # The COMMIT may have reached the server before the session died.
        return failed(f"{error}; the purge was not confirmed (the next run settles it)")
    return failed(f"{error}; the row stays")


def _skip_steps(work: DeploymentWork, reason: str, context: Context) -> None:
    for step in work.steps:
        for action in step.actions:
            context.recorder.action(action, skipped(reason) if action.deletes else action.planned)


def _skip_all(work: DeploymentWork, purge: Action, reason: str, context: Context) -> None:
    _skip_steps(work, reason, context)
    context.recorder.action(purge, skipped(reason))


def keep_reason(results: Sequence[Result], purge_blocked: str | None) -> str | None:
    """Why the row stays although this deployment was processed (README step 3): a
    resource not confirmed gone, else why no row may go in this run; None to purge."""
    left = [r.outcome for r in results if r.outcome not in GONE and r.outcome != "planned"]
    if left:
        counted = ", ".join(f"{left.count(o)} {o}" for o in sorted(set(left)))
        return f"not all resources are gone ({counted})"
    return purge_blocked


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
