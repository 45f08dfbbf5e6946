"""One run: lock, plan, guard, execute, summarise (README "What one run does").

Data flows one way: settings → sources → plan → executor → events. Dry run is the same
path with execution skipped. The runner knows the run lock, the plan and the recorder; the
Houston side (the fleet, row locks, purges) is janitor.deployments, loaded only with a
Houston DSN; steps are executed by janitor.executor; every sweeper reaches it through one
contract (janitor.plan.Sweeper and DeploymentSweeper), built from settings by janitor.assemble.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from janitor import __version__, assemble, pushgateway
from janitor.config import Settings
from janitor.errors import ConfigurationError, ExitCode
from janitor.events import Log, Progress, Recorder, run_id_of
from janitor.executor import Context, contained, purge_action, settle
from janitor.plan import (
    Action,
    DeploymentWork,
    Plan,
    Step,
    Sweeper,
    final,
    guard_refusal,
    skipped,
    unexpected,
)
from janitor.stopping import DEADLINE_REACHED, TERMINATED, Stop

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from janitor.deployments import Session

    Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


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
    except Exception as exc:  # noqa: BLE001 - README: run.finished is always the last line
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
    """What ``run.finished`` says of what ended the run: a Houston failure worded as such,
    a KubernetesError's message (it names the API and the status), else the exception."""
    # Only a run that loaded these modules can have raised their errors; a run that never
    # needed them does not load them for its last line.
    if "janitor.deployments" in sys.modules:
        from janitor.deployments import describe  # noqa: PLC0415 - loaded already

        houston_error = describe(exc)
        if houston_error is not None:
            return houston_error
    if "janitor.lease" in sys.modules:
        from janitor.lease import KubernetesError  # noqa: PLC0415 - loaded already

        if isinstance(exc, KubernetesError):
            return str(exc)
    return unexpected(exc)


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
    settings: Settings, session: Session | None, now: datetime, ending: _Ending
) -> None:
    """Counts the rows still past the window once the run is done, when they are pushed."""
    if session is None or assemble.pushgateway_target(settings) is None:
        return
    try:
        ending.expired_remaining = session.count_expired(now)
    except Exception as exc:  # noqa: BLE001 - the run's work is done: this costs only the metric
        ending.count_error = (
            "janitor_expired_deployments_remaining not pushed: could not count the expired "
            f"rows ({_run_error(exc)})"
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
        session = _houston_session(settings, stack)
        # README "Time": one now per run, from the database server when there is one.
        now = session.now() if session is not None else clock()
        if not dry_run and not _take_locks(
            settings, stack, session, kube=kube, clock=clock, recorder=recorder
        ):
            ending.locked_out = True
            return
        workers = stack.enter_context(ThreadPoolExecutor(settings.concurrency, "janitor"))
        run_id = run_id_of(recorder.log)
        sweepers = assemble.sweepers(
            settings,
            stack,
            now=now,
            houston=session.conn if session is not None else None,
            kube=kube,
            run_id=run_id,
        )
        plan = build_plan(settings, sweepers, session, now=now, stop=stop)
        refusal = guard_refusal(plan, settings.max_deletions)
        if refusal is not None:
            _refuse(plan, recorder, refusal)
            ending.code = ExitCode.GUARD_REFUSED
            _count_expired(settings, session, now, ending)
            return
        context = Context(settings, now, dry_run, recorder, workers, stop)
        execute(plan, context, _deployment_settler(plan, context, session, stack))
        _count_expired(settings, session, now, ending)
        counts = recorder.counts()
        for sweeper in sweepers.deployment:
            ending.notes |= sweeper.notes(counts)
    outcomes = recorder.outcomes()
    if "failed" in outcomes:
        ending.code = ExitCode.FAILED
    elif "mismatch" in outcomes:
        ending.code = ExitCode.RETENTION_MISMATCH


def _houston_session(settings: Settings, stack: ExitStack) -> Session | None:
    conninfo = settings.houston_conninfo()
    if conninfo is None:
        return None
    # Here, not at the top: a logs- or metrics-only run never loads libpq (README
    # "Benchmarks": start-up).
    from janitor.deployments import open_session  # noqa: PLC0415

    return open_session(settings, stack, conninfo)


def _deployment_settler(
    plan: Plan, context: Context, session: Session | None, stack: ExitStack
) -> Callable[[DeploymentWork], None]:
    """How one deployment of ``plan`` is settled; a real run opens the Houston pool whose
    sessions hold the row locks."""
    if session is None or not plan.deployments:
        return _no_deployments
    from janitor.deployments import settle as settle_deployment  # noqa: PLC0415 - as above

    pool = session.open_pool(stack) if not context.dry_run else None
    return lambda work: settle_deployment(work, plan, context, session, pool)


def _no_deployments(work: DeploymentWork) -> None:
    raise RuntimeError(f"deployment {work.deployment.id} planned without a Houston database")


def _take_locks(
    settings: Settings,
    stack: ExitStack,
    session: Session | None,
    *,
    kube: ApiClient | None,
    clock: Clock,
    recorder: Recorder,
) -> bool:
    """README step 1: the advisory run lock on Houston and, in a cluster, the Lease, held
    until ``stack`` closes. False (after ``run.skipped``) when another run holds one."""
    shard = settings.shard
    if session is not None and not session.take_run_lock(stack, recorder.log):
        return False
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
    session: Session | None,
    *,
    now: datetime,
    stop: Stop,
) -> Plan:
    """Asks every sweeper for its plan. A sweeper that cannot even read its world reports
    one failed event and, for a deployment sweeper, blocks every purge; the others run.
    Once ``stop`` is requested, no further sweeper starts reading (one skipped event each;
    the deployments are skipped when executed)."""
    works: tuple[DeploymentWork, ...] = ()
    steps: list[Step] = []
    blocked = list(settings.unswept_reasons())
    if session is not None and sweepers.deployment:
        from janitor.deployments import plan_fleet  # noqa: PLC0415 - loaded with the session

        fleet = plan_fleet(session, sweepers.deployment, now=now, stop=stop)
        works, blocked = fleet.works, blocked + list(fleet.unswept)
        steps += fleet.steps
    for standalone in sweepers.standalone:
        stopped = stop.reason()
        if stopped is None:
            steps += _standalone_plan(standalone)
        else:
            steps.append(final(Action(standalone.event, standalone.subsystem, skipped(stopped))))
    purge_blocked = ", ".join(blocked) if blocked else None
    return Plan(deployments=works, steps=tuple(steps), purge_blocked=purge_blocked)


def _standalone_plan(sweeper: Sweeper) -> list[Step]:
    with contained(sweeper.event, sweeper.subsystem) as failure:
        return sweeper.plan()
    return list(failure)


def _refuse(plan: Plan, recorder: Recorder, refusal: str) -> None:
    """README exit 4: nothing changes; every planned deletion is reported as refused."""
    for action in plan.actions():
        recorder.action(action, skipped(refusal) if action.deletes else action.planned)
    for work in plan.deployments:
        recorder.action(purge_action(work), skipped(refusal))


def execute(
    plan: Plan, context: Context, settle_deployment: Callable[[DeploymentWork], None]
) -> None:
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
        pool.submit(_settle_in_turn, works, recorder, settle_deployment)
        for works in by_release.values()
    ]
    pending += [pool.submit(recorder.counted, "batches", settle, s, context) for s in plan.steps]
    for future in pending:
        future.result()


def _settle_in_turn(
    works: Sequence[DeploymentWork],
    recorder: Recorder,
    settle_deployment: Callable[[DeploymentWork], None],
) -> None:
    for work in works:
        recorder.counted("deployments", settle_deployment, work)
