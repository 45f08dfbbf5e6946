"""The cluster-wide run lock and the run summary Event, against a loopback API stand-in."""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from janitor.errors import ConfigurationError
from janitor.lease import KubernetesError, hold_lease, in_cluster_api_client, post_run_event
from tests.k8s_api_server import ApiState

NAMESPACE = "astronomer"
LEASE = "astro-janitor"
T0 = datetime(2025, 3, 1, 3, 30, tzinfo=UTC)  # a whole second: the MicroTime edge case


class Clock:
    """The pods' clock, moved by the story instead of by waiting."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def lease_spec(state: ApiState) -> dict[str, object]:
    with state.lock:
        spec: dict[str, object] = dict(state.leases[(NAMESPACE, LEASE)]["spec"])
    return spec


def micro(instant: datetime) -> str:
    return instant.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def hold(
    api_client: client.ApiClient, holder: str, clock: Clock, duration_s: int = 60
) -> AbstractContextManager[bool]:
    return hold_lease(
        api_client,
        namespace=NAMESPACE,
        name=LEASE,
        holder=holder,
        duration_s=duration_s,
        clock=clock,
    )


def test_first_run_creates_the_lease_and_releases_it_for_the_next_run(
    api: tuple[client.ApiClient, ApiState],
) -> None:
    """The scheduled run creates the Lease as its pod, and a manual Job started right after
    it finished takes the released Lease at once."""
    api_client, state = api
    clock = Clock(T0)
    with hold(api_client, "janitor-28990170-abcde", clock) as held:
        assert held is True
        assert lease_spec(state) == {
            "holderIdentity": "janitor-28990170-abcde",
            "leaseDurationSeconds": 60,
            "acquireTime": micro(T0),
            "renewTime": micro(T0),
            "leaseTransitions": 0,
        }
        clock.now = T0 + timedelta(minutes=5)
    released = lease_spec(state)
    assert "holderIdentity" not in released
    assert released["renewTime"] == micro(T0 + timedelta(minutes=5))
    assert released["leaseDurationSeconds"] == 1

    with hold(api_client, "janitor-manual-1740800000-xyz12", clock) as held:
        assert held is True
        assert lease_spec(state)["holderIdentity"] == "janitor-manual-1740800000-xyz12"
        assert lease_spec(state)["leaseTransitions"] == 1


def test_manual_job_is_skipped_while_the_scheduled_run_holds_the_lease(
    api: tuple[client.ApiClient, ApiState],
) -> None:
    """A manual Job started while the scheduled run works gets False and writes nothing,
    also at the very second the scheduled run's Lease would expire."""
    api_client, state = api
    clock = Clock(T0)
    with hold(api_client, "janitor-scheduled", clock) as held:
        assert held is True
        before = state.leases[(NAMESPACE, LEASE)]["metadata"]["resourceVersion"]
        for now in (T0 + timedelta(seconds=1), T0 + timedelta(seconds=60)):
            with hold(api_client, "janitor-manual", Clock(now)) as other:
                assert other is False
        assert state.leases[(NAMESPACE, LEASE)]["metadata"]["resourceVersion"] == before
        assert lease_spec(state)["holderIdentity"] == "janitor-scheduled"
    assert "holderIdentity" not in lease_spec(state)


def test_lease_of_a_crashed_pod_is_taken_over_once_expired(
    api: tuple[client.ApiClient, ApiState],
) -> None:
    """A pod killed mid-run (OOM, node loss) never releases; the next run takes its Lease
    once renewTime + leaseDurationSeconds has passed, and counts the transition."""
    api_client, state = api
    with state.lock:
        state.put_lease(
            NAMESPACE,
            LEASE,
            {
                "holderIdentity": "janitor-oom-killed",
                "leaseDurationSeconds": 60,
                "acquireTime": micro(T0 - timedelta(hours=1)),
                "renewTime": micro(T0 - timedelta(seconds=61)),
                "leaseTransitions": 4,
            },
        )
    with hold(api_client, "janitor-next", Clock(T0)) as held:
        assert held is True
        spec = lease_spec(state)
        assert spec["holderIdentity"] == "janitor-next"
        assert spec["acquireTime"] == micro(T0)
        assert spec["leaseTransitions"] == 5


def test_losing_the_race_to_create_the_lease_means_skip(
    api: tuple[client.ApiClient, ApiState],
) -> None:
    """Two pods start together and both see no Lease; the one whose create comes second
    gets 409 AlreadyExists and skips, leaving the winner's Lease alone."""
    api_client, state = api

    def other_pod_creates(s: ApiState) -> None:
        s.put_lease(NAMESPACE, LEASE, {"holderIdentity": "janitor-winner", "renewTime": micro(T0)})

    state.race = other_pod_creates
    with hold(api_client, "janitor-loser", Clock(T0)) as held:
        assert held is False
    assert lease_spec(state)["holderIdentity"] == "janitor-winner"
    assert ("POST", f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases") in (
        state.requests
    )


def test_losing_the_race_to_take_over_an_expired_lease_means_skip(
    api: tuple[client.ApiClient, ApiState],
) -> None:
    """Two pods find the same expired Lease; the second replace carries a stale
    resourceVersion, gets 409 Conflict, and that pod skips without releasing anything."""
    api_client, state = api
    with state.lock:
        state.put_lease(
            NAMESPACE,
            LEASE,
            {
                "holderIdentity": "janitor-gone",
                "leaseDurationSeconds": 60,
                "renewTime": micro(T0 - timedelta(hours=2)),
            },
        )

    def other_pod_takes_over(s: ApiState) -> None:
        s.put_lease(
            NAMESPACE,
            LEASE,
            {
                "holderIdentity": "janitor-winner",
                "leaseDurationSeconds": 60,
                "renewTime": micro(T0),
            },
        )

    state.race = other_pod_takes_over
    with hold(api_client, "janitor-loser", Clock(T0)) as held:
        assert held is False
    assert lease_spec(state)["holderIdentity"] == "janitor-winner"


def test_lease_is_renewed_while_the_run_works(api: tuple[client.ApiClient, ApiState]) -> None:
    """A run that outlives its Lease duration keeps renewing it, so a manual Job started
    long after the original duration still sees a valid Lease and skips."""
    api_client, state = api
    clock = Clock(T0)
    later = T0 + timedelta(minutes=10)
    with hold(api_client, "janitor-long-run", clock, duration_s=3) as held:
        assert held is True
        clock.now = later
        renewed = state.wait_for(
            lambda s: s.leases[(NAMESPACE, LEASE)]["spec"]["renewTime"] == micro(later)
        )
        assert renewed, "the Lease was never renewed"
        spec = lease_spec(state)
        assert spec["holderIdentity"] == "janitor-long-run"
        assert spec["acquireTime"] == micro(T0)
        with hold(api_client, "janitor-manual", Clock(later + timedelta(seconds=1))) as other:
            assert other is False


def test_lease_access_refused_by_rbac_is_an_error_not_a_skip(
    api: tuple[client.ApiClient, ApiState],
) -> None:
    """A Role missing the lease verbs fails the run loudly (403) instead of running unlocked
    or pretending another run holds the lock."""
    api_client, state = api
    state.forbidden = True
    with (
        pytest.raises(KubernetesError, match="403") as refused,
        hold(api_client, "janitor-a", Clock(T0)),
    ):
        pytest.fail("the block must not run without the lock")
    assert isinstance(refused.value.__cause__, ApiException)


def test_run_summary_event_lands_on_the_cronjob(api: tuple[client.ApiClient, ApiState]) -> None:
    """The run.finished counts become a Normal Event on the CronJob, carrying its uid so
    `kubectl describe cronjob` lists it."""
    api_client, state = api
    state.cronjobs[(NAMESPACE, "astro-janitor")] = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "astro-janitor", "namespace": NAMESPACE, "uid": "5e1f-cj-uid"},
        "spec": {"schedule": "30 3 * * *", "jobTemplate": {"spec": {"template": {}}}},
    }
    post_run_event(
        api_client,
        namespace=NAMESPACE,
        cronjob_name="astro-janitor",
        summary={
            "event": "run.finished",
            "counts": {"database.drop": {"done": 2}, "logs.index.delete": {"done": 7, "absent": 1}},
            "exit_code": 0,
            "duration_s": 12.5,
        },
        exit_code=0,
        clock=Clock(T0),
    )
    [event] = state.events
    assert event["metadata"]["name"].startswith("astro-janitor.")
    assert event["involvedObject"] == {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "name": "astro-janitor",
        "namespace": NAMESPACE,
        "uid": "5e1f-cj-uid",
    }
    assert event["type"] == "Normal"
    assert event["reason"] == "RunFinished"
    assert event["message"] == (
        "janitor run finished with exit code 0 in 12.5s: database.drop done=2; "
        "logs.index.delete absent=1 done=7"
    )
    assert event["source"] == {"component": "astro-janitor"}
    assert event["lastTimestamp"] == "2025-03-01T03:30:00+00:00"


def test_failed_run_event_is_a_warning_even_without_the_cronjob(
    api: tuple[client.ApiClient, ApiState],
) -> None:
    """A run with failed actions posts a Warning (reason ActionsFailed), also when the
    CronJob cannot be read (a Job created by hand from a deleted CronJob)."""
    api_client, state = api
    post_run_event(
        api_client,
        namespace=NAMESPACE,
        cronjob_name="astro-janitor",
        summary={"counts": {"registry.tag.delete": {"failed": 3, "done": 9}}, "exit_code": 1},
        exit_code=1,
        clock=Clock(T0),
    )
    [event] = state.events
    assert event["type"] == "Warning"
    assert event["reason"] == "ActionsFailed"
    assert "uid" not in event["involvedObject"]
    assert "registry.tag.delete done=9 failed=3" in event["message"]


def test_no_kubernetes_client_outside_a_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from a laptop or CI (no KUBERNETES_SERVICE_HOST), the janitor takes no Lease."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert in_cluster_api_client() is None


def test_in_cluster_without_a_service_account_token_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In a pod whose token is not mounted the run refuses (exit 2) instead of running
    without the cluster lock."""
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    with pytest.raises(ConfigurationError, match="service account token"):
        in_cluster_api_client()
