"""One run: lock, plan, guard, execute, summarise (SPEC.md "What one run does").

Data flows one way: settings → sources → plan → executor → events. Dry run is the same
path with execution skipped.
"""

from __future__ import annotations

import socket
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import kubernetes.config
import psycopg
import urllib3
from elastic_transport import TransportError
from elasticsearch import ApiError
from kubernetes.client import ApiClient, CoordinationV1Api, CoreV1Api
from kubernetes.client.exceptions import ApiException
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from janitor import __version__, houston, redact
from janitor.clients.elasticsearch import describe as describe_es_error
from janitor.clients.elasticsearch import verify_elasticsearch
from janitor.config import Settings
from janitor.errors import ConfigurationError
from janitor.events import Log, Recorder
from janitor.lease import hold_lease, post_run_event
from janitor.plan import (
    PLANNED,
    Action,
    Deployment,
    DeploymentWork,
    Plan,
    Result,
    Step,
    failed,
    final,
    guard_refusal,
    skipped,
)
from janitor.remotes import elasticsearch_client, prometheus_client, registry_client
from janitor.stopping import Stop
from janitor.sweepers import databases, logs, metrics, registry

Clock = Callable[[], datetime]
GONE = frozenset({"done", "absent"})
NO_LONGER_EXPIRED = "deployment was restored or is no longer past the retention window"
ROW_LOCKED = "deployment row is locked by another transaction"


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


def open_pool(conninfo: str, size: int, name: str) -> ConnectionPool[psycopg.Connection[Any]]:
    return ConnectionPool(
        conninfo,
        min_size=1,
        max_size=size,
        kwargs={"autocommit": True, "application_name": "astro-janitor"},
        configure=houston.configure,
        name=name,
        open=True,
    )


def run(
    settings: Settings,
    log: Log,
    *,
    clock: Clock = utc_now,
    kube: ApiClient | None = None,
    stop: Stop | None = None,
) -> int:
    """Performs one run and returns its exit code; run.finished is always the last line,
    whatever is raised (a bug included: exit 1 with the error and where it was raised).

    ``clock`` is the pod's clock (used only without a Houston database, and for the Lease);
    ``kube`` is the Kubernetes API client when running in a cluster; once ``stop`` is
    requested (SIGTERM), no new work starts and the run ends with exit 1.
    """
    stop = stop if stop is not None else Stop()
    started = time.monotonic()
    recorder = Recorder(log)
    log.info(
        "run.started",
        version=__version__,
        subsystems=list(settings.subsystems),
        config=settings.summary(),
    )
    error: str | None = None
    raised_at: str | None = None
    try:
        code = _run(settings, recorder, clock, kube, stop)
    except ConfigurationError as exc:
        code, error = 2, str(exc)
    except psycopg.Error as exc:
        code, error = 1, f"Houston database: {houston.describe(exc)}"
    except (ApiException, urllib3.exceptions.HTTPError) as exc:
        code, error = 1, f"Kubernetes API: {_kubernetes_error(exc)}"
    except Exception as exc:  # noqa: BLE001 - SPEC.md: run.finished is always the last line
        code, error = 1, f"unexpected error: {type(exc).__name__}: {exc}"
        raised_at = _raised_at(exc)
    stopped = stop.reason()
    if stopped is not None and code in (0, 3):
        code = 1  # work was left undone on purpose: not a success
    finished: dict[str, Any] = {
        "counts": recorder.counts(),
        "exit_code": code,
        "duration_s": round(time.monotonic() - started, 3),
    }
    if error is not None:
        finished["error"] = error
    if raised_at is not None:
        finished["raised_at"] = raised_at
    if stopped is not None:
        finished["reason"] = stopped
    if registry.garbage_collect_due(finished["counts"]):
        finished["registry_garbage_collect"] = registry.GARBAGE_COLLECT_DUE
    event_error = _post_summary_event(settings, kube, finished, code)
    if event_error is not None:
        finished["kubernetes_event_error"] = event_error
    (log.error if code in (1, 2) else log.info)("run.finished", **finished)
    return code


def _raised_at(exc: BaseException) -> str:
    """Where ``exc`` was raised, as ``file:line in function`` (no message: it may quote data)."""
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    return f"{frame.filename}:{frame.lineno} in {frame.name}"


def _kubernetes_error(exc: Exception) -> str:
    if isinstance(exc, ApiException):
        return f"{exc.status} {exc.reason}"
    return str(exc)


def _post_summary_event(
    settings: Settings, kube: ApiClient | None, finished: dict[str, Any], code: int
) -> str | None:
    """The optional Event on the CronJob; its failure never changes the run's exit code."""
    namespace, cronjob = settings.lease_namespace, settings.cronjob_name
    if kube is None or not settings.kubernetes_events or not namespace or not cronjob:
        return None
    try:
        post_run_event(
            CoreV1Api(kube),
            namespace=namespace,
            cronjob_name=cronjob,
            summary=finished | {"dry_run": settings.dry_run},
            exit_code=code,
        )
    except (ApiException, urllib3.exceptions.HTTPError) as exc:
        return _kubernetes_error(exc)
    return None


def _run(
    settings: Settings, recorder: Recorder, clock: Clock, kube: ApiClient | None, stop: Stop
) -> int:
    dry_run = settings.dry_run
    with ExitStack() as stack:
        conninfo = settings.houston_conninfo()
        main = stack.enter_context(houston.connect(conninfo)) if conninfo else None
        # SPEC.md "Time": one now per run, from the database server when there is one.
        now = houston.server_now(main) if main is not None else clock()
        if main is not None and not dry_run:
            if not houston.try_run_lock(main):
                recorder.log.info("run.skipped", reason="another run holds the run lock")
                return 0
            stack.callback(houston.release_run_lock, main)
        if kube is not None and settings.lease_namespace and not dry_run:
            # SPEC.md step 1: in a cluster, also a Lease, so a manual Job and the scheduled
            # one never work at once (even against different Houston databases).
            held = stack.enter_context(
                hold_lease(
                    CoordinationV1Api(kube),
                    namespace=settings.lease_namespace,
                    name=settings.lease_name,
                    holder=settings.pod_name or socket.gethostname(),
                    duration_s=settings.lease_duration_seconds,
                    clock=clock,
                )
            )
            if not held:
                reason = (
                    f"another run holds the lease {settings.lease_namespace}/{settings.lease_name}"
                )
                recorder.log.info("run.skipped", reason=reason)
                return 0
        workers = stack.enter_context(ThreadPoolExecutor(settings.concurrency, "janitor"))
        table = houston.table_of(settings)
        plan = build_plan(settings, stack, main, table, now, kube=kube)
        refusal = guard_refusal(plan, settings.max_deletions)
        if refusal is not None:
            _refuse(plan, recorder, refusal)
            return 4
        pool = None
        if plan.deployments and not dry_run and conninfo is not None:
            pool = stack.enter_context(open_pool(conninfo, settings.concurrency, "houston"))
        context = Context(settings, table, now, dry_run, recorder, pool, workers, stop)
        execute(plan, context)
    outcomes = recorder.outcomes()
    if "failed" in outcomes:
        return 1
    if "mismatch" in outcomes:
        return 3
    return 0


def build_plan(
    settings: Settings,
    stack: ExitStack,
    main: psycopg.Connection[Any] | None,
    table: houston.Table,
    now: datetime,
    *,
    kube: ApiClient | None = None,
) -> Plan:
    """Asks every selected sweeper for its steps. A sweeper that cannot even read its
    world reports one failed event and blocks every purge; the others still run."""
    subsystems = settings.subsystems
    works: list[DeploymentWork] = []
    steps: list[Step] = []
    blocked: list[str] = []
    if main is not None and ("databases" in subsystems or "registry" in subsystems):
        fleet = houston.read_fleet(
            main,
            table,
            now=now,
            retention_days=settings.retention_days,
            refusal=settings.templates().refusal,
        )
        works = [DeploymentWork(d) for d in fleet.expired]
        works += [DeploymentWork(r.deployment, blocked=r.reason) for r in fleet.rejected]
        expired = [w.deployment for w in works if w.blocked is None]
        if "databases" not in subsystems:
            blocked.append("databases not swept")
        elif expired:
            try:
                works = _attach(works, _plan_databases(settings, stack, main, expired))
            except psycopg.Error as exc:
                steps.append(_sweep_failure("database.drop", _server(settings), exc))
                blocked.append("databases could not be swept")
        if "registry" in subsystems and expired:
            registry_work = _plan_registry(settings, stack, expired)
            works = _attach(
                works,
                {key: work.steps for key, work in registry_work.items()},
                {key: work.remaining for key, work in registry_work.items()},
            )
        if "registry" not in subsystems and not settings.registry_swept_by_definition:
            blocked.append("registry not swept")
    if "logs" in subsystems:
        target = ",".join(settings.log_index_patterns)
        steps += _contained(logs.EVENT, target, lambda: _plan_logs(settings, now))
    if "metrics" in subsystems:
        target = redact.display_url(settings.prometheus_url or "kubernetes")
        steps += _contained(metrics.EVENT, target, lambda: _plan_metrics(settings, kube))
    purge_blocked = ", ".join(blocked) if blocked else None
    return Plan(deployments=tuple(works), steps=tuple(steps), purge_blocked=purge_blocked)


def _contained(event: str, target: str, plan: Callable[[], list[Step]]) -> list[Step]:
    """A standalone sweeper's plan; whatever else it raises (an answer of a shape nobody
    expected, a bug) fails that sweeper's one event instead of stopping the whole run."""
    try:
        return plan()
    except ConfigurationError:
        raise
    except Exception as exc:  # noqa: BLE001 - one broken sweeper must not stop the others
        error = f"unexpected error: {type(exc).__name__}: {exc} (at {_raised_at(exc)})"
        return [final(Action(event, target, failed(error)))]


def _attach(
    works: list[DeploymentWork],
    steps: Mapping[str, tuple[Step, ...]],
    remaining: Mapping[str, Callable[[], str | None]] | None = None,
) -> list[DeploymentWork]:
    """Appends one sweeper's steps (and its post-check) to each deployment's work."""
    probes = remaining or {}
    return [
        replace(
            w,
            steps=w.steps + steps.get(w.deployment.id, ()),
            remaining=w.remaining + tuple(p for p in [probes.get(w.deployment.id)] if p),
        )
        for w in works
    ]


def _plan_registry(
    settings: Settings, stack: ExitStack, expired: list[Deployment]
) -> dict[str, registry.RegistryWork]:
    client = registry_client(settings)
    stack.callback(client.close)
    # Its own pool: deployment workers wait on these requests, so they must not share one.
    http_pool = stack.enter_context(ThreadPoolExecutor(settings.concurrency, "registry"))
    return registry.plan_registry(client, expired, settings.templates(), http_pool)


def _sweep_failure(event: str, target: str, exc: psycopg.Error) -> Step:
    return final(Action(event, target, failed(houston.describe(exc))))


def _server(settings: Settings) -> str:
    """The Airflow database server as host:port/dbname, for events (no credentials)."""
    parts = conninfo_to_dict(settings.airflow_conninfo() or "")
    return f"{parts.get('host', 'localhost')}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"


def _plan_logs(settings: Settings, now: datetime) -> list[Step]:
    """Log indices past the window; an Elasticsearch that is not one is exit 2 (raised)."""
    url = settings.elasticsearch_url or ""
    es = elasticsearch_client(settings)
    try:
        verify_elasticsearch(es, url)
        return logs.plan_logs(
            es,
            patterns=settings.log_index_patterns,
            retention_days=settings.log_retention_days,
            age_source=settings.log_age_source,
            timestring=settings.log_timestring,
            now=now,
        )
    except (ApiError, TransportError) as exc:
        target = ",".join(settings.log_index_patterns)
        return [final(Action(logs.EVENT, target, failed(describe_es_error(exc))))]


def _plan_metrics(settings: Settings, kube: ApiClient | None) -> list[Step]:
    if settings.prometheus_source == "kubernetes":
        return metrics.check_kubernetes_metrics(
            kube or _kubeconfig_client(),
            namespace=settings.kubernetes_namespace or "",
            name=settings.prometheus_name,
            kind=settings.prometheus_kind,
            expected_days=settings.metrics_retention_days,
        )
    url = settings.prometheus_url
    if url is None:  # unreachable: the metrics subsystem requires a source
        raise ConfigurationError("JANITOR_PROMETHEUS_URL: not configured")
    client = prometheus_client(settings)
    return metrics.check_metrics(client, url=url, expected_days=settings.metrics_retention_days)


def _kubeconfig_client() -> ApiClient:
    """Outside a cluster (an operator's shell), the current kubeconfig context."""
    try:
        return kubernetes.config.new_client_from_config()  # type: ignore[no-untyped-call, no-any-return]
    except (kubernetes.config.ConfigException, OSError) as exc:
        raise ConfigurationError(
            f"JANITOR_PROMETHEUS_SOURCE=kubernetes outside a cluster needs a kubeconfig ({exc})"
        ) from None


def _plan_databases(
    settings: Settings,
    stack: ExitStack,
    main: psycopg.Connection[Any],
    expired: list[Deployment],
) -> dict[str, tuple[Step, ...]]:
    conninfo = settings.airflow_conninfo()
    if conninfo is None:  # unreachable: the databases subsystem requires a Houston DSN
        raise ConfigurationError("JANITOR_AIRFLOW_DSN: not configured")
    # A direct connection fails fast with the server's own words; a pool would only time out.
    houston.connect(conninfo).close()
    pool = stack.enter_context(open_pool(conninfo, settings.concurrency, "airflow"))
    naming = settings.templates()
    houston_user = conninfo_to_dict(main.info.dsn).get("user") or main.info.user
    server = databases.inspect_server(
        pool.connection,
        conninfo,
        naming,
        expired,
        protected_databases=frozenset({main.info.dbname}),
        protected_roles=frozenset({str(houston_user)}),
    )
    return databases.plan_databases(server, naming, expired)


def _refuse(plan: Plan, recorder: Recorder, refusal: str) -> None:
    """SPEC.md exit 4: nothing changes; every planned deletion is reported as refused."""
    for action in plan.actions():
        recorder.action(action, skipped(refusal) if action.deletes else action.planned)
    for work in plan.deployments:
        recorder.action(_purge_action(work.deployment), skipped(refusal))


def execute(plan: Plan, context: Context) -> None:
    pool = context.workers
    pending: list[Future[Any]] = [
        pool.submit(_settle_deployment, w, plan, context) for w in plan.deployments
    ]
    pending += [pool.submit(_settle, s, context) for s in plan.steps]
    for future in pending:
        future.result()


def _settle(step: Step, context: Context) -> list[Result]:
    """Executes one step (unless dry run) and emits one event per action; a step not
    started before a stop was requested is skipped with the stop's reason."""
    stopped = context.stop.reason()
    if stopped is not None and step.run is not None:
        results = [skipped(stopped) if a.deletes else a.planned for a in step.actions]
    elif context.dry_run or step.run is None:
        results = [a.planned for a in step.actions]
    else:
        try:
            results = list(step.run())
        except Exception as exc:  # noqa: BLE001 - one broken step must not stop the others
            results = [failed(f"unexpected error: {exc!r}")] * len(step.actions)
    for action, result in zip(step.actions, results, strict=True):
        context.recorder.action(action, result)
    return results


def _purge_action(deployment: Deployment) -> Action:
    return Action(
        "deployment.purge",
        deployment.release_name or deployment.id,
        PLANNED,
        deployment.release_name or None,
        {"id": deployment.id, "deleted_at": deployment.deleted_at},
    )


def _settle_deployment(work: DeploymentWork, plan: Plan, context: Context) -> None:
    purge = _purge_action(work.deployment)
    if work.blocked is not None:
        context.recorder.action(purge, skipped(work.blocked))
        return
    stopped = context.stop.reason()
    if stopped is not None:
        _skip_all(work, purge, stopped, context)
        return
    if context.dry_run:
        results = [r for step in work.steps for r in _settle(step, context)]
        reason = _keep_reason(results, plan.purge_blocked)
        context.recorder.action(purge, skipped(reason) if reason else purge.planned)
        return
    if context.houston_pool is None:  # unreachable: real runs with deployments open it
        raise RuntimeError("no Houston connection pool")
    with context.houston_pool.connection() as conn:
        try:
            with houston.locked_if_expired(
                conn,
                context.table,
                work.deployment,
                now=context.now,
                retention_days=context.settings.retention_days,
            ) as still_expired:
                if not still_expired:
                    _skip_all(work, purge, NO_LONGER_EXPIRED, context)
                    return
                results = [r for step in work.steps for r in _settle(step, context)]
                reason = _keep_reason(results, plan.purge_blocked) or _remaining(work)
                result = (
                    skipped(reason)
                    if reason
                    else houston.purge(conn, context.table, work.deployment)
                )
                context.recorder.action(purge, result)
        except psycopg.errors.LockNotAvailable:
            _skip_all(work, purge, ROW_LOCKED, context)


def _skip_all(work: DeploymentWork, purge: Action, reason: str, context: Context) -> None:
    for step in work.steps:
        for action in step.actions:
            context.recorder.action(action, skipped(reason) if action.deletes else action.planned)
    context.recorder.action(purge, skipped(reason))


def _keep_reason(results: Sequence[Result], purge_blocked: str | None) -> str | None:
    """Why the row stays although this deployment was processed (SPEC.md step 3)."""
    left = [r.outcome for r in results if r.outcome not in GONE and r.outcome != "planned"]
    if left:
        counted = ", ".join(f"{left.count(o)} {o}" for o in sorted(set(left)))
        return f"not all resources are gone ({counted})"
    return purge_blocked


def _remaining(work: DeploymentWork) -> str | None:
    for probe in work.remaining:
        still_there = probe()
        if still_there:
            return still_there
    return None
