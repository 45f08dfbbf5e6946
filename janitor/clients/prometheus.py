"""The Prometheus HTTP API, as the retention check reads it: one session with the shared
retries, basic auth or a bearer token, and the ``data`` of a status answer (Prometheus docs,
"HTTP API": Status endpoints).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import requests

from janitor.clients.http import (
    HttpOptions,
    describe_transport_error,
    make_session,
    retry_after_note,
    tls_port_hint,
)
from janitor.redact import without_credentials

# A check is one cheap GET; a Prometheus that is down should fail the event quickly, not
# hold the run through the deletion-sized retry budget.
PROMETHEUS_HTTP = HttpOptions(
    retries=2, backoff_factor_s=0.2, backoff_max_s=5.0, wait_budget_s=10.0, read_timeout_s=10.0
)
SETTING = "JANITOR_PROMETHEUS"


class PrometheusError(Exception):
    """A status endpoint could not be read; the message names the URL (no credentials)
    and what to check."""


class EndpointMissing(PrometheusError):
    """404: the endpoint does not exist (an older server, or a wrong route prefix)."""


def connect_prometheus(
    *,
    username: str | None,
    password: str | None,
    token: str | None,
    ca_bundle: Path | None,
) -> requests.Session:
    """A session for a Prometheus server: basic auth or a static bearer token (e.g. for an
    auth proxy in front of it), and the CA bundle its TLS certificate chains to."""
    session = make_session(replace(PROMETHEUS_HTTP, ca_bundle=ca_bundle))
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    elif username:
        session.auth = (username, password or "")
    return session


def api_data(session: requests.Session, url: str, path: str) -> dict[str, Any]:
    """The ``data`` object of the answer to ``GET <url><path>``; PrometheusError otherwise."""
    where = without_credentials(url).rstrip("/") + path
    try:
        response = session.get(url.rstrip("/") + path)
    except requests.RequestException as exc:
        raise PrometheusError(describe_transport_error(exc, SETTING)) from exc
    status = response.status_code
    wrong_scheme = tls_port_hint(response, SETTING)
    if wrong_scheme is not None:
        raise PrometheusError(wrong_scheme)
    if status in (401, 403):
        raise PrometheusError(
            f"{where} answered HTTP {status} {response.reason}: the credentials "
            "(JANITOR_PROMETHEUS_USERNAME / _PASSWORD or _TOKEN) are missing, wrong or "
            "not allowed to read the status API"
        )
    if status == 404:
        raise EndpointMissing(
            f"{where} answered HTTP 404: is JANITOR_PROMETHEUS_URL the Prometheus server, "
            "with its route prefix?"
        )
    if status >= 500 or status == 429:
        raise PrometheusError(
            f"{where} answered HTTP {status}: {' '.join(response.text.split())[:200]}"
            f"{retry_after_note(response.headers)}"
        )
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or body.get("status") not in ("success", "error"):
        kind = response.headers.get("Content-Type", "no content type")
        raise PrometheusError(
            f"{where} did not answer like the Prometheus API (HTTP {status}, {kind}): "
            "is JANITOR_PROMETHEUS_URL the Prometheus server, with its route prefix?"
        )
    data = body.get("data")
    if body["status"] != "success" or status != 200 or not isinstance(data, dict):
        raise PrometheusError(
            f"{where} answered HTTP {status}: {body.get('error') or 'no status data'}"
        )
    return data
