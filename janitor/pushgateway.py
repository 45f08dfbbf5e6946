"""Run metrics pushed to a Prometheus Pushgateway at the end of a real run (README "Run
metrics").

One group per Houston database: job ``astro-janitor``, grouping label ``instance`` (and
``shard``, ``1/3``, when sharded, so the shards' runs do not overwrite each other). The push
is a POST, which replaces only the metric families it carries: so
``janitor_last_success_timestamp_seconds``, pushed only by a run that succeeded, outlives the
failed runs after it, and the alert on it can tell how long ago the last success was.
"""

from __future__ import annotations

import threading
import urllib.error
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from janitor.errors import ExitCode
from janitor.plan import Counts
from janitor.redact import without_credentials

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

JOB = "astro-janitor"
DEFAULT_INSTANCE = "default"
SUCCEEDED = frozenset({ExitCode.OK, ExitCode.RETENTION_MISMATCH})
# Every label pair of janitor_last_run_actions a real run can report, pushed as 0 when the
# run reported none: a POST replaces a family only when it carries samples, and a pair left
# out would keep the count of an earlier run (README "Run metrics").
ACTION_OUTCOMES = ("done", "absent", "skipped", "failed")
CHECK_OUTCOMES = ("ok", "mismatch", "skipped", "failed")
REPORTED: dict[str, tuple[str, ...]] = {
    "database.drop": ACTION_OUTCOMES,
    "role.drop": ACTION_OUTCOMES,
    "registry.tag.delete": ACTION_OUTCOMES,
    "deployment.purge": ACTION_OUTCOMES,
    "logs.index.delete": ACTION_OUTCOMES,
    "metrics.retention.check": CHECK_OUTCOMES,
}


@dataclass(frozen=True)
class Target:
    """Where a run's metrics go: the Pushgateway, the group's ``instance`` (and ``shard``,
    when sharded), and how long the whole push may take."""

    url: str
    instance: str
    timeout_s: float
    shard: str | None = None

    def grouping_key(self) -> dict[str, str]:
        shard = {"shard": self.shard} if self.shard is not None else {}
        return {"instance": self.instance, **shard}


@dataclass(frozen=True)
class RunMetrics:
    """What one real run pushes. ``expired_remaining`` is None when the Houston table could
    not be counted (or there is none): the value of the last run that could stays."""

    finished_at: float
    exit_code: int
    duration_s: float
    counts: Counts
    expired_remaining: int | None


def collect(metrics: RunMetrics) -> CollectorRegistry:
    """The metric families of ``metrics``, in a registry of their own."""
    # Imported by the runs that push only: every run imports this module.
    from prometheus_client import CollectorRegistry, Gauge  # noqa: PLC0415

    registry = CollectorRegistry()

    def gauge(name: str, documentation: str, value: float) -> None:
        Gauge(name, documentation, registry=registry).set(value)

    gauge(
        "janitor_last_run_timestamp_seconds",
        "When the last real run ended (Unix time).",
        metrics.finished_at,
    )
    if metrics.exit_code in SUCCEEDED:
        gauge(
            "janitor_last_success_timestamp_seconds",
            "When the last real run that exited 0 or 3 ended (Unix time).",
            metrics.finished_at,
        )
    gauge("janitor_last_run_exit_code", "Exit code of the last real run.", metrics.exit_code)
    gauge(
        "janitor_last_run_duration_seconds",
        "How long the last real run took.",
        metrics.duration_s,
    )
    if metrics.expired_remaining is not None:
        gauge(
            "janitor_expired_deployments_remaining",
            "Deployment rows still past the retention window after the last real run.",
            metrics.expired_remaining,
        )
    actions = Gauge(
        "janitor_last_run_actions",
        "Events of the last real run, by event and outcome (run.finished counts).",
        ["event", "outcome"],
        registry=registry,
    )
    for event, outcomes in REPORTED.items():
        for outcome in outcomes:
            actions.labels(event, outcome).set(0)
    for event, by_outcome in metrics.counts.items():
        for outcome, count in by_outcome.items():
            actions.labels(event, outcome).set(count)
    return registry


def push(target: Target, metrics: RunMetrics) -> str | None:
    """Pushes ``metrics`` to ``target``; the error text when that failed, else None. Never
    raises: a failed push must not change the run's exit code."""
    from prometheus_client.exposition import (  # noqa: PLC0415 - as in collect()
        basic_auth_handler,
        pushadd_to_gateway,
    )

    parts = urlsplit(target.url)
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    plain = without_credentials(target.url)

    def handler(
        url: str, method: str, timeout: float | None, headers: list[tuple[str, str]], data: bytes
    ) -> Callable[[], None]:
        return basic_auth_handler(url, method, timeout, headers, data, username, password)

    def send() -> None:
        pushadd_to_gateway(
            plain,
            job=JOB,
            registry=collect(metrics),
            grouping_key=target.grouping_key(),
            timeout=target.timeout_s,
            handler=handler,
        )

    try:
        _within(send, target.timeout_s)
    except Exception as exc:  # noqa: BLE001 - whatever the push met, the run's code stands
        return f"push to the Pushgateway {plain} failed: {_reason(exc)}"
    return None


def _within(call: Callable[[], None], seconds: float) -> None:
    """Runs ``call`` and waits for it at most ``seconds`` in all: the socket timeout bounds
    each read, not a server that answers one byte at a time."""
    errors: list[BaseException] = []
    done = threading.Event()

    def target() -> None:
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)
        finally:
            done.set()

    threading.Thread(target=target, name="janitor-push", daemon=True).start()
    if not done.wait(seconds):
        raise TimeoutError(f"no answer within {seconds:g} s")
    if errors:
        raise errors[0]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        reason: Any = exc.reason
        return str(reason) if not isinstance(reason, OSError) else _os_error(reason)
    if isinstance(exc, OSError):
        return _os_error(exc)
    return f"{type(exc).__name__}: {exc}"


def _os_error(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__
