"""The cluster-wide run lock: a ``coordination.k8s.io/v1`` Lease, and the run summary Event.

In a cluster the Postgres advisory lock is not enough (README "How a run works", step 1):
a logs/metrics-only run has no Houston database to lock, and a manual Job
(``kubectl create job --from=cronjob/...``) must never work at the same time as the
scheduled one. ``concurrencyPolicy: Forbid`` only covers Jobs the CronJob itself starts.

The Lease follows the protocol of client-go's leader election so that ``kubectl get lease``
reads as operators expect: ``holderIdentity`` is the pod name, ``renewTime`` is refreshed
every third of ``leaseDurationSeconds``, and a Lease whose ``renewTime +
leaseDurationSeconds`` lies in the past belongs to nobody. Every write carries the
``resourceVersion`` it read, so of two pods racing for a free Lease exactly one wins and
the other gets 409 Conflict.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from janitor.errors import ConfigurationError, ExitCode

EVENT_COMPONENT = "astro-janitor"
# One Event reason per exit code (README "Exit codes"), so `kubectl get events --field-selector
# reason=GuardRefused` finds the runs an operator has to look at.
EVENT_REASONS: dict[int, str] = {
    ExitCode.OK: "RunFinished",
    ExitCode.FAILED: "ActionsFailed",
    ExitCode.INVALID_CONFIGURATION: "InvalidConfiguration",
    ExitCode.RETENTION_MISMATCH: "RetentionMismatch",
    ExitCode.GUARD_REFUSED: "GuardRefused",
}
# Event.message above 1 KiB is rejected for events.k8s.io/v1 (noteLengthLimit); keep core
# Events within the same bound so they read the same through either API.
EVENT_MESSAGE_LIMIT = 1024


class KubernetesError(Exception):
    """The Kubernetes API refused or could not be reached; the message says which."""


def _api_error(exc: Exception) -> KubernetesError:
    if isinstance(exc, ApiException):
        return KubernetesError(f"Kubernetes API: {exc.status} {exc.reason}")
    return KubernetesError(f"Kubernetes API: {exc}")


_API_ERRORS = (ApiException, urllib3.exceptions.HTTPError)


class MicroTime(datetime):
    """A UTC instant that serialises as Kubernetes ``metav1.MicroTime``.

    The API server parses MicroTime with Go's ``2006-01-02T15:04:05.000000Z07:00`` layout,
    which demands exactly six fractional digits. The kubernetes client serialises datetimes
    with ``isoformat()``, which drops the fraction when the microseconds are zero, so one
    renewal in a million would be rejected with 400. Pydantic keeps datetime subclasses
    as they are, so this spelling reaches the wire.
    """

    def isoformat(self, sep: str = "T", timespec: str = "auto") -> str:
        return self.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    @classmethod
    def of(cls, instant: datetime) -> MicroTime:
        utc = instant.astimezone(UTC)
        return cls(
            utc.year,
            utc.month,
            utc.day,
            utc.hour,
            utc.minute,
            utc.second,
            utc.microsecond,
            tzinfo=UTC,
        )


def in_cluster_api_client() -> client.ApiClient | None:
    """An API client authenticated as the pod's service account, or None outside a cluster.

    ``KUBERNETES_SERVICE_HOST`` is set by the kubelet in every container, so its absence
    means "not in a cluster". In a cluster, a missing service account token is a deployment
    mistake (``automountServiceAccountToken: false``), not a reason to run without the lock.
    """
    if not os.environ.get("KUBERNETES_SERVICE_HOST"):
        return None
    configuration = client.Configuration()
    try:
        # The kubernetes config loaders carry no annotations (their stubs, used with
        # kubernetes < 37, do).
        config.load_incluster_config(  # type: ignore[no-untyped-call, unused-ignore]
            client_configuration=configuration
        )
    except ConfigException as exc:
        raise ConfigurationError(
            f"KUBERNETES_SERVICE_HOST is set but the in-cluster config cannot be loaded ({exc}); "
            "the run lock needs the service account token mounted"
        ) from None
    return client.ApiClient(configuration)


@dataclass(frozen=True)
class _Lease:
    """Which Lease, held by whom, for how long: what every read and write below needs."""

    api: client.CoordinationV1Api
    namespace: str
    name: str
    holder: str
    duration_s: int

    def read(self) -> client.V1Lease | None:
        try:
            return self.api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def replace(self, lease: client.V1Lease) -> None:
        self.api.replace_namespaced_lease(self.name, self.namespace, lease)

    def ours(self, lease: client.V1Lease | None) -> bool:
        return (
            lease is not None
            and lease.spec is not None
            and (lease.spec.holder_identity == self.holder)
        )


def _spec(
    holder: str | None,
    duration_s: int,
    acquired: datetime | None,
    renewed: datetime,
    transitions: int,
) -> client.V1LeaseSpec:
    # Every write rebuilds the spec from MicroTime values: a datetime read back from the
    # server is a plain datetime again and would lose its fraction on the way out.
    return client.V1LeaseSpec(
        holder_identity=holder,
        lease_duration_seconds=duration_s,
        acquire_time=None if acquired is None else MicroTime.of(acquired),
        renew_time=MicroTime.of(renewed),
        lease_transitions=transitions,
    )


def _free_for(lease: client.V1Lease, holder: str, now: datetime) -> bool:
    spec = lease.spec or client.V1LeaseSpec()
    if not spec.holder_identity or spec.holder_identity == holder:
        return True
    if spec.renew_time is None or spec.lease_duration_seconds is None:
        return True
    expires = spec.renew_time + timedelta(seconds=spec.lease_duration_seconds)
    return expires < now


def _acquire(lease: _Lease, now: datetime) -> bool:
    current = lease.read()
    try:
        if current is None:
            lease.api.create_namespaced_lease(
                lease.namespace,
                client.V1Lease(
                    metadata=client.V1ObjectMeta(name=lease.name, namespace=lease.namespace),
                    spec=_spec(lease.holder, lease.duration_s, now, now, 0),
                ),
            )
            return True
        if not _free_for(current, lease.holder, now):
            return False
        previous = current.spec or client.V1LeaseSpec()
        transitions = previous.lease_transitions or 0
        if previous.holder_identity != lease.holder:
            transitions += 1
        current.spec = _spec(lease.holder, lease.duration_s, now, now, transitions)
        lease.replace(current)
        return True
    except ApiException as exc:
        # 409 on create (AlreadyExists) or replace (resourceVersion Conflict): another pod
        # wrote the Lease between our read and our write, so it won this round.
        if exc.status == 409:
            return False
        raise


def _renew(lease: _Lease, now: datetime) -> bool:
    """Refresh renewTime; False once the Lease is no longer ours (nothing left to renew)."""
    current = lease.read()
    if current is not None and current.metadata is None:
        # No Lease at all but an answer the client read as an empty one (a proxy's JSON
        # list, say): not a sign another run took over; retried on the next tick.
        return True
    if current is None or current.spec is None or not lease.ours(current):
        return False
    previous = current.spec
    current.spec = _spec(
        lease.holder,
        lease.duration_s,
        previous.acquire_time,
        now,
        previous.lease_transitions or 0,
    )
    try:
        lease.replace(current)
    except ApiException as exc:
        # A conflicting write that left us the holder (say, a human's annotation) is
        # retried on the next tick; one that took the Lease shows up on the next read.
        if exc.status != 409:
            raise
    return True


def _release(lease: _Lease, now: datetime) -> None:
    current = lease.read()
    if current is None or current.spec is None or not lease.ours(current):
        return
    # As client-go's ReleaseOnCancel: no holder, a 1 s duration and a fresh renewTime, so
    # the next run takes the Lease at once instead of waiting for it to expire.
    previous = current.spec
    current.spec = _spec(None, 1, previous.acquire_time, now, previous.lease_transitions or 0)
    with contextlib.suppress(ApiException):
        # Losing the release (409, 5xx) only delays the next run until the Lease expires
        # on its own; this run's work is already done.
        lease.replace(current)


def _renew_until(stop: threading.Event, lease: _Lease, clock: Callable[[], datetime]) -> None:
    while not stop.wait(lease.duration_s / 3):
        # A failed renewal (API server restart, network blip) is retried on the next tick:
        # the Lease stays valid for two more intervals, while a renewal thread that died
        # here would let another run take over as this one still works.
        # So is an answer the client cannot read (ValueError: malformed JSON, a wrong shape).
        with contextlib.suppress(ApiException, urllib3.exceptions.HTTPError, ValueError):
            if not _renew(lease, clock()):
                return


@contextlib.contextmanager
def hold_lease(
    api_client: client.ApiClient,
    *,
    namespace: str,
    name: str,
    holder: str,
    duration_s: int,
    clock: Callable[[], datetime],
) -> Iterator[bool]:
    """Hold the Lease ``namespace/name`` as ``holder`` for the duration of the block.

    Yields True when held: renewed in the background every ``duration_s / 3`` and released
    at exit. Yields False when another holder's Lease is still valid or another pod won the
    race for it; the caller then reports ``run.skipped`` and exits 0 (README "Exit codes").
    Errors other than a lost race (403 Forbidden, an unreachable API server) raise
    KubernetesError.
    """
    lease = _Lease(client.CoordinationV1Api(api_client), namespace, name, holder, duration_s)
    try:
        acquired = _acquire(lease, clock())
    except _API_ERRORS as exc:
        raise _api_error(exc) from exc
    if not acquired:
        yield False
        return
    stop = threading.Event()
    renewer = threading.Thread(
        target=_renew_until, args=(stop, lease, clock), name=f"lease-renew-{name}", daemon=True
    )
    renewer.start()
    try:
        yield True
    finally:
        stop.set()
        renewer.join()
        try:
            _release(lease, clock())
        except _API_ERRORS as exc:
            raise _api_error(exc) from exc


def _event_message(summary: Mapping[str, Any], exit_code: int) -> str:
    counts = summary.get("counts") or {}
    parts = [
        f"{event} " + " ".join(f"{outcome}={n}" for outcome, n in sorted(outcomes.items()))
        for event, outcomes in sorted(counts.items())
    ]
    head = f"janitor run finished with exit code {exit_code}"
    if "duration_s" in summary:
        head += f" in {summary['duration_s']}s"
    if summary.get("dry_run"):
        head += " (dry run)"
    message = head + (": " + "; ".join(parts) if parts else ": nothing to do")
    if len(message) > EVENT_MESSAGE_LIMIT:
        message = message[: EVENT_MESSAGE_LIMIT - 3] + "..."
    return message


def _cronjob_uid(api: client.CoreV1Api, namespace: str, cronjob_name: str) -> str | None:
    # `kubectl describe cronjob` lists only Events whose involvedObject.uid matches; without
    # the uid the Event is still listed by `kubectl get events --field-selector ...`.
    try:
        # The kubernetes stubs (for kubernetes < 37, which has no py.typed) omit api_client.
        api_client = api.api_client  # type: ignore[attr-defined, unused-ignore]
        cronjob = client.BatchV1Api(api_client).read_namespaced_cron_job(cronjob_name, namespace)
    except ApiException as exc:
        if exc.status in (403, 404):
            return None
        raise
    except ValueError:
        # An answer the client cannot read as a CronJob (a proxy's page, a truncated body):
        # the summary Event is still posted, listed by `kubectl get events` if not by
        # `kubectl describe cronjob`.
        return None
    uid: str | None = cronjob.metadata.uid if cronjob.metadata else None
    return uid


def post_run_event(
    api_client: client.ApiClient,
    *,
    namespace: str,
    cronjob_name: str,
    summary: Mapping[str, Any],
    exit_code: int,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> None:
    """Record the run summary as an Event on the CronJob (Warning when ``exit_code != 0``).

    ``summary`` is the ``run.finished`` event (README "Events"): its ``counts`` become the
    message, so ``kubectl describe cronjob`` shows what the last runs did. Raises
    KubernetesError when the API refuses or cannot be reached.
    """
    api = client.CoreV1Api(api_client)
    now = clock().astimezone(UTC).replace(microsecond=0)
    try:
        api.create_namespaced_event(
            namespace,
            client.CoreV1Event(
                metadata=client.V1ObjectMeta(generate_name=f"{cronjob_name}.", namespace=namespace),
                involved_object=client.V1ObjectReference(
                    api_version="batch/v1",
                    kind="CronJob",
                    name=cronjob_name,
                    namespace=namespace,
                    uid=_cronjob_uid(api, namespace, cronjob_name),
                ),
                type="Normal" if exit_code == 0 else "Warning",
                reason=EVENT_REASONS.get(exit_code, "RunFailed"),
                message=_event_message(summary, exit_code),
                source=client.V1EventSource(component=EVENT_COMPONENT),
                reporting_component=EVENT_COMPONENT,
                first_timestamp=now,
                last_timestamp=now,
                count=1,
            ),
        )
    except _API_ERRORS as exc:
        raise _api_error(exc) from exc
