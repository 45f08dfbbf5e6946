"""The registry sweeper against real registries: what it plans, what it deletes, what it
reports, and that the row may go only once the repository lists no tags."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import replace

import pytest

from janitor.errors import ConfigurationError
from janitor.naming import Templates
from janitor.plan import Action, Deployment, Result, Share
from janitor.sweepers.registry import (
    garbage_collect_due,
    plan_registry,
)
from tests.registry_server import (
    FAST,
    Fault,
    Proxy,
    Registry,
    connect,
    dangle,
    free_port,
    make_proxy,
    readonly_registry,
    registry,
    unique_release,
)

__all__ = ["make_proxy", "readonly_registry", "registry"]

TEMPLATE = Templates("{release_snake}_airflow", (), repository="{release}/airflow")
MakeProxy = Callable[..., Proxy]


@pytest.fixture
def executor() -> Iterator[Executor]:
    """The JANITOR_CONCURRENCY pool the runner hands to the sweeper."""
    with ThreadPoolExecutor(4, "registry-test") as pool:
        yield pool


def expired(*releases: str) -> list[Deployment]:
    return [Deployment(f"id-{r}", r, "2024-01-01T00:00:00Z") for r in releases]


def planned(work: Share) -> list[tuple[Action, Result]]:
    return [(a, a.planned) for s in work.steps for a in s.actions]


def execute(work: Share) -> list[tuple[Action, Result]]:
    """What the runner does: each step's run (or its planned outcome), one result per action."""
    settled: list[tuple[Action, Result]] = []
    for step in work.steps:
        results: Sequence[Result] = step.run() if step.run else [a.planned for a in step.actions]
        settled += list(zip(step.actions, results, strict=True))
    return settled


def outcomes(settled: list[tuple[Action, Result]]) -> dict[str, str]:
    return {a.target: r.outcome for a, r in settled}


def test_expired_deployments_lose_every_tag_and_nothing_else(
    registry: Registry, make_proxy: MakeProxy, executor: Executor
) -> None:
    """Two expired deployments with single-arch, multi-arch (Docker list and OCI index) and
    shared-digest tags are emptied with at most 2 manifest requests per tag; a live
    deployment's repository is untouched, and remaining() then clears both rows."""
    pusher = registry.pusher()
    first, second, live = unique_release("a"), unique_release("b"), unique_release("live")
    single = pusher.image(f"{first}/airflow", "1.0.0")
    pusher.put_manifest(f"{first}/airflow", "latest", single)
    docker_list = pusher.index(f"{first}/airflow", "multi", oci=False)
    oci_index = pusher.index(f"{second}/airflow", "2.0.0", oci=True)
    pusher.put_manifest(f"{second}/airflow", "deploy-42", oci_index)
    pusher.image(f"{second}/airflow", "deploy-41", label="41")
    pusher.image(f"{live}/airflow", "1.0.0")
    proxy = make_proxy(registry.url)
    client = connect(registry, proxy.url)

    works = plan_registry(client, expired(first, second), TEMPLATE, executor)

    digests = {a.target: a.fields["digest"] for a, _ in planned(works[f"id-{first}"])}
    assert digests == {
        f"{first}/airflow:1.0.0": single.digest,
        f"{first}/airflow:latest": single.digest,
        f"{first}/airflow:multi": docker_list.digest,
    }
    assert {a.deployment for a, _ in planned(works[f"id-{second}"])} == {second}
    assert all(r.outcome == "planned" for w in works.values() for _, r in planned(w))

    settled = [pair for w in works.values() for pair in execute(w)]

    assert outcomes(settled) == {
        f"{first}/airflow:1.0.0": "done",
        f"{first}/airflow:latest": "done",
        f"{first}/airflow:multi": "done",
        f"{second}/airflow:2.0.0": "done",
        f"{second}/airflow:deploy-41": "done",
        f"{second}/airflow:deploy-42": "done",
    }
    assert {a.event for a, _ in settled} == {"registry.tag.delete"}
    assert pusher.tags(f"{first}/airflow") == []
    assert pusher.tags(f"{second}/airflow") == []
    assert pusher.tags(f"{live}/airflow") == ["1.0.0"]
    assert not [p for _, p in proxy.paths if live in p]
    manifest_requests = proxy.counts["HEAD manifests"] + proxy.counts["DELETE manifests"]
    assert manifest_requests <= 2 * len(settled)
    assert proxy.counts["GET manifests"] == 0, "the digest header makes a GET needless"
    assert proxy.counts["DELETE manifests"] == 4  # one per distinct digest
    assert works[f"id-{first}"].remaining[0]() is None
    assert works[f"id-{second}"].remaining[0]() is None
    assert garbage_collect_due({"registry.tag.delete": {"done": len(settled)}})


def test_an_unknown_repository_is_already_clean(registry: Registry, executor: Executor) -> None:
    """A deployment that never pushed an image: one absent action, and the row may go."""
    release = unique_release()

    work = plan_registry(connect(registry), expired(release), TEMPLATE, executor)[f"id-{release}"]

    assert [(a.target, r.outcome, r.reason) for a, r in execute(work)] == [
        (f"{release}/airflow", "absent", "repository unknown")
    ]
    assert work.remaining[0]() is None
    assert not garbage_collect_due({"registry.tag.delete": {"absent": 1}})


def test_a_rerun_after_a_finished_sweep_finds_nothing_to_do(
    registry: Registry, executor: Executor
) -> None:
    """A repository whose tags are all gone plans no action and reports itself clean."""
    release = unique_release()
    image = registry.pusher().image(f"{release}/airflow", "v1")
    connect(registry).delete_manifest(f"{release}/airflow", image.digest)

    work = plan_registry(connect(registry), expired(release), TEMPLATE, executor)[f"id-{release}"]

    assert work.steps == ()
    assert work.remaining[0]() is None


def test_a_digest_deleted_between_plan_and_run_is_absent(
    registry: Registry, executor: Executor
) -> None:
    """Someone else deleted the image after planning: both its tags are reported absent."""
    release = unique_release()
    pusher = registry.pusher()
    image = pusher.image(f"{release}/airflow", "a")
    pusher.put_manifest(f"{release}/airflow", "b", image)
    client = connect(registry)
    work = plan_registry(client, expired(release), TEMPLATE, executor)[f"id-{release}"]
    client.delete_manifest(f"{release}/airflow", image.digest)

    assert outcomes(execute(work)) == {
        f"{release}/airflow:a": "absent",
        f"{release}/airflow:b": "absent",
    }
    assert work.remaining[0]() is None


def test_deletion_disabled_fails_every_tag_and_keeps_the_row(
    readonly_registry: Registry, executor: Executor
) -> None:
    """On a registry with deletion disabled each tag fails with the setting to change, the
    tags stay, and remaining() keeps the deployment row."""
    release = unique_release()
    readonly_registry.pusher().image(f"{release}/airflow", "v1")
    client = connect(readonly_registry)

    work = plan_registry(client, expired(release), TEMPLATE, executor)[f"id-{release}"]
    settled = execute(work)

    assert [(a.target, r.outcome) for a, r in settled] == [(f"{release}/airflow:v1", "failed")]
    assert "storage.delete.enabled" in str(settled[0][1].error)
    assert readonly_registry.pusher().tags(f"{release}/airflow") == ["v1"]
    assert work.remaining[0]() == f"repository {release}/airflow still lists 1 tag(s)"


def test_unreachable_registry_fails_each_deployment_once(
    registry: Registry, executor: Executor
) -> None:
    """Nothing listening: one failed action per deployment naming the cause, rows kept."""
    releases = [unique_release(), unique_release()]
    client = connect(registry, f"http://127.0.0.1:{free_port()}")

    works = plan_registry(client, expired(*releases), TEMPLATE, executor)

    for release in releases:
        settled = execute(works[f"id-{release}"])
        assert [(a.target, r.outcome) for a, r in settled] == [(f"{release}/airflow", "failed")]
        assert "cannot reach" in str(settled[0][1].error)
        assert works[f"id-{release}"].remaining[0]() is not None


def test_a_url_that_is_not_a_registry_is_a_configuration_error(
    registry: Registry, make_proxy: MakeProxy, executor: Executor
) -> None:
    """A web page on the registry URL stops the plan before anything is deleted."""
    proxy = make_proxy(registry.url)
    proxy.inject(Fault("*", "/", 200, b"<html>login</html>", times=None))

    with pytest.raises(ConfigurationError, match="not a Docker registry"):
        plan_registry(connect(registry, proxy.url), expired(unique_release()), TEMPLATE, executor)


def test_a_tag_that_cannot_be_resolved_is_failed_and_keeps_the_row(
    registry: Registry, make_proxy: MakeProxy, executor: Executor
) -> None:
    """A tag whose HEAD keeps failing is reported failed; the other tags are still deleted
    and remaining() keeps the row for the next run."""
    release = unique_release()
    pusher = registry.pusher()
    pusher.image(f"{release}/airflow", "broken")
    pusher.image(f"{release}/airflow", "fine", label="fine")
    proxy = make_proxy(registry.url)
    proxy.inject(Fault("HEAD", "/manifests/broken", 500, times=None))
    client = connect(registry, proxy.url)

    work = plan_registry(client, expired(release), TEMPLATE, executor)[f"id-{release}"]
    settled = execute(work)

    assert outcomes(settled) == {
        f"{release}/airflow:broken": "failed",
        f"{release}/airflow:fine": "done",
    }
    error = next(r.error for a, r in settled if a.target.endswith(":broken"))
    assert f"{release}/airflow:broken" in str(error)
    assert "500" in str(error)
    assert pusher.tags(f"{release}/airflow") == ["broken"]
    assert "not fully swept" in str(work.remaining[0]())


def test_a_registry_failing_twice_then_recovering(
    registry: Registry, make_proxy: MakeProxy, executor: Executor
) -> None:
    """503 twice on the listing and twice on the delete: retries absorb both."""
    release = unique_release()
    registry.pusher().image(f"{release}/airflow", "v1")
    proxy = make_proxy(registry.url)
    listing = proxy.inject(Fault("GET", "/tags/list", 503, times=2))
    deleting = proxy.inject(Fault("DELETE", "/manifests/", 503, times=2))
    client = connect(registry, proxy.url)

    work = plan_registry(client, expired(release), TEMPLATE, executor)[f"id-{release}"]

    assert outcomes(execute(work)) == {f"{release}/airflow:v1": "done"}
    assert (listing.served, deleting.served) == (2, 2)
    assert registry.pusher().tags(f"{release}/airflow") == []


def test_tags_with_odd_characters(
    registry: Registry, make_proxy: MakeProxy, executor: Executor
) -> None:
    """Valid but unusual tags are deleted like any other; names outside the tag grammar in a
    listing are reported failed and never put into a request, so no other repository is
    reached through them."""
    release, other = unique_release(), unique_release("other")
    pusher = registry.pusher()
    odd = ["_underscore", "UPPER.case-1", "v1.2.3__rc", "x" * 128]
    image = pusher.image(f"{release}/airflow", odd[0])
    for tag in odd[1:]:
        pusher.put_manifest(f"{release}/airflow", tag, image)
    pusher.image(f"{other}/airflow", "v1")
    proxy = make_proxy(registry.url)
    client = connect(registry, proxy.url)
    injected = [*odd, f"../../{other}/airflow/manifests/v1", "a b", "v1?x=1"]
    fault = proxy.inject(
        Fault(
            "GET",
            f"/v2/{release}/airflow/tags/list",
            200,
            json.dumps({"name": f"{release}/airflow", "tags": injected}).encode(),
            {"Content-Type": "application/json"},
        )
    )

    work = plan_registry(client, expired(release), TEMPLATE, executor)[f"id-{release}"]
    settled = execute(work)

    assert fault.served == 1
    results = outcomes(settled)
    assert {t: results[f"{release}/airflow:{t}"] for t in odd} == dict.fromkeys(odd, "done")
    assert [r for t, r in results.items() if t.split(":", 1)[1] not in odd] == ["failed"] * 3
    assert pusher.tags(f"{release}/airflow") == []
    assert pusher.tags(f"{other}/airflow") == ["v1"]
    assert not [p for _, p in proxy.paths if other in p or " " in p or "x=1" in p]
    assert work.remaining[0]() is not None


def test_steps_run_on_the_sweepers_own_pool_do_not_deadlock(registry: Registry) -> None:
    """Steps called from threads of the very pool they submit deletes to still finish."""
    pusher = registry.pusher()
    releases = [unique_release() for _ in range(4)]
    for release in releases:
        for n in range(3):
            pusher.image(f"{release}/airflow", f"v{n}", label=f"{release}-{n}")
    with ThreadPoolExecutor(2) as pool:
        works = plan_registry(connect(registry), expired(*releases), TEMPLATE, pool)
        futures = [pool.submit(execute, w) for w in works.values()]
        settled = [pair for f in futures for pair in f.result(timeout=120)]

    assert {r.outcome for _, r in settled} == {"done"}
    assert len(settled) == 12
    assert all(pusher.tags(f"{r}/airflow") == [] for r in releases)


def test_requests_in_flight_never_exceed_the_concurrency(
    registry: Registry, make_proxy: MakeProxy
) -> None:
    """With JANITOR_CONCURRENCY=3, no more than 3 requests reach the registry at once, even
    with steps called from 4 runner threads that help with their own deletes."""
    pusher = registry.pusher()
    releases = [unique_release() for _ in range(4)]
    for release in releases:
        for n in range(4):
            pusher.image(f"{release}/airflow", f"v{n}", label=f"{release}-{n}")
    proxy = make_proxy(registry.url, delay_s=0.01)
    client = connect(registry, proxy.url, options=replace(FAST, pool_size=3))

    with ThreadPoolExecutor(3) as http, ThreadPoolExecutor(4) as runner:
        works = plan_registry(client, expired(*releases), TEMPLATE, http)
        settled = [
            pair for f in [runner.submit(execute, w) for w in works.values()] for pair in f.result()
        ]

    assert {r.outcome for _, r in settled} == {"done"}
    assert proxy.max_in_flight <= 3
    assert all(pusher.tags(f"{r}/airflow") == [] for r in releases)


def test_behind_a_proxy_dropping_the_digest_header_and_answering_200_every_tag_goes(
    registry: Registry, make_proxy: MakeProxy, executor: Executor
) -> None:
    """Issue 10: a front-end that drops Docker-Content-Digest and turns 202 into 200. Each
    tag's digest is the sha256 of its manifest bytes (single-arch, Docker list, OCI index,
    shared digests), every tag is done, and the row may go. HEADs are sent only until one
    finds the header missing (those already in flight on the 4 workers), then one GET per
    tag reads the bytes."""
    pusher = registry.pusher()
    release = unique_release("proxied")
    single = pusher.image(f"{release}/airflow", "1.0.0")
    pusher.put_manifest(f"{release}/airflow", "latest", single)
    docker_list = pusher.index(f"{release}/airflow", "multi", oci=False)
    oci_index = pusher.index(f"{release}/airflow", "oci", oci=True)
    proxy = make_proxy(
        registry.url, drop_headers=frozenset({"docker-content-digest"}), statuses={202: 200}
    )
    client = connect(registry, proxy.url)

    (work,) = plan_registry(client, expired(release), TEMPLATE, executor).values()

    assert {a.target: a.fields["digest"] for a, _ in planned(work)} == {
        f"{release}/airflow:1.0.0": single.digest,
        f"{release}/airflow:latest": single.digest,
        f"{release}/airflow:multi": docker_list.digest,
        f"{release}/airflow:oci": oci_index.digest,
    }
    settled = execute(work)
    assert set(outcomes(settled).values()) == {"done"}
    assert pusher.tags(f"{release}/airflow") == []
    assert work.remaining[0]() is None
    assert 1 <= proxy.counts["HEAD manifests"] <= 4
    assert proxy.counts["GET manifests"] == 4
    assert proxy.counts["DELETE manifests"] == 3  # one per distinct digest


def test_a_dangling_tag_is_failed_never_absent_and_keeps_the_row(
    registry: Registry, make_proxy: MakeProxy, executor: Executor
) -> None:
    """A tag tags/list still shows but whose manifest the registry lost: failed, saying it is
    dangling and what to do, on every run; the healthy tags go, the row stays."""
    pusher = registry.pusher()
    release = unique_release("dangling")
    lost = pusher.image(f"{release}/airflow", "lost", label="lost")
    pusher.image(f"{release}/airflow", "1.0.0")
    dangle(registry, f"{release}/airflow", lost)
    proxy = make_proxy(registry.url)
    client = connect(registry, proxy.url)

    runs = []
    for _ in range(2):
        (work,) = plan_registry(client, expired(release), TEMPLATE, executor).values()
        runs.append({a.target: r for a, r in execute(work)})
        assert "dangling tag" in (work.remaining[0]() or "")

    for settled in runs:
        dangling = settled[f"{release}/airflow:lost"]
        assert dangling.outcome == "failed"
        assert (dangling.error or "").startswith(
            f"dangling tag: {release}/airflow lists 'lost' but the registry has no manifest"
        )
        assert "repair the repository" in (dangling.error or "")
    assert runs[0][f"{release}/airflow:1.0.0"].outcome == "done"
    assert list(runs[1]) == [f"{release}/airflow:lost"]
    assert pusher.tags(f"{release}/airflow") == ["lost"]
    assert proxy.counts["GET tags"] == 2 * 2, "per run: the listing and one more, no probe"


def test_a_tag_deleted_between_listing_and_lookup_is_absent(
    registry: Registry, make_proxy: MakeProxy, executor: Executor
) -> None:
    """A 404 for a tag that a second listing no longer shows was a deletion (here by someone
    else, just before the janitor's HEAD), not a dangling tag: absent, and the row may go."""
    pusher = registry.pusher()
    release = unique_release("raced")
    image = pusher.image(f"{release}/airflow", "1.0.0")

    def delete_first(method: str, path: str, _: dict[str, str]) -> None:
        if method == "HEAD" and path.endswith("/manifests/1.0.0"):
            url = f"{registry.url}/v2/{release}/airflow/manifests/{image.digest}"
            assert pusher.session.delete(url).status_code == 202

    proxy = make_proxy(registry.url, gate=delete_first)

    (work,) = plan_registry(
        connect(registry, proxy.url), expired(release), TEMPLATE, executor
    ).values()

    assert [(a.target, r.outcome) for a, r in planned(work)] == [
        (f"{release}/airflow:1.0.0", "absent")
    ]
    assert work.remaining[0]() is None
