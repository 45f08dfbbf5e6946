"""Settings become the Houston table, the clients and the sweepers of a run, in one place for
`run` and `check` alike (README "Configuration").

This is the only module that reads Settings on behalf of the sweepers: below it, every
module takes plain values, so the name and safety rules stay testable on their own. A run
imports only the sweepers and clients it uses (the Elasticsearch and Kubernetes clients
alone cost more than a logs-only run's work), so each builder imports its own.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from janitor import pushgateway
from janitor.config import Settings, Subsystem
from janitor.errors import ConfigurationError
from janitor.plan import DeploymentSweeper, Sweeper

if TYPE_CHECKING:
    import psycopg
    import requests
    from elasticsearch import Elasticsearch
    from kubernetes.client import ApiClient

    from janitor.backup import Backups
    from janitor.clients.backupstore import BackupStore
    from janitor.clients.registry import RegistryClient
    from janitor.houston import Table
    from janitor.orphan_records import Records
    from janitor.postgres import Timeouts
    from janitor.sweepers.databases import Protected
    from janitor.sweepers.orphans import Stores


@dataclass(frozen=True)
class Sweepers:
    """The sweepers a run uses, in the order their events are printed."""

    deployment: tuple[DeploymentSweeper, ...]
    standalone: tuple[Sweeper, ...]


@dataclass(frozen=True)
class _Run:
    """What the builders take besides the settings."""

    settings: Settings
    stack: ExitStack
    now: datetime
    houston: psycopg.Connection[Any] | None
    kube: ApiClient | None
    run_id: str = ""


def houston_table(settings: Settings) -> Table:
    from janitor.houston import Table

    columns = (settings.houston_id_column, settings.houston_release_column)
    return Table(
        settings.houston_schema, settings.houston_table, *columns, settings.houston_deleted_column
    )


def pg_timeouts(settings: Settings) -> Timeouts:
    """How long any PostgreSQL statement waits for a lock (README "Time limits")."""
    from janitor.postgres import Timeouts

    return Timeouts(lock_s=settings.lock_timeout_seconds)


def sweepers(
    settings: Settings,
    stack: ExitStack,
    *,
    now: datetime,
    houston: psycopg.Connection[Any] | None = None,
    kube: ApiClient | None = None,
    run_id: str = "",
) -> Sweepers:
    """Every sweeper ``settings.subsystems`` selects; nothing connects before a sweeper's
    ``plan`` or ``problems`` is called. ``houston``: the run's Houston connection, whose
    database and role no template may reach (``check`` drops nothing and needs none).
    ``run_id`` goes into the manifest of each final backup."""
    run = _Run(settings, stack, now, houston, kube, run_id)
    chosen = settings.subsystems
    deployment = [_DEPLOYMENT[s](run) for s in chosen if s in _DEPLOYMENT]
    standalone = [_STANDALONE[s](run) for s in chosen if s in _STANDALONE]
    # README "Sharding": backup retention is fleet-wide work, done by shard 0.
    if settings.backup_url is not None and "databases" in chosen and settings.shard.first:
        standalone.append(_backup_retention(run))
    return Sweepers(tuple(deployment), tuple(standalone))


def _databases(run: _Run) -> DeploymentSweeper:
    from janitor.sweepers import databases

    settings = run.settings
    return databases.sweeper(
        settings.airflow_conninfo() or "",
        settings.templates(),
        protected=_protected(run.houston),
        concurrency=settings.concurrency,
        stack=run.stack,
        timeouts=pg_timeouts(settings),
        backups=_backups(run),
    )


def backup_store(settings: Settings) -> BackupStore:
    """The store JANITOR_BACKUP_URL names (README "Final backups and restore")."""
    from janitor.clients.backupstore import open_store

    return open_store(settings.backup_url or "", endpoint_url=settings.backup_s3_endpoint_url)


def _backups(run: _Run) -> Backups | None:
    settings = run.settings
    if settings.backup_url is None:
        return None
    from janitor.backup import Backups

    return Backups(
        url=settings.backup_url,
        store=lambda: backup_store(settings),
        now=run.now,
        run_id=run.run_id,
    )


def _backup_retention(run: _Run) -> Sweeper:
    from janitor.houston import release_names
    from janitor.sweepers import backups

    settings, houston_conn = run.settings, run.houston

    def releases() -> frozenset[str]:
        if houston_conn is None:  # only `check` assembles without it, and it plans nothing
            raise RuntimeError("backup retention needs the Houston connection")
        return release_names(houston_conn, houston_table(settings))

    return backups.sweeper(
        lambda: backup_store(settings),
        settings.backup_url or "",
        now=run.now,
        retention_days=settings.backup_retention_days,
        releases=releases,
    )


def _registry(run: _Run) -> DeploymentSweeper:
    from janitor.sweepers import registry

    settings = run.settings
    return registry.sweeper(
        lambda: registry_client(settings),
        settings.templates(),
        concurrency=settings.concurrency,
        stack=run.stack,
    )


def _logs(run: _Run) -> Sweeper:
    from janitor.sweepers import logs

    settings = run.settings
    retention = logs.LogRetention(
        patterns=settings.log_index_patterns,
        retention_days=settings.log_retention_days,
        age_source=settings.log_age_source,
        timestring=settings.log_timestring,
    )
    url = settings.elasticsearch_url or ""
    return logs.sweeper(lambda: elasticsearch_client(settings), url, retention, run.now)


def _metrics(run: _Run) -> Sweeper:
    from janitor.redact import without_credentials
    from janitor.sweepers import metrics

    settings = run.settings
    expected = settings.metrics_retention_days
    if settings.prometheus_source == "kubernetes":
        namespace, name = settings.kubernetes_namespace or "", settings.prometheus_name
        kind = settings.prometheus_kind
        return metrics.sweeper(
            lambda: metrics.kubernetes_retention(
                run.kube or _kubeconfig_client(), namespace=namespace, name=name, kind=kind
            ),
            metrics.kubernetes_target(namespace=namespace, name=name, kind=kind),
            expected,
        )
    url = settings.prometheus_url or ""

    def read() -> metrics.Retention:
        return metrics.read_retention(prometheus_client(settings), url)

    return metrics.sweeper(read, without_credentials(url), expected)


_DEPLOYMENT: dict[Subsystem, Callable[[_Run], DeploymentSweeper]] = {
    "databases": _databases,
    "registry": _registry,
}
_STANDALONE: dict[Subsystem, Callable[[_Run], Sweeper]] = {"logs": _logs, "metrics": _metrics}


def orphan_stores(settings: Settings, houston: psycopg.Connection[Any]) -> Stores:
    """The stores an audit reads (README "Orphans: janitor audit"): the Airflow database
    server when the databases are swept, the registry when it is; ``houston`` is the
    connection whose database and role are protected."""
    from janitor import postgres
    from janitor.redact import without_credentials
    from janitor.sweepers.orphans import Stores

    chosen = settings.subsystems
    conninfo = settings.airflow_conninfo() or ""
    timeouts = pg_timeouts(settings)
    return Stores(
        airflow=(lambda: postgres.connect(conninfo, timeouts)) if "databases" in chosen else None,
        airflow_name=postgres.server_name(conninfo),
        protected=_protected(houston),
        registry=(lambda: registry_client(settings)) if "registry" in chosen else None,
        registry_name=without_credentials(settings.registry_url or ""),
        concurrency=settings.concurrency,
    )


def orphan_records(settings: Settings) -> Records:
    """The janitor's orphan records: in the Houston table's schema."""
    from janitor.orphan_records import Records

    return Records(settings.houston_schema)


def pushgateway_target(settings: Settings) -> pushgateway.Target | None:
    """Where a real run pushes its metrics (README "Run metrics"): grouped by the Houston
    database's name, and by shard when sharded (README "Sharding"); None for a dry run or
    without JANITOR_PUSHGATEWAY_URL."""
    if settings.pushgateway_url is None or settings.dry_run:
        return None
    from psycopg.conninfo import conninfo_to_dict

    conninfo = settings.houston_conninfo()
    database = conninfo_to_dict(conninfo).get("dbname") if conninfo is not None else None
    return pushgateway.Target(
        settings.pushgateway_url,
        str(database or pushgateway.DEFAULT_INSTANCE),
        float(settings.pushgateway_timeout_seconds),
        str(settings.shard) if settings.shard.sharded else None,
    )


def _protected(houston: psycopg.Connection[Any] | None) -> Protected:
    """The Houston database and the role the janitor logs in to it as: never dropped."""
    from psycopg.conninfo import conninfo_to_dict

    from janitor.sweepers.databases import Protected

    if houston is None:
        return Protected()
    user = conninfo_to_dict(houston.info.dsn).get("user") or houston.info.user
    return Protected(frozenset({houston.info.dbname}), frozenset({str(user)}))


def _basic_auth(settings: Settings, remote: str) -> dict[str, Any]:
    """A remote's user name, password and CA bundle, as its client takes them."""
    return {
        "username": getattr(settings, f"{remote}_username"),
        "password": settings.reveal(f"{remote}_password"),
        "ca_bundle": getattr(settings, f"{remote}_ca_bundle"),
    }


def registry_client(settings: Settings) -> RegistryClient:
    from janitor.clients.http import HttpOptions
    from janitor.clients.registry import connect_registry

    # The pool size is what bounds requests in flight (JANITOR_CONCURRENCY).
    options = HttpOptions(pool_size=settings.concurrency)
    token = settings.reveal("registry_token")
    auth = _basic_auth(settings, "registry")
    return connect_registry(settings.registry_url or "", token=token, options=options, **auth)


def elasticsearch_client(settings: Settings) -> Elasticsearch:
    from janitor.clients.elasticsearch import connect_elasticsearch

    api_key = settings.reveal("elasticsearch_api_key")
    auth = _basic_auth(settings, "elasticsearch")
    return connect_elasticsearch(settings.elasticsearch_url or "", api_key=api_key, **auth)


def prometheus_client(settings: Settings) -> requests.Session:
    from janitor.clients.prometheus import connect_prometheus

    return connect_prometheus(
        token=settings.reveal("prometheus_token"), **_basic_auth(settings, "prometheus")
    )


def _kubeconfig_client() -> ApiClient:
    """Outside a cluster (an operator's shell), the current kubeconfig context."""
    import kubernetes.config

    try:
        # Untyped in kubernetes 37; its stubs (used with kubernetes < 37) type it.
        return kubernetes.config.new_client_from_config()  # type: ignore[no-untyped-call, no-any-return, unused-ignore]
    except (kubernetes.config.ConfigException, OSError) as exc:
        raise ConfigurationError(
            f"JANITOR_PROMETHEUS_SOURCE=kubernetes outside a cluster needs a kubeconfig ({exc})"
        ) from None
