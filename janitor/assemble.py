"""Settings become the Houston table, the clients and the sweepers of a run, in one place for
`run` and `check` alike (README "Configuration").

This is the only module that reads Settings on behalf of the sweepers: below it, every
module takes plain values, so the name and safety rules stay testable on their own.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from janitor.clients.elasticsearch import connect_elasticsearch
from janitor.clients.http import HttpOptions
from janitor.clients.prometheus import connect_prometheus
from janitor.clients.registry import RegistryClient, connect_registry
from janitor.config import Settings
from janitor.errors import ConfigurationError
from janitor.houston import Table
from janitor.plan import DeploymentSweeper, Sweeper
from janitor.postgres import Timeouts
from janitor.redact import without_credentials
from janitor.sweepers import databases, logs, metrics, registry

if TYPE_CHECKING:
    import requests
    from elasticsearch import Elasticsearch
    from kubernetes.client import ApiClient


@dataclass(frozen=True)
class Sweepers:
    """The sweepers a run uses, in the order their events are printed."""

    deployment: tuple[DeploymentSweeper, ...]
    standalone: tuple[Sweeper, ...]


def houston_table(settings: Settings) -> Table:
    columns = (settings.houston_id_column, settings.houston_release_column)
    return Table(
        settings.houston_schema, settings.houston_table, *columns, settings.houston_deleted_column
    )


def pg_timeouts(settings: Settings) -> Timeouts:
    """How long any PostgreSQL statement waits for a lock (README "Time limits")."""
    return Timeouts(lock_s=settings.lock_timeout_seconds)


def sweepers(
    settings: Settings,
    stack: ExitStack,
    *,
    now: datetime,
    houston: psycopg.Connection[Any] | None = None,
    kube: ApiClient | None = None,
) -> Sweepers:
    """Every sweeper ``settings.subsystems`` selects; nothing connects before a sweeper's
    ``plan`` or ``problems`` is called. ``houston``: the run's Houston connection, whose
    database and role no template may reach (``check`` drops nothing and needs none)."""
    chosen = settings.subsystems
    deployment: list[DeploymentSweeper] = []
    standalone: list[Sweeper] = []
    airflow = settings.airflow_conninfo()
    if "databases" in chosen and airflow is not None:
        deployment.append(
            databases.sweeper(
                airflow,
                settings.templates(),
                protected=_protected(houston),
                concurrency=settings.concurrency,
                stack=stack,
                timeouts=pg_timeouts(settings),
            )
        )
    if "registry" in chosen:
        deployment.append(
            registry.sweeper(
                lambda: registry_client(settings),
                settings.templates(),
                concurrency=settings.concurrency,
                stack=stack,
            )
        )
    if "logs" in chosen:
        retention = logs.LogRetention(
            patterns=settings.log_index_patterns,
            retention_days=settings.log_retention_days,
            age_source=settings.log_age_source,
            timestring=settings.log_timestring,
        )
        url = settings.elasticsearch_url or ""
        standalone.append(logs.sweeper(lambda: elasticsearch_client(settings), url, retention, now))
    if "metrics" in chosen:
        standalone.append(_metrics(settings, kube))
    return Sweepers(tuple(deployment), tuple(standalone))


def _protected(houston: psycopg.Connection[Any] | None) -> databases.Protected:
    """The Houston database and the role the janitor logs in to it as: never dropped."""
    if houston is None:
        return databases.Protected()
    user = conninfo_to_dict(houston.info.dsn).get("user") or houston.info.user
    return databases.Protected(frozenset({houston.info.dbname}), frozenset({str(user)}))


def _metrics(settings: Settings, kube: ApiClient | None) -> Sweeper:
    expected = settings.metrics_retention_days
    if settings.prometheus_source == "kubernetes":
        namespace, name = settings.kubernetes_namespace or "", settings.prometheus_name
        kind = settings.prometheus_kind
        return metrics.sweeper(
            lambda: metrics.kubernetes_retention(
                kube or _kubeconfig_client(), namespace=namespace, name=name, kind=kind
            ),
            metrics.kubernetes_target(namespace=namespace, name=name, kind=kind),
            expected,
        )
    url = settings.prometheus_url or ""

    def read() -> metrics.Retention:
        return metrics.read_retention(prometheus_client(settings), url)

    return metrics.sweeper(read, without_credentials(url), expected)


def _basic_auth(settings: Settings, remote: str) -> dict[str, Any]:
    """A remote's user name, password and CA bundle, as its client takes them."""
    return {
        "username": getattr(settings, f"{remote}_username"),
        "password": settings.reveal(f"{remote}_password"),
        "ca_bundle": getattr(settings, f"{remote}_ca_bundle"),
    }


def registry_client(settings: Settings) -> RegistryClient:
    # The pool size is what bounds requests in flight (JANITOR_CONCURRENCY).
    options = HttpOptions(pool_size=settings.concurrency)
    token = settings.reveal("registry_token")
    auth = _basic_auth(settings, "registry")
    return connect_registry(settings.registry_url or "", token=token, options=options, **auth)


def elasticsearch_client(settings: Settings) -> Elasticsearch:
    api_key = settings.reveal("elasticsearch_api_key")
    auth = _basic_auth(settings, "elasticsearch")
    return connect_elasticsearch(settings.elasticsearch_url or "", api_key=api_key, **auth)


def prometheus_client(settings: Settings) -> requests.Session:
    return connect_prometheus(
        token=settings.reveal("prometheus_token"), **_basic_auth(settings, "prometheus")
    )


def _kubeconfig_client() -> ApiClient:
    """Outside a cluster (an operator's shell), the current kubeconfig context."""
    import kubernetes.config  # noqa: PLC0415 - the Kubernetes client is heavy: only when used

    try:
        return kubernetes.config.new_client_from_config()  # type: ignore[no-untyped-call, no-any-return]
    except (kubernetes.config.ConfigException, OSError) as exc:
        raise ConfigurationError(
            f"JANITOR_PROMETHEUS_SOURCE=kubernetes outside a cluster needs a kubeconfig ({exc})"
        ) from None
