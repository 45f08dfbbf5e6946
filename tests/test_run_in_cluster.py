"""A run inside a cluster: the Lease as cluster-wide run lock, and the summary Event."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from kubernetes import client

from janitor.config import load_settings
from janitor.events import make_logger
from janitor.runner import run
from tests.conftest import Houston
from tests.k8s_api_server import ApiState

NAMESPACE = "astronomer"
IN_CLUSTER = {
    "JANITOR_LEASE_NAMESPACE": NAMESPACE,
    "JANITOR_LEASE_NAME": "astro-janitor",
    "JANITOR_POD_NAME": "astro-janitor-manual-1",
    "JANITOR_KUBERNETES_EVENTS": "true",
    "JANITOR_CRONJOB_NAME": "astro-janitor",
}


def run_in_cluster(env: dict[str, str], api_client: client.ApiClient) -> tuple[int, str]:
    out = io.StringIO()
    settings = load_settings({}, env | IN_CLUSTER)
    log = make_logger("json", run_id="t", dry_run=settings.dry_run, stream=out)
    return run(settings, log, kube=api_client), out.getvalue()


def test_a_manual_job_skips_while_the_scheduled_run_holds_the_lease(
    houston: Houston,
    env: dict[str, str],
    api: tuple[client.ApiClient, ApiState],
) -> None:
    """Another pod's valid Lease: run.skipped, exit 0, nothing dropped."""
    api_client, state = api
    release = houston.deployment("old", deleted_days_ago=30)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    with state.lock:
        state.put_lease(
            NAMESPACE,
            "astro-janitor",
            {
                "holderIdentity": "astro-janitor-29000000-xyz",
                "leaseDurationSeconds": 600,
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        )

    code, text = run_in_cluster(env, api_client)

    assert code == 0
    assert '"run.skipped"' in text
    assert "lease astronomer/astro-janitor" in text
    assert release in houston.rows()


def test_a_run_takes_and_releases_the_lease_and_posts_its_summary_event(
    houston: Houston,
    env: dict[str, str],
    api: tuple[client.ApiClient, ApiState],
) -> None:
    """The Lease is held as the pod during the run and released after; the Event summarises."""
    api_client, state = api
    houston.deployment("old", deleted_days_ago=30)

    code, _ = run_in_cluster(env, api_client)

    assert code == 0
    assert houston.rows() == {}
    with state.lock:
        lease = state.leases[(NAMESPACE, "astro-janitor")]["spec"]
        events = list(state.events)
    assert lease.get("holderIdentity") in (None, "")
    assert lease["leaseTransitions"] == 0
    assert len(events) == 1
    assert events[0]["type"] == "Normal"
    assert "deployment.purge done=1" in events[0]["message"]


def test_a_logs_or_metrics_only_run_takes_only_the_lease(
    api: tuple[client.ApiClient, ApiState],
) -> None:
    """Without a Houston DSN the run is still serialised by the Lease (SPEC.md step 1)."""
    api_client, state = api

    code, text = run_in_cluster({"JANITOR_PROMETHEUS_URL": "http://127.0.0.1:1"}, api_client)

    assert code == 1  # nothing listens there: the check fails
    with state.lock:
        assert (NAMESPACE, "astro-janitor") in state.leases
        assert state.events[0]["type"] == "Warning"
    assert '"metrics.retention.check"' in text
