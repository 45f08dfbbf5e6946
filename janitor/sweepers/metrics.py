"""Check that Prometheus keeps metrics for exactly ``metrics_retention_days`` (README "How a
run works", step 5).

Read-only, also in a real run: one ``metrics.retention.check`` event with outcome ``ok``,
``mismatch`` (exit 3) or ``failed`` (exit 1). The retention is read from the Prometheus HTTP
API, or (``JANITOR_PROMETHEUS_SOURCE=kubernetes``) from the Prometheus Operator resource or
the StatefulSet that starts Prometheus.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

import requests

from janitor.clients.prometheus import EndpointMissing, PrometheusError, api_data
from janitor.durations import format_bytes, format_duration, parse_bytes, parse_duration
from janitor.plan import Action, Result, Step, Sweeper, final
from janitor.redact import without_credentials

if TYPE_CHECKING:
    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException

EVENT = "metrics.retention.check"

# Prometheus' default when neither a time nor a size limit is set (prometheus/cmd main.go).
PROMETHEUS_DEFAULT = timedelta(days=15)
# The Prometheus Operator's default when neither spec.retention nor spec.retentionSize is
# set (monitoring.coreos.com/v1 PrometheusSpec docs).
OPERATOR_DEFAULT = timedelta(hours=24)

Kind = Literal["prometheus", "statefulset"]

# A disk share limit as Prometheus 3.11+ prints storage.tsdb.retention.percentage
# (strconv.FormatFloat 'g': "80", "12.5", "1e-05").
_PERCENTAGE = re.compile(r"[0-9]+(?:\.[0-9]+)?(?:e[-+][0-9]+)?%")
_TIME_FLAG = "storage.tsdb.retention.time"
_DEPRECATED_TIME_FLAG = "storage.tsdb.retention"
_SIZE_FLAG = "storage.tsdb.retention.size"
_FLAGS_PATH = "/api/v1/status/flags"


@dataclass(frozen=True)
class Retention:
    """What Prometheus keeps: data younger than ``time``, within the ``size`` limits (a byte
    size and/or a share of the disk, as Prometheus prints them, e.g. ``1GiB476MiB`` or
    ``10GiB or 80%``), whichever limit is reached first. ``note`` says where a defaulted
    value came from, for the mismatch reason."""

    time: timedelta | None
    size: str | None = None
    note: str | None = None


class RetentionUnreadable(Exception):
    """The retention could not be read; the message is the event's ``error`` text."""


def read_retention(client: requests.Session, url: str) -> Retention:
    """The retention Prometheus applies, from two GETs (README "Prometheus answers").

    ``runtimeinfo`` shows the effective value: the 15d default included, and on Prometheus
    3.x a retention set in the configuration file, while ``flags`` then reads ``0s``.
    ``flags`` is read too, because only it tells agent mode (``--enable-feature=agent`` in
    2.x, ``--agent`` in 3.x, whose runtimeinfo still shows the 15d default); it also stands
    in for servers whose runtimeinfo has no ``storageRetention``.
    """
    try:
        info = api_data(client, url, "/api/v1/status/runtimeinfo")
    except EndpointMissing:
        info = {}
    flags = api_data(client, url, _FLAGS_PATH)
    where = without_credentials(url)
    _refuse_agent(flags, f"Prometheus at {where}", "JANITOR_PROMETHEUS_URL")
    text = info.get("storageRetention")
    if isinstance(text, str) and text:
        return parse_storage_retention(text, where)
    return retention_from_flags(flags, where)


def retention_from_flags(flags: Mapping[str, Any], where: str) -> Retention:
    """The retention the command-line flags of the Prometheus at ``where`` imply, as its
    ``/api/v1/status/flags`` lists them."""
    if not any(key in flags for key in (_TIME_FLAG, _DEPRECATED_TIME_FLAG, _SIZE_FLAG)):
        raise RetentionUnreadable(
            f"{where}{_FLAGS_PATH} lists no storage.tsdb.retention flags: "
            "is JANITOR_PROMETHEUS_URL a Prometheus server?"
        )

    def flag(name: str) -> str | None:
        value = flags.get(name)
        return value if isinstance(value, str) else None

    return effective_retention(
        time=flag(_TIME_FLAG),
        deprecated_time=flag(_DEPRECATED_TIME_FLAG),
        size=flag(_SIZE_FLAG),
        where=where,
    )


def _refuse_agent(flags: Mapping[str, Any], what: str, setting: str) -> None:
    """RetentionUnreadable when ``flags`` start Prometheus in agent mode, which stores no
    metrics (README "Prometheus answers")."""
    features = str(flags.get("enable-feature", "")).split(",")
    if "agent" in features or str(flags.get("agent", "false")).lower() == "true":
        raise RetentionUnreadable(
            f"{what} runs in agent mode and keeps no metrics: point {setting} at the "
            "Prometheus server that stores them"
        )


def effective_retention(
    *, time: str | None, deprecated_time: str | None, size: str | None, where: str
) -> Retention:
    """The retention Prometheus derives from its flags, as its main.go does: the time flag
    wins over the deprecated ``storage.tsdb.retention``; with neither and no size limit, the
    15d default applies. Unset flags read ``0s`` / ``0B`` on the flags endpoint."""
    limit = _size_limit(size, f"{_SIZE_FLAG} of {where}")
    for name, value in ((_TIME_FLAG, time), (_DEPRECATED_TIME_FLAG, deprecated_time)):
        duration = _duration(value, f"{name} of {where}")
        if duration:
            return Retention(duration, limit)
    if limit is not None:
        return Retention(None, limit)
    return Retention(PROMETHEUS_DEFAULT, None, "Prometheus' default: no retention time is set")


def kubernetes_target(*, namespace: str, name: str, kind: Kind) -> str:
    """The event target for a Kubernetes source, e.g. ``kubernetes:monitoring/prometheus/k8s``."""
    return f"kubernetes:{namespace}/{kind}/{name}"


def kubernetes_retention(
    api_client: k8s.ApiClient, *, namespace: str, name: str, kind: Kind
) -> Retention:
    """The retention the named resource gives Prometheus, read through the Kubernetes API."""
    # The Kubernetes client is heavy: loaded only for this source.
    import urllib3  # noqa: PLC0415
    from kubernetes import client as k8s  # noqa: PLC0415
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    where = f"{kind} {namespace}/{name}"
    try:
        if kind == "prometheus":
            resource = k8s.CustomObjectsApi(api_client).get_namespaced_custom_object(
                "monitoring.coreos.com", "v1", namespace, "prometheuses", name
            )
            return _operator_retention(resource, where)
        stateful_set = k8s.AppsV1Api(api_client).read_namespaced_stateful_set(name, namespace)
        return _stateful_set_retention(stateful_set, where)
    except ApiException as exc:
        raise RetentionUnreadable(_api_exception_text(exc, kind, where)) from exc
    except urllib3.exceptions.HTTPError as exc:
        # The kubernetes stubs (for kubernetes < 37, which has no py.typed) omit it.
        host = api_client.configuration.host  # type: ignore[attr-defined, unused-ignore]
        raise RetentionUnreadable(f"cannot reach the Kubernetes API at {host}: {exc}") from exc


def _check(target: str, read: Callable[[], Retention], expected_days: int) -> Step:
    expected = timedelta(days=expected_days)
    fields: dict[str, Any] = {"expected": format_duration(expected), "actual": None}
    try:
        retention = read()
    except (RetentionUnreadable, PrometheusError) as exc:
        return _step(target, fields, Result("failed", error=str(exc)))
    if retention.time is not None:
        fields["actual"] = format_duration(retention.time)
    if retention.size is not None:
        # A size limit may delete data before the time limit does: dashboards see it here.
        fields["size_limit"] = retention.size
    return _step(target, fields, _judge(retention, expected))


def _judge(retention: Retention, expected: timedelta) -> Result:
    want = format_duration(expected)
    fix = f"set the Prometheus retention time to {want}"
    if retention.time is None:
        return Result(
            "mismatch",
            reason=f"size-only retention ({retention.size}), no time limit: {fix}",
        )
    if retention.time == expected:
        return Result("ok")
    keeps = format_duration(retention.time)
    if retention.size is not None:
        keeps += f" (or less, once {retention.size} are used)"
    if retention.note is not None:
        keeps += f" ({retention.note})"
    return Result("mismatch", reason=f"Prometheus keeps {keeps}, configured {want}: {fix}")


def _step(target: str, fields: Mapping[str, Any], result: Result) -> Step:
    return final(Action(event=EVENT, target=target, planned=result, fields=fields))


def _problems(read: Callable[[], Retention]) -> list[str]:
    """What keeps ``janitor check`` from reading the retention (empty when it can). A
    mismatch is not a problem here: it is the run's finding, not a setup error."""
    try:
        read()
    except (RetentionUnreadable, PrometheusError) as exc:
        return [str(exc)]
    return []


def parse_storage_retention(text: str, where: str) -> Retention:
    """runtimeinfo's ``storageRetention``: a time, a byte size and a disk share, each
    optional, in this order, joined by `` or `` (prometheus web/web.go runtimeInfo), e.g.
    ``15d``, ``1GiB476MiB``, ``80%`` or ``15d or 1GiB476MiB or 80%``."""
    parts = text.split(" or ")
    is_time = _accepts(parse_duration, parts[0])
    time = _duration(parts.pop(0), f"storageRetention of {where}") if is_time else None
    limits: list[str] = []
    if parts and _accepts(parse_bytes, parts[0]):
        limits.append(format_bytes(parse_bytes(parts.pop(0))))
    if parts and _PERCENTAGE.fullmatch(parts[0]):
        limits.append(parts.pop(0))
    if parts or (time is None and not limits):
        raise RetentionUnreadable(f"unexpected storageRetention {text!r} from {where}")
    return Retention(time, " or ".join(limits) or None)


def _accepts(parse: Callable[[str], object], text: str) -> bool:
    """Whether ``parse`` reads ``text`` (a duration, a byte size) without a ValueError."""
    try:
        parse(text)
    except ValueError:
        return False
    return True


def _duration(text: str | None, what: str) -> timedelta | None:
    if text is None or not text:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise RetentionUnreadable(f"{what}: {exc}") from exc


def _size_limit(text: str | None, what: str) -> str | None:
    """``text`` as Prometheus prints it when it sets a size limit; None when unset or zero
    (``0B``, the flag's default, means no limit)."""
    if text is None or not text:
        return None
    try:
        count = parse_bytes(text)
    except ValueError as exc:
        raise RetentionUnreadable(f"{what}: {exc}") from exc
    return format_bytes(count) if count else None


def _operator_retention(resource: object, where: str) -> Retention:
    spec = resource.get("spec") if isinstance(resource, dict) else None
    if not isinstance(spec, dict):
        raise RetentionUnreadable(
            f"{where} has no spec: is it a monitoring.coreos.com/v1 Prometheus?"
        )
    retention, size = spec.get("retention"), spec.get("retentionSize")
    limit = _size_limit(size if isinstance(size, str) else None, f"spec.retentionSize of {where}")
    duration = _duration(
        retention if isinstance(retention, str) else None, f"spec.retention of {where}"
    )
    # "0s" means unset, as for the Prometheus flag the operator passes it to.
    if duration:
        return Retention(duration, limit)
    if limit is not None:
        return Retention(None, limit)
    return Retention(
        OPERATOR_DEFAULT, None, "the Prometheus Operator's default: spec.retention is unset"
    )


def _stateful_set_retention(stateful_set: k8s.V1StatefulSet, where: str) -> Retention:
    pod = stateful_set.spec.template.spec if stateful_set.spec is not None else None
    containers: Sequence[k8s.V1Container] = pod.containers if pod is not None else []
    found = [c for c in containers if c.name == "prometheus"] or [
        c for c in containers if any(a.startswith("--storage.tsdb.") for a in _command_line(c))
    ]
    if not found:
        raise RetentionUnreadable(
            f"{where} has no container named prometheus nor one with --storage.tsdb flags"
        )
    flags = _flag_values(_command_line(found[0]))
    _refuse_agent(flags, f"{where} starts Prometheus that", "JANITOR_PROMETHEUS_NAME")
    return effective_retention(
        time=flags.get(_TIME_FLAG),
        deprecated_time=flags.get(_DEPRECATED_TIME_FLAG),
        size=flags.get(_SIZE_FLAG),
        where=where,
    )


def _command_line(container: k8s.V1Container) -> list[str]:
    return [*(container.command or []), *(container.args or [])]


def _flag_values(arguments: Sequence[str]) -> dict[str, str]:
    """``--name=value``, ``--name value`` and boolean ``--name`` arguments, as Prometheus'
    flag parser (kingpin) reads them; a boolean reads ``true``, as ``/flags`` shows it."""
    values: dict[str, str] = {}
    for index, argument in enumerate(arguments):
        if not argument.startswith("--"):
            continue
        name, equals, value = argument[2:].partition("=")
        if equals:
            values[name] = value
        elif index + 1 < len(arguments) and not arguments[index + 1].startswith("-"):
            values[name] = arguments[index + 1]
        else:
            values[name] = "true"
    return values


def _api_exception_text(exc: ApiException, kind: Kind, where: str) -> str:
    status = exc.status
    if status == 404:
        return f"{where} not found (HTTP 404): check JANITOR_PROMETHEUS_NAMESPACE / _NAME / _KIND"
    if status == 401:
        return (
            f"the Kubernetes API rejected the janitor's credentials (HTTP 401) reading {where}: "
            "check its service account token"
        )
    if status == 403:
        resource = (
            "prometheuses.monitoring.coreos.com" if kind == "prometheus" else "statefulsets.apps"
        )
        return (
            f"the Kubernetes API refused to read {where} (HTTP 403): the janitor's "
            f"service account needs get on {resource} in that namespace"
        )
    return f"the Kubernetes API answered HTTP {status} {exc.reason} reading {where}"


def sweeper(read: Callable[[], Retention], target: str, expected_days: int) -> Sweeper:
    """The Prometheus retention check: ``read`` gets the retention from the HTTP API
    (:func:`read_retention`) or from Kubernetes (:func:`kubernetes_retention`), raising
    RetentionUnreadable for anything it cannot read; ``target`` names the source in events."""
    return Sweeper(
        "metrics",
        EVENT,
        plan=lambda: [_check(target, read, expected_days)],
        problems=lambda: _problems(read),
    )
