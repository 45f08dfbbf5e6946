"""metrics.retention.check against real Prometheus 2.42 servers; for the kubernetes source, a
loopback Kubernetes API answering the client's exact GETs; for Prometheus 3.x, which cannot
be installed here, a loopback fake serving 3.x answers built from its sources."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s

from janitor.clients.prometheus import api_data, connect_prometheus
from janitor.config import load_settings
from janitor.errors import ConfigurationError
from janitor.plan import Action, Outcome, Result, Sweeper
from janitor.redact import without_credentials
from janitor.sweepers.metrics import (
    EVENT,
    Kind,
    Retention,
    RetentionUnreadable,
    kubernetes_retention,
    kubernetes_target,
    parse_storage_retention,
    read_retention,
    retention_from_flags,
    sweeper,
)
from tests.loopback import Tls, finishes, free_port, make_tls
from tests.prometheus_server import (
    Answer,
    LoopbackServer,
    Request,
    bearer_proxy,
    kubernetes_api,
    login_page,
    running_prometheus,
    serving,
    web_config,
)

FIX = "set the Prometheus retention time to 15d"


@dataclass(frozen=True)
class Case:
    """A Prometheus started with ``flags`` and the check it earns against a 15-day window."""

    flags: tuple[str, ...]
    outcome: Outcome
    actual: str | None
    size_limit: str | None = None
    reason: str | None = None


CASES = {
    "15d": Case(("--storage.tsdb.retention.time=15d",), "ok", "15d"),
    "2w1d": Case(("--storage.tsdb.retention.time=2w1d",), "ok", "15d"),
    "360h": Case(("--storage.tsdb.retention.time=360h",), "ok", "15d"),
    "default": Case((), "ok", "15d"),
    "10d": Case(
        ("--storage.tsdb.retention.time=10d",),
        "mismatch",
        "10d",
        reason=f"Prometheus keeps 10d, configured 15d: {FIX}",
    ),
    "2w": Case(
        ("--storage.tsdb.retention.time=2w",),
        "mismatch",
        "14d",
        reason=f"Prometheus keeps 14d, configured 15d: {FIX}",
    ),
    "90m": Case(
        ("--storage.tsdb.retention.time=90m",),
        "mismatch",
        "1h30m",
        reason=f"Prometheus keeps 1h30m, configured 15d: {FIX}",
    ),
    "deprecated flag 10d": Case(
        ("--storage.tsdb.retention=10d",),
        "mismatch",
        "10d",
        reason=f"Prometheus keeps 10d, configured 15d: {FIX}",
    ),
    "size-only": Case(
        ("--storage.tsdb.retention.size=10GB",),
        "mismatch",
        None,
        "10GiB",
        reason=f"size-only retention (10GiB), no time limit: {FIX}",
    ),
    "15d and size": Case(
        ("--storage.tsdb.retention.time=15d", "--storage.tsdb.retention.size=512MB"),
        "ok",
        "15d",
        "512MiB",
    ),
    "10d and size": Case(
        ("--storage.tsdb.retention.time=10d", "--storage.tsdb.retention.size=10GB"),
        "mismatch",
        "10d",
        "10GiB",
        reason=f"Prometheus keeps 10d (or less, once 10GiB are used), configured 15d: {FIX}",
    ),
    # Issue 10: runtimeinfo prints 1500MB as "15d or 1GiB476MiB", which failed every night.
    "15d and 1500MB": Case(
        ("--storage.tsdb.retention.time=15d", "--storage.tsdb.retention.size=1500MB"),
        "ok",
        "15d",
        "1GiB476MiB",
    ),
    "1500MB only": Case(
        ("--storage.tsdb.retention.size=1500MB",),
        "mismatch",
        None,
        "1GiB476MiB",
        reason=f"size-only retention (1GiB476MiB), no time limit: {FIX}",
    ),
    "10d and 1.5GB": Case(
        ("--storage.tsdb.retention.time=10d", "--storage.tsdb.retention.size=1.5GB"),
        "mismatch",
        "10d",
        "1GiB512MiB",
        reason=f"Prometheus keeps 10d (or less, once 1GiB512MiB are used), configured 15d: {FIX}",
    ),
}


@dataclass(frozen=True)
class Server:
    url: str
    case: Case


@pytest.fixture(scope="module", params=list(CASES), ids=list(CASES))
def prometheus(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One real Prometheus per case, alive while the tests of that case run."""
    case = CASES[request.param]
    with running_prometheus(tmp_path_factory.mktemp("prometheus") / "server", *case.flags) as url:
        yield Server(url, case)


@pytest.fixture(scope="module")
def plain_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prometheus keeping 15d, without auth, for the proxy and URL stories."""
    directory = tmp_path_factory.mktemp("plain") / "server"
    with running_prometheus(directory, "--storage.tsdb.retention.time=15d") as url:
        yield url


@dataclass(frozen=True)
class Secured:
    url: str
    tls: Tls


@pytest.fixture(scope="module")
def secured_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """A Prometheus keeping 10d behind TLS (a private CA) and basic auth (user janitor)."""
    directory = tmp_path_factory.mktemp("secured")
    tls = make_tls(directory / "tls")
    config = web_config(tls=tls, users={"janitor": "s3cret-pass"})
    flags = ("--storage.tsdb.retention.time=10d",)
    with running_prometheus(directory / "server", *flags, web_config=config) as url:
        yield Secured(url, tls)


def connect(
    url: str,
    *,
    username: str | None = None,
    password: str | None = None,
    token: str | None = None,
    ca_bundle: Path | None = None,
) -> Any:
    return connect_prometheus(
        username=username, password=password, token=token, ca_bundle=ca_bundle
    )


def http_sweeper(url: str, client: Any, expected_days: int = 15) -> Sweeper:
    """The metrics sweeper as a run builds it for the HTTP source."""
    return sweeper(lambda: read_retention(client, url), without_credentials(url), expected_days)


def only_action(url: str, client: Any, expected_days: int = 15) -> Action:
    steps = http_sweeper(url, client, expected_days).plan()
    assert len(steps) == 1
    assert steps[0].run is None
    (action,) = steps[0].actions
    assert action.event == EVENT
    assert action.deployment is None
    assert not action.deletes
    return action


def test_check_reports_the_effective_retention(prometheus: Server) -> None:
    """The event shows what the server keeps, as a duration compared with the 15-day window."""
    action = only_action(prometheus.url, connect(prometheus.url))

    case = prometheus.case
    assert action.target == prometheus.url
    expected_fields: dict[str, Any] = {"expected": "15d", "actual": case.actual}
    if case.size_limit is not None:
        expected_fields["size_limit"] = case.size_limit
    assert dict(action.fields) == expected_fields
    assert action.planned == Result(case.outcome, reason=case.reason)


def test_flags_imply_what_runtimeinfo_reports(prometheus: Server) -> None:
    """For servers without runtimeinfo, the flags fallback derives the same retention."""
    client = connect(prometheus.url)

    flags = api_data(client, prometheus.url, "/api/v1/status/flags")
    from_flags = retention_from_flags(flags, prometheus.url)
    effective = read_retention(client, prometheus.url)

    assert (from_flags.time, from_flags.size) == (effective.time, effective.size)


def test_preflight_finds_nothing_wrong_even_on_mismatch(prometheus: Server) -> None:
    """`janitor check` passes whenever the retention is readable; a mismatch is a run finding."""
    assert http_sweeper(prometheus.url, connect(prometheus.url)).problems() == []


def test_a_window_of_ten_days_matches_a_server_keeping_ten(secured_prometheus: Secured) -> None:
    """Basic auth over TLS with the CA bundle reads the retention; 10d matches a 10-day window."""
    client = connect(
        secured_prometheus.url,
        username="janitor",
        password="s3cret-pass",
        ca_bundle=secured_prometheus.tls.ca,
    )

    action = only_action(secured_prometheus.url, client, expected_days=10)

    assert action.planned == Result("ok")
    assert dict(action.fields) == {"expected": "10d", "actual": "10d"}


def test_wrong_password_fails_without_leaking_it(secured_prometheus: Secured) -> None:
    """A refused login fails the check with the HTTP status and names the settings to fix."""
    client = connect(
        secured_prometheus.url,
        username="janitor",
        password="not-the-pass",
        ca_bundle=secured_prometheus.tls.ca,
    )

    action = only_action(secured_prometheus.url, client)

    assert action.planned.outcome == "failed"
    error = action.planned.error or ""
    assert error.startswith(f"{secured_prometheus.url}/api/v1/status/runtimeinfo answered HTTP 401")
    assert "JANITOR_PROMETHEUS_USERNAME" in error
    assert "not-the-pass" not in error
    assert dict(action.fields) == {"expected": "15d", "actual": None}


def test_missing_credentials_fail_with_401(secured_prometheus: Secured) -> None:
    """Without credentials the server answers 401, and so does `janitor check`."""
    client = connect(secured_prometheus.url, ca_bundle=secured_prometheus.tls.ca)

    problems = http_sweeper(secured_prometheus.url, client).problems()

    assert len(problems) == 1
    assert "answered HTTP 401 Unauthorized" in problems[0]


def test_without_the_ca_bundle_tls_verification_fails(secured_prometheus: Secured) -> None:
    """A private CA not given to the janitor fails the check, pointing at the CA setting."""
    client = connect(secured_prometheus.url, username="janitor", password="s3cret-pass")

    action = only_action(secured_prometheus.url, client)

    assert action.planned.outcome == "failed"
    error = action.planned.error or ""
    assert error.startswith(f"TLS verification of {secured_prometheus.url} failed")
    assert "CERTIFICATE_VERIFY_FAILED" in error
    assert "JANITOR_PROMETHEUS_CA_BUNDLE" in error


def test_credentials_in_the_url_stay_out_of_the_target(secured_prometheus: Secured) -> None:
    """user:password@ in the URL authenticates, but the event target shows the bare URL."""
    host = secured_prometheus.url.removeprefix("https://")
    url = f"https://janitor:s3cret-pass@{host}"
    client = connect(url, ca_bundle=secured_prometheus.tls.ca)

    action = only_action(url, client, expected_days=10)

    assert action.target == secured_prometheus.url
    assert action.planned == Result("ok")


def test_bearer_token_passes_an_auth_proxy(plain_prometheus: str) -> None:
    """A static bearer token reaches Prometheus through a token-checking proxy."""
    with serving(bearer_proxy(plain_prometheus, "proxy-token")) as proxy:
        action = only_action(proxy.url, connect(proxy.url, token="proxy-token"))

    assert action.planned == Result("ok")
    assert dict(action.fields) == {"expected": "15d", "actual": "15d"}
    assert [(r.path, r.headers["authorization"]) for r in proxy.requests] == [
        ("/api/v1/status/runtimeinfo", "Bearer proxy-token"),
        ("/api/v1/status/flags", "Bearer proxy-token"),
    ]


def test_wrong_bearer_token_fails(plain_prometheus: str) -> None:
    """The proxy's 401 for a wrong token fails the check and names the token setting."""
    with serving(bearer_proxy(plain_prometheus, "proxy-token")) as proxy:
        action = only_action(proxy.url, connect(proxy.url, token="stale-token"))

    assert action.planned.outcome == "failed"
    assert "answered HTTP 401" in (action.planned.error or "")
    assert "_TOKEN" in (action.planned.error or "")
    assert "stale-token" not in (action.planned.error or "")


def test_unreachable_prometheus_fails_naming_the_address() -> None:
    """Nothing listening on the port: the check fails with the refused connection."""
    url = f"http://127.0.0.1:{free_port()}"

    action = only_action(url, connect(url))

    assert action.planned.outcome == "failed"
    assert action.planned.error == (
        f"cannot reach {url} (GET /api/v1/status/runtimeinfo): "
        "Failed to establish a new connection: [Errno 111] Connection refused"
    )


def test_a_429_asking_for_an_hour_fails_the_check_at_once() -> None:
    """A rate-limiting proxy answering 429 with Retry-After: 3600: one request, no hour-long
    sleep; the check fails with the status, the answer and the wait asked for."""

    def throttled(_: object) -> Answer:
        return Answer(429, b"rate limited\n", "text/plain", {"Retry-After": "3600"})

    with serving(throttled) as limiter:
        action = finishes(lambda: only_action(limiter.url, connect(limiter.url)))

    assert action.planned.outcome == "failed"
    assert action.planned.error == (
        f"{limiter.url}/api/v1/status/runtimeinfo answered HTTP 429: rate limited "
        "(Retry-After: 3600)"
    )
    assert len(limiter.requests) == 1


def test_https_to_a_plain_http_prometheus_says_to_use_http(plain_prometheus: str) -> None:
    """JANITOR_PROMETHEUS_URL=https://… for a Prometheus speaking plain HTTP: the check fails
    saying to use http://, not to set a CA bundle."""
    url = plain_prometheus.replace("http://", "https://")

    action = only_action(url, connect(url))

    assert action.planned.error == (
        f"the server at {url} speaks plain HTTP, not TLS: use http:// in JANITOR_PROMETHEUS_URL"
    )


def test_http_to_a_prometheus_on_tls_says_to_use_https(secured_prometheus: Secured) -> None:
    """JANITOR_PROMETHEUS_URL=http://… for a Prometheus on TLS: the check fails saying to use
    https://, not that the answer is not Prometheus'."""
    url = secured_prometheus.url.replace("https://", "http://")

    action = only_action(url, connect(url, username="janitor", password="s3cret-pass"))

    assert action.planned.error == (
        f"the server at {url} speaks HTTPS: use https:// in JANITOR_PROMETHEUS_URL"
    )


def test_a_login_page_is_not_prometheus() -> None:
    """An HTML page answering 200 (an SSO ingress) fails the check instead of passing it."""
    with serving(login_page) as page:
        action = only_action(page.url, connect(page.url))

    assert action.planned.outcome == "failed"
    assert action.planned.error == (
        f"{page.url}/api/v1/status/runtimeinfo did not answer like the Prometheus API "
        "(HTTP 200, text/html; charset=utf-8): is JANITOR_PROMETHEUS_URL the Prometheus "
        "server, with its route prefix?"
    )


def test_a_wrong_route_prefix_fails_with_404(plain_prometheus: str) -> None:
    """A URL path Prometheus does not serve 404s on both status endpoints: a clear failure."""
    url = f"{plain_prometheus}/prometheus"

    action = only_action(url, connect(url))

    assert action.planned.outcome == "failed"
    assert action.planned.error == (
        f"{url}/api/v1/status/flags answered HTTP 404: is JANITOR_PROMETHEUS_URL the "
        "Prometheus server, with its route prefix?"
    )


def test_an_agent_keeps_no_metrics(tmp_path: Path) -> None:
    """Prometheus in agent mode stores nothing: the check fails, it does not pass on 15d."""
    flags = ("--enable-feature=agent", f"--storage.agent.path={tmp_path / 'wal'}")
    with running_prometheus(tmp_path / "agent", *flags) as url:
        action = only_action(url, connect(url))

    assert action.planned.outcome == "failed"
    assert "runs in agent mode and keeps no metrics" in (action.planned.error or "")


STORAGE_RETENTION = {
    # runtimeinfo's storageRetention in every shape Prometheus prints (web/web.go runtimeInfo:
    # a time, a byte size, a disk share, each optional, in this order, joined by " or ").
    "15d": Retention(timedelta(days=15)),
    "2w1d": Retention(timedelta(days=15)),
    "1GiB476MiB": Retention(None, "1GiB476MiB"),
    "512MiB": Retention(None, "512MiB"),
    "80%": Retention(None, "80%"),
    "12.5%": Retention(None, "12.5%"),
    "15d or 1GiB476MiB": Retention(timedelta(days=15), "1GiB476MiB"),
    "15d or 80%": Retention(timedelta(days=15), "80%"),
    "10d or 1GiB476MiB or 80%": Retention(timedelta(days=10), "1GiB476MiB or 80%"),
    "1GiB476MiB or 80%": Retention(None, "1GiB476MiB or 80%"),
}


@pytest.mark.parametrize("text", list(STORAGE_RETENTION))
def test_every_storage_retention_shape_reads_as_its_time_and_size_limits(text: str) -> None:
    """The time part is what is compared; sizes and disk shares are size limits."""
    assert parse_storage_retention(text, "http://prometheus:9090") == STORAGE_RETENTION[text]


@pytest.mark.parametrize("text", ["15 days", "80% or 15d", "15d or 15d", "1GiB476MB", "15d or"])
def test_a_storage_retention_prometheus_never_prints_fails_the_check(text: str) -> None:
    """An answer in no shape Prometheus prints is a failed check naming it, never a guess."""
    with pytest.raises(RetentionUnreadable, match=r"unexpected storageRetention|not a Prometheus"):
        parse_storage_retention(text, "http://prometheus:9090")


# Prometheus 3.x cannot be installed here (the Debian package is 2.42). These are its answers
# as the v3 sources build them (web/web.go runtimeInfo, cmd/prometheus/main.go flags), served
# by a loopback fake at the HTTP boundary: the janitor's own client reads them unchanged.
PROMETHEUS_3_RUNTIMEINFO = {
    "startTime": "2026-11-20T10:00:00.000Z",
    "CWD": "/prometheus",
    "hostname": "prometheus-0",
    "serverTime": "2026-11-20T12:00:00.000Z",
    "reloadConfigSuccess": True,
    "lastConfigTime": "2026-11-20T10:00:00.000Z",
    "corruptionCount": 0,
    "goroutineCount": 88,
    "GOMAXPROCS": 2,
    "GOMEMLIMIT": 3703818240,
    "GOGC": "75",
    "GODEBUG": "",
}
# 3.x dropped --storage.tsdb.retention and has the --agent switch; unset flags read 0s / 0B.
PROMETHEUS_3_FLAGS = {
    "agent": "false",
    "config.file": "/etc/prometheus/prometheus.yml",
    "enable-feature": "",
    "storage.tsdb.path": "/prometheus",
    "storage.tsdb.retention.size": "0B",
    "storage.tsdb.retention.time": "0s",
    "web.listen-address": "0.0.0.0:9090",
}


def prometheus_3(storage_retention: str, **flags: str) -> Callable[[Request], Answer]:
    """A Prometheus 3.x answering runtimeinfo and flags as above."""
    answers = {
        "/api/v1/status/runtimeinfo": PROMETHEUS_3_RUNTIMEINFO
        | {"storageRetention": storage_retention},
        "/api/v1/status/flags": PROMETHEUS_3_FLAGS | flags,
    }

    def respond(request: Request) -> Answer:
        data = answers.get(request.path)
        if data is None:
            return Answer(404, b"404 page not found\n", "text/plain; charset=utf-8")
        return Answer(200, json.dumps({"status": "success", "data": data}).encode())

    return respond


PROMETHEUS_3_CASES = {
    # storage.tsdb.retention in prometheus.yml: the flags read 0s, runtimeinfo has the truth.
    "config-file 30d": (
        prometheus_3("30d"),
        Result("mismatch", reason=f"Prometheus keeps 30d, configured 15d: {FIX}"),
        "30d",
        None,
    ),
    "config-file 15d and 80%": (prometheus_3("15d or 80%"), Result("ok"), "15d", "80%"),
    "80% only": (
        prometheus_3("80%"),
        Result("mismatch", reason=f"size-only retention (80%), no time limit: {FIX}"),
        None,
        "80%",
    ),
    # --agent: runtimeinfo still shows the 15d default; only the flags tell.
    "agent": (
        prometheus_3("15d", agent="true"),
        Result(
            "failed",
            error="Prometheus at {url} runs in agent mode and keeps no metrics: point "
            "JANITOR_PROMETHEUS_URL at the Prometheus server that stores them",
        ),
        None,
        None,
    ),
}


@pytest.mark.parametrize("case", list(PROMETHEUS_3_CASES))
def test_prometheus_3_answers_are_read_as_prometheus_3_means_them(case: str) -> None:
    """Prometheus 3.x: runtimeinfo decides (also for a config-file retention, with flags at
    0s), disk shares are size limits, and --agent fails the check though runtimeinfo says 15d."""
    respond, result, actual, size_limit = PROMETHEUS_3_CASES[case]
    with serving(respond) as fake:
        action = only_action(fake.url, connect(fake.url))

    if result.error is not None:
        result = Result("failed", error=result.error.format(url=fake.url))
    assert action.planned == result
    expected_fields: dict[str, Any] = {"expected": "15d", "actual": actual}
    if size_limit is not None:
        expected_fields["size_limit"] = size_limit
    assert dict(action.fields) == expected_fields
    assert [r.path for r in fake.requests] == [
        "/api/v1/status/runtimeinfo",
        "/api/v1/status/flags",
    ]


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        (
            {"JANITOR_PROMETHEUS_TOKEN": "t", "JANITOR_PROMETHEUS_USERNAME": "u"},
            "JANITOR_PROMETHEUS_TOKEN and JANITOR_PROMETHEUS_USERNAME",
        ),
        ({"JANITOR_PROMETHEUS_PASSWORD": "p"}, "JANITOR_PROMETHEUS_PASSWORD is set without"),
    ],
)
def test_contradictory_auth_settings_are_configuration_errors(
    environ: dict[str, str], message: str
) -> None:
    """Settings that cannot work are refused when settings load, before any request."""
    with pytest.raises(ConfigurationError, match=message):
        load_settings({}, {"JANITOR_PROMETHEUS_URL": "http://127.0.0.1:9090", **environ})


def test_a_url_that_is_not_http_is_a_configuration_error_without_secrets() -> None:
    """A non-HTTP URL is refused, and its password is not echoed back."""
    with pytest.raises(ConfigurationError) as refused:
        load_settings({}, {"JANITOR_PROMETHEUS_URL": "ftp://janitor:hunter2@prometheus:9090"})

    assert "hunter2" not in str(refused.value)
    assert "JANITOR_PROMETHEUS_URL" in str(refused.value)


# The kubernetes source: a Prometheus Operator resource or the StatefulSet running Prometheus.


def kube_sweeper(client: k8s.ApiClient, namespace: str, name: str, kind: Kind) -> Sweeper:
    """The metrics sweeper as a run builds it for the kubernetes source."""
    return sweeper(
        lambda: kubernetes_retention(client, namespace=namespace, name=name, kind=kind),
        kubernetes_target(namespace=namespace, name=name, kind=kind),
        15,
    )


KUBE_TOKEN = "service-account-token"
OPERATOR_PATH = "/apis/monitoring.coreos.com/v1/namespaces/monitoring/prometheuses/"
STATEFUL_SET_PATH = "/apis/apps/v1/namespaces/astronomer/statefulsets/"


def operator_prometheus(name: str, **spec: str) -> dict[str, Any]:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "Prometheus",
        "metadata": {"name": name, "namespace": "monitoring"},
        "spec": {"replicas": 1, **spec},
    }


def stateful_set(name: str, containers: dict[str, list[str]]) -> dict[str, Any]:
    labels = {"component": "prometheus"}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": "astronomer"},
        "spec": {
            "serviceName": name,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {"name": container, "image": f"example/{container}", "args": args}
                        for container, args in containers.items()
                    ]
                },
            },
        },
    }


# As Astronomer's chart renders it: reloader sidecars first, Prometheus last.
ASTRONOMER_ARGS = [
    "--config.file=/etc/prometheus/config/prometheus.yaml",
    "--storage.tsdb.path=/prometheus",
    "--storage.tsdb.retention.time=15d",
    "--web.enable-lifecycle",
]
RELOADER = ["--webhook-url=http://localhost:9090/-/reload", "--volume-dir=/etc/prometheus/config"]

KUBE_OBJECTS: dict[str, dict[str, Any]] = {
    OPERATOR_PATH + "k8s": operator_prometheus("k8s", retention="15d"),
    OPERATOR_PATH + "short": operator_prometheus("short", retention="10d", retentionSize="10GB"),
    OPERATOR_PATH + "by-size": operator_prometheus("by-size", retentionSize="50GB"),
    OPERATOR_PATH + "defaulted": operator_prometheus("defaulted"),
    OPERATOR_PATH + "sized": operator_prometheus("sized", retention="15d", retentionSize="1500MB"),
    STATEFUL_SET_PATH + "astronomer-prometheus": stateful_set(
        "astronomer-prometheus",
        {"configmap-reloader": RELOADER, "prometheus": ASTRONOMER_ARGS},
    ),
    STATEFUL_SET_PATH + "split-args": stateful_set(
        "split-args",
        {"server": ["--storage.tsdb.path=/data", "--storage.tsdb.retention.time", "2w"]},
    ),
    STATEFUL_SET_PATH + "flagless": stateful_set(
        "flagless", {"prometheus": ["--config.file=/etc/prometheus/prometheus.yml"]}
    ),
    STATEFUL_SET_PATH + "sidecars-only": stateful_set(
        "sidecars-only", {"configmap-reloader": RELOADER}
    ),
    STATEFUL_SET_PATH + "by-size": stateful_set(
        "by-size", {"prometheus": ["--storage.tsdb.retention.size", "1500MB"]}
    ),
    STATEFUL_SET_PATH + "agent": stateful_set(
        "agent", {"prometheus": ["--config.file=/etc/prometheus/prometheus.yml", "--agent"]}
    ),
    STATEFUL_SET_PATH + "agent-2x": stateful_set(
        "agent-2x", {"prometheus": ["--enable-feature=agent,exemplar-storage"]}
    ),
    STATEFUL_SET_PATH + "locked": {
        "kind": "Status",
        "code": 403,
        "reason": "Forbidden",
        "message": 'statefulsets.apps "locked" is forbidden: User '
        '"system:serviceaccount:astronomer:janitor" cannot get resource "statefulsets"',
    },
}


@pytest.fixture(scope="module")
def kube_api() -> Iterator[LoopbackServer]:
    """A loopback Kubernetes API serving the Prometheus resources above."""
    with serving(kubernetes_api(KUBE_OBJECTS, KUBE_TOKEN)) as server:
        yield server


def api_client(server: LoopbackServer, token: str = KUBE_TOKEN) -> k8s.ApiClient:
    configuration = k8s.Configuration(host=server.url, api_key={"authorization": f"Bearer {token}"})
    return k8s.ApiClient(configuration)


@dataclass(frozen=True)
class KubeCase:
    """A resource the janitor is pointed at, and the check it earns against 15 days."""

    kind: Kind
    name: str
    outcome: Outcome
    actual: str | None
    text: str | None = None  # the reason on mismatch, the error on failure
    size_limit: str | None = None

    @property
    def namespace(self) -> str:
        return "monitoring" if self.kind == "prometheus" else "astronomer"

    @property
    def path(self) -> str:
        return (OPERATOR_PATH if self.kind == "prometheus" else STATEFUL_SET_PATH) + self.name


KUBE_CASES = [
    KubeCase("prometheus", "k8s", "ok", "15d"),
    KubeCase(
        "prometheus",
        "short",
        "mismatch",
        "10d",
        f"Prometheus keeps 10d (or less, once 10GiB are used), configured 15d: {FIX}",
        "10GiB",
    ),
    KubeCase(
        "prometheus",
        "by-size",
        "mismatch",
        None,
        f"size-only retention (50GiB), no time limit: {FIX}",
        "50GiB",
    ),
    KubeCase("prometheus", "sized", "ok", "15d", size_limit="1GiB476MiB"),
    KubeCase(
        "prometheus",
        "defaulted",
        "mismatch",
        "1d",
        "Prometheus keeps 1d (the Prometheus Operator's default: spec.retention is unset), "
        f"configured 15d: {FIX}",
    ),
    KubeCase("statefulset", "astronomer-prometheus", "ok", "15d"),
    KubeCase(
        "statefulset",
        "split-args",
        "mismatch",
        "14d",
        f"Prometheus keeps 14d, configured 15d: {FIX}",
    ),
    KubeCase("statefulset", "flagless", "ok", "15d"),
    KubeCase(
        "statefulset",
        "sidecars-only",
        "failed",
        None,
        "statefulset astronomer/sidecars-only has no container named prometheus nor one "
        "with --storage.tsdb flags",
    ),
    KubeCase(
        "statefulset",
        "by-size",
        "mismatch",
        None,
        f"size-only retention (1GiB476MiB), no time limit: {FIX}",
        "1GiB476MiB",
    ),
    KubeCase(
        "statefulset",
        "agent",
        "failed",
        None,
        "statefulset astronomer/agent starts Prometheus that runs in agent mode and keeps no "
        "metrics: point JANITOR_PROMETHEUS_NAME at the Prometheus server that stores them",
    ),
    KubeCase(
        "statefulset",
        "agent-2x",
        "failed",
        None,
        "statefulset astronomer/agent-2x starts Prometheus that runs in agent mode and keeps "
        "no metrics: point JANITOR_PROMETHEUS_NAME at the Prometheus server that stores them",
    ),
    KubeCase(
        "statefulset",
        "locked",
        "failed",
        None,
        "the Kubernetes API refused to read statefulset astronomer/locked (HTTP 403): the "
        "janitor's service account needs get on statefulsets.apps in that namespace",
    ),
    KubeCase(
        "statefulset",
        "gone",
        "failed",
        None,
        "statefulset astronomer/gone not found (HTTP 404): check "
        "JANITOR_PROMETHEUS_NAMESPACE / _NAME / _KIND",
    ),
]


@pytest.mark.parametrize("case", KUBE_CASES, ids=[f"{c.kind}-{c.name}" for c in KUBE_CASES])
def test_kubernetes_source_reads_the_declared_retention(
    kube_api: LoopbackServer, case: KubeCase
) -> None:
    """The resource's retention is judged like the HTTP source's, from one GET of it."""
    kube_api.requests.clear()

    steps = kube_sweeper(api_client(kube_api), case.namespace, case.name, case.kind).plan()

    assert len(steps) == 1
    (action,) = steps[0].actions
    assert action.event == EVENT
    assert action.target == f"kubernetes:{case.namespace}/{case.kind}/{case.name}"
    assert action.fields["expected"] == "15d"
    assert action.fields["actual"] == case.actual
    assert action.fields.get("size_limit") == case.size_limit
    assert action.planned.outcome == case.outcome
    assert (action.planned.reason or action.planned.error) == case.text
    assert [(r.method, r.path) for r in kube_api.requests] == [("GET", case.path)]


def test_kubernetes_preflight_reports_a_rejected_token(kube_api: LoopbackServer) -> None:
    """`janitor check` with a token the API refuses names the RBAC/credential problem."""
    problems = kube_sweeper(
        api_client(kube_api, token="expired"), "monitoring", "k8s", "prometheus"
    ).problems()

    assert problems == [
        "the Kubernetes API rejected the janitor's credentials (HTTP 401) reading prometheus "
        "monitoring/k8s: check its service account token"
    ]


def test_kubernetes_preflight_passes_for_a_readable_resource(kube_api: LoopbackServer) -> None:
    """A readable Prometheus resource leaves nothing for `janitor check` to report."""
    sweeper = kube_sweeper(
        api_client(kube_api), "astronomer", "astronomer-prometheus", "statefulset"
    )
    assert sweeper.problems() == []
