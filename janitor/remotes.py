"""The clients of a run, built from Settings in one place for `run` and `check` alike."""

from __future__ import annotations

import requests
from elasticsearch import Elasticsearch

from janitor.clients.elasticsearch import connect_elasticsearch
from janitor.clients.http import HttpOptions
from janitor.clients.registry import RegistryClient, connect_registry
from janitor.config import Settings
from janitor.sweepers.metrics import connect_prometheus


def registry_client(settings: Settings) -> RegistryClient:
    return connect_registry(
        settings.registry_url or "",
        username=settings.registry_username,
        password=settings.reveal("registry_password"),
        token=settings.reveal("registry_token"),
        ca_bundle=settings.registry_ca_bundle,
        # The pool size is what bounds requests in flight (JANITOR_CONCURRENCY).
        options=HttpOptions(pool_size=settings.concurrency),
    )


def elasticsearch_client(settings: Settings) -> Elasticsearch:
    return connect_elasticsearch(
        settings.elasticsearch_url or "",
        username=settings.elasticsearch_username,
        password=settings.reveal("elasticsearch_password"),
        api_key=settings.reveal("elasticsearch_api_key"),
        ca_bundle=settings.elasticsearch_ca_bundle,
    )


def prometheus_client(settings: Settings) -> requests.Session:
    return connect_prometheus(
        settings.prometheus_url or "",
        username=settings.prometheus_username,
        password=settings.reveal("prometheus_password"),
        token=settings.reveal("prometheus_token"),
        ca_bundle=settings.prometheus_ca_bundle,
    )
