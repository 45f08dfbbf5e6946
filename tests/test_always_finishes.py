"""run.finished is always the last line (issue 11, SAFETY.md): remotes broken in ways the
code does not expect (answers of the wrong JSON shape, fields of the wrong type, bodies cut
in the middle of a JSON document) end the run with run.finished, exit 1 with the error where
work failed, and the summary Event still posted on the CronJob through the Kubernetes API
stand-in.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from kubernetes import client

from janitor.config import load_settings
from janitor.events import make_logger
from janitor.lease import hold_lease
from janitor.runner import run
from tests.conftest import Houston, Run
from tests.fault_proxy import Answer, HttpProxy, Rule
from tests.k8s_api_server import ApiState, running_api_server
from tests.test_lease import LEASE, NAMESPACE, T0, Clock, micro
from tests.test_run_in_cluster import IN_CLUSTER
from tests.world import (
    Remotes,
    assert_recorded_whole,
    registry,  # noqa: F401 - pytest fixture
    remotes,  # noqa: F401 - pytest fixture
    seed_world,
    servers,  # noqa: F401 - pytest fixture
)


@dataclass
class Kubernetes:
    """The Kubernetes API stand-in behind a fault proxy, and a client for it."""

    proxy: HttpProxy
    state: ApiState
    api: client.ApiClient


@pytest.fixture
def kubernetes() -> Iterator[Kubernetes]:
    with running_api_server() as (url, state):
        proxy = HttpProxy(url)
        api = client.ApiClient(client.Configuration(host=proxy.url))
        try:
            yield Kubernetes(proxy, state, api)
        finally:
            api.close()  # type: ignore[no-untyped-call]
            proxy.close()


def run_in_cluster(env: dict[str, str], kube: Kubernetes) -> Run:
    """One in-process run as the CronJob's pod: with the Lease and the summary Event."""
    out = io.StringIO()
    settings = load_settings({}, env | IN_CLUSTER)
    log = make_logger("json", run_id="t", dry_run=False, stream=out, secrets=settings.secrets())
    code = run(settings, log, kube=kube.api)
    return Run(code, [json.loads(line) for line in out.getvalue().splitlines()])


def posted(kube: Kubernetes) -> list[dict[str, Any]]:
    with kube.state.lock:
        return list(kube.state.events)


# Kubernetes answers of a shape nobody expected: (method, path, answer, exit code).
KUBERNETES_BREAKS: dict[str, tuple[str, str, bytes, int]] = {
    "the CronJob read answers a JSON list": ("GET", "/cronjobs/", b"[1, 2]", 0),
    "the CronJob's metadata is a list": ("GET", "/cronjobs/", b'{"metadata": [1]}', 0),
    "the CronJob read is cut mid-document": ("GET", "/cronjobs/", b'{"metadata": {"uid"', 0),
    # Read as an empty Lease: the janitor's takeover write is refused (404).
    "the Lease read answers a JSON list": ("GET", "/leases/", b"[]", 1),
    "the Lease's fields have the wrong types": (
        "GET",
        "/leases/",
        b'{"metadata": {"name": "astro-janitor", "resourceVersion": "1"},'
        b' "spec": {"holderIdentity": 5, "leaseDurationSeconds": "soon"}}',
        1,
    ),
    # The client does not read a create's answer: the run goes on, its summary posted.
    "the Lease creation answers a string": ("POST", "/leases", b'"created"', 0),
}


@pytest.mark.parametrize("case", list(KUBERNETES_BREAKS))
def test_a_kubernetes_answer_of_an_unexpected_shape_still_ends_with_the_summary_and_event(
    houston: Houston,
    remotes: Remotes,  # noqa: F811 - the imported fixture
    kubernetes: Kubernetes,
    case: str,
) -> None:
    """A malformed CronJob read no longer swallows run.finished: the Event is posted
    without the CronJob's uid. A malformed Lease answer fails the run before any work
    (exit 1, the error in run.finished, every row kept) and the Warning Event is posted."""
    world = seed_world(houston, remotes, databases=False)
    method, path, body, code = KUBERNETES_BREAKS[case]
    kubernetes.proxy.add(Rule(method, path, Answer(200 if method == "GET" else 201, body)))

    result = run_in_cluster(world.env, kubernetes)

    assert result.code == code
    assert result.finished["event"] == "run.finished"
    assert result.finished["exit_code"] == code
    assert "kubernetes_event_error" not in result.finished
    (event,) = posted(kubernetes)
    assert event["type"] == ("Normal" if code == 0 else "Warning")
    assert f"exit code {code}" in event["message"]
    if code == 1:
        assert result.finished["error"]
        assert {r for r, _ in world.state().rows} >= set(world.expired)
    else:
        assert_recorded_whole(result, world)
    if path == "/cronjobs/":
        assert "uid" not in event["involvedObject"]


def test_an_event_creation_answered_with_junk_is_reported_and_changes_no_exit_code(
    houston: Houston,
    remotes: Remotes,  # noqa: F811 - the imported fixture
    kubernetes: Kubernetes,
) -> None:
    """The Event POST answered 201 with a body the client cannot read: run.finished says
    so in kubernetes_event_error and the run's own exit code stands."""
    world = seed_world(houston, remotes, databases=False)
    kubernetes.proxy.add(Rule("POST", "/events", Answer(201, b'{"involvedObject": 5}')))

    result = run_in_cluster(world.env, kubernetes)

    assert result.code == 0
    assert result.finished["event"] == "run.finished"
    assert "unexpected error" in result.finished["kubernetes_event_error"]


INVALID_LINK = (("Link", '<http://[::1>; rel="next"'),)
REMOTE_BREAKS: dict[str, tuple[str, str, str, Answer, int]] = {
    # (server, method, path, answer, requests let through first)
    "the listing proving A empty links to an invalid URL": (
        "registry",
        "GET",
        "/tags/list",
        Answer(200, b'{"name": "a", "tags": []}', INVALID_LINK),
        2,
    ),
    "the first tag listing links to an invalid URL": (
        "registry",
        "GET",
        "/tags/list",
        Answer(200, b'{"name": "a", "tags": ["9"]}', INVALID_LINK),
        0,
    ),
    "an index entry is a list": (
        "elasticsearch",
        "GET",
        "^/fluentd",
        Answer(200, b'{"fluentd.x-1": []}'),
        0,
    ),
    "an index's aliases are a list": (
        "elasticsearch",
        "GET",
        "^/fluentd",
        Answer(200, b'{"fluentd.x-1": {"aliases": [1], "settings": {}}}'),
        0,
    ),
    "an index's lifecycle is a string": (
        "elasticsearch",
        "GET",
        "^/fluentd",
        Answer(200, b'{"fluentd.x-1": {"settings": {"index": {"lifecycle": "p"}}}}'),
        0,
    ),
    "Prometheus' status data is a list": (
        "prometheus",
        "GET",
        "/runtimeinfo",
        Answer(200, b'{"status": "success", "data": []}'),
        0,
    ),
}


@pytest.mark.parametrize("case", list(REMOTE_BREAKS))
def test_a_remote_answer_of_an_unexpected_shape_fails_with_the_error_and_the_run_ends(
    houston: Houston,
    remotes: Remotes,  # noqa: F811 - the imported fixture
    kubernetes: Kubernetes,
    case: str,
) -> None:
    """An answer the code does not expect fails what it was for, with the error and where
    it was raised; every deployment still ends with its purge event (kept), the run goes
    on, ends with run.finished and exit 1, and the Warning Event is posted."""
    world = seed_world(houston, remotes, databases=False)
    server, method, path, answer, skip = REMOTE_BREAKS[case]
    remotes.http(server).add(Rule(method, path, answer, skip=skip))

    result = run_in_cluster(world.env, kubernetes)

    assert result.code == 1
    assert_recorded_whole(result, world)
    failures = [e for e in result.events if e.get("outcome") == "failed"]
    assert failures, result.events
    (event,) = posted(kubernetes)
    assert event["type"] == "Warning"
    assert "exit code 1" in event["message"]
    releases = {r for r, _ in world.state().rows}
    assert all(not world.state().left_of(r) for r in world.expired if r not in releases)


def test_a_houston_table_of_an_unexpected_shape_ends_the_run_with_the_error_and_event(
    houston: Houston,
    remotes: Remotes,  # noqa: F811 - the imported fixture
    kubernetes: Kubernetes,
) -> None:
    """deletedAt stored as text: the fleet cannot be read; run.finished names the Houston
    error, exit 1, nothing is touched, and the Warning Event is posted."""
    world = seed_world(houston, remotes, databases=False)
    houston.execute('ALTER TABLE "houston$default"."Deployment" ALTER "deletedAt" TYPE text')
    before = world.state()

    result = run_in_cluster(world.env, kubernetes)

    assert result.code == 1
    assert result.finished["event"] == "run.finished"
    assert result.finished["error"].startswith("Houston database: ")
    assert world.state() == before
    (event,) = posted(kubernetes)
    assert event["type"] == "Warning"


@pytest.mark.parametrize(
    "junk",
    [b"[]", b'{"metadata": {"name": "astro-janitor"}, "spec": {"leaseDurationSeconds": "x"}}'],
    ids=["read as an empty Lease", "fields of the wrong type"],
)
def test_a_lease_renewal_answered_with_junk_is_retried_on_the_next_tick(
    kubernetes: Kubernetes, junk: bytes
) -> None:
    """One renewal read answered with junk neither stops the renewals (as if another pod
    held the Lease) nor kills the renewal thread: the next tick renews the Lease, so no
    other run takes it over while this one works."""
    clock = Clock(T0)
    later = T0 + timedelta(minutes=10)
    kubernetes.proxy.add(Rule("GET", "/leases/", Answer(200, junk), skip=1))
    lease = hold_lease(
        kubernetes.api,
        namespace=NAMESPACE,
        name=LEASE,
        holder="janitor-a",
        duration_s=3,
        clock=clock,
    )
    with lease as held:
        assert held is True
        clock.now = later
        renewed = kubernetes.state.wait_for(
            lambda s: s.leases[(NAMESPACE, LEASE)]["spec"]["renewTime"] == micro(later),
            timeout_s=5,
        )
    assert renewed, "the Lease was not renewed after the malformed answer"
    assert kubernetes.proxy.count("GET", "/leases/") >= 3
