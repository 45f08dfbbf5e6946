"""Whole runs with the real registry: the row goes only after the repository lists no tags."""

from __future__ import annotations

from collections.abc import Callable

from tests.conftest import Houston, janitor
from tests.loopback import finishes
from tests.registry_server import (  # noqa: F401 - pytest fixtures
    Proxy,
    Registry,
    dangle,
    make_proxy,
    readonly_registry,
    registry,
)


def test_an_expired_deployment_loses_database_roles_and_every_tag_and_its_row_goes_last(
    houston: Houston,
    env: dict[str, str],
    registry: Registry,  # noqa: F811 - the imported fixture
) -> None:
    """A deployment deleted 20 days ago: database, roles, single- and multi-arch tags gone,
    two tags sharing a digest both reported; then the row; a live one keeps everything."""
    expired = houston.deployment("gone", deleted_days_ago=20)
    live = houston.deployment("live")
    pusher = registry.pusher()
    single = pusher.image(f"{expired}/airflow", "1.0.0")
    pusher.put_manifest(f"{expired}/airflow", "latest", single)
    multi = pusher.index(f"{expired}/airflow", "multi", oci=True)
    pusher.image(f"{live}/airflow", "1.0.0")
    env["JANITOR_REGISTRY_URL"] = registry.url

    run = janitor(["run"], env)

    assert run.code == 0, run.events
    assert run.outcomes("registry.tag.delete") == {
        f"{expired}/airflow:1.0.0": "done",
        f"{expired}/airflow:latest": "done",
        f"{expired}/airflow:multi": "done",
    }
    digests = {e["target"]: e["digest"] for e in run.of("registry.tag.delete")}
    assert digests[f"{expired}/airflow:latest"] == single.digest
    assert digests[f"{expired}/airflow:multi"] == multi.digest
    purge = run.of("deployment.purge")[0]
    assert purge["outcome"] == "done"
    assert all(run.events.index(e) < run.events.index(purge) for e in run.of("registry.tag.delete"))
    assert pusher.tags(f"{expired}/airflow") in (None, [])
    assert pusher.tags(f"{live}/airflow") == ["1.0.0"]
    assert set(houston.rows()) == {live}
    assert "garbage-collect" in run.finished["registry_garbage_collect"]

    again = janitor(["run"], env)
    assert again.code == 0
    assert [e["event"] for e in again.events] == ["run.started", "run.finished"]


def test_a_registry_with_deletion_disabled_keeps_the_row(
    houston: Houston,
    env: dict[str, str],
    readonly_registry: Registry,  # noqa: F811 - the imported fixture
) -> None:
    """405 UNSUPPORTED: every tag failed with the storage.delete.enabled hint, exit 1, row kept."""
    release = houston.deployment("kept", deleted_days_ago=20)
    readonly_registry.pusher().image(f"{release}/airflow", "1.0.0")
    env["JANITOR_REGISTRY_URL"] = readonly_registry.url

    run = janitor(["run"], env)

    assert run.code == 1
    (tag,) = run.of("registry.tag.delete")
    assert tag["outcome"] == "failed"
    assert "storage.delete.enabled" in tag["error"]
    assert run.outcomes("deployment.purge") == {release: "skipped"}
    assert release in houston.rows()


def test_an_unreachable_registry_keeps_every_row(houston: Houston, env: dict[str, str]) -> None:
    """Nothing listens at the registry URL: the databases go, the row stays, exit 1."""
    release = houston.deployment("offline", deleted_days_ago=20)
    env["JANITOR_REGISTRY_URL"] = "http://127.0.0.1:1"

    run = janitor(["run"], env)

    assert run.code == 1
    assert set(run.outcomes("database.drop").values()) == {"done"}
    assert run.outcomes("deployment.purge") == {release: "skipped"}
    assert release in houston.rows()


def test_a_registry_only_run_keeps_the_row_because_databases_were_not_swept(
    houston: Houston,
    env: dict[str, str],
    registry: Registry,  # noqa: F811 - the imported fixture
) -> None:
    """--only registry deletes the tags but the row waits for the databases sweeper."""
    release = houston.deployment("partial", deleted_days_ago=20)
    registry.pusher().image(f"{release}/airflow", "1.0.0")
    env["JANITOR_REGISTRY_URL"] = registry.url

    run = janitor(["run", "--only", "registry"], env)

    assert run.code == 0
    assert run.of("database.drop") == []
    assert run.of("deployment.purge")[0]["reason"] == "databases not swept"
    assert release in houston.rows()


def test_check_command_probes_the_registry(
    houston: Houston,
    env: dict[str, str],
    registry: Registry,  # noqa: F811 - the imported fixture
) -> None:
    """`janitor check` proves the registry answers as one and deletion is enabled."""
    env["JANITOR_REGISTRY_URL"] = registry.url

    run = janitor(["check"], env)

    assert run.code == 0, run.events
    assert run.outcomes("check.component")["registry"] == "ok"


def test_a_registry_looping_its_tag_pages_fails_that_repository_and_the_run_goes_on(
    houston: Houston,
    env: dict[str, str],
    registry: Registry,  # noqa: F811 - the imported fixture
    make_proxy: Callable[..., Proxy],  # noqa: F811 - the imported fixture
) -> None:
    """Behind a proxy that ignores last=, the repository with two pages fails after two
    listing requests and keeps its row; the one-page repository is swept and purged."""
    looping = houston.deployment("looping", deleted_days_ago=20)
    swept = houston.deployment("swept", deleted_days_ago=20)
    pusher = registry.pusher()
    image = pusher.image(f"{looping}/airflow", "1.0.0")
    for tag in ("1.0.1", "1.0.2"):
        pusher.put_manifest(f"{looping}/airflow", tag, image)
    pusher.image(f"{swept}/airflow", "1.0.0")
    proxy = make_proxy(registry.url, page_size=2, ignore_last=True)
    env["JANITOR_REGISTRY_URL"] = proxy.url

    run = finishes(lambda: janitor(["run"], env))

    assert run.code == 1
    assert run.outcomes("registry.tag.delete") == {
        f"{looping}/airflow": "failed",
        f"{swept}/airflow:1.0.0": "done",
    }
    (failure,) = [e for e in run.of("registry.tag.delete") if e["outcome"] == "failed"]
    assert "goes round in circles" in failure["error"]
    assert run.outcomes("deployment.purge") == {looping: "skipped", swept: "done"}
    assert set(houston.rows()) == {looping}
    assert pusher.tags(f"{looping}/airflow") == ["1.0.0", "1.0.1", "1.0.2"]
    listings = [path for _, path in proxy.paths if f"{looping}/airflow/tags/list" in path]
    assert len(listings) == 2


def test_behind_a_proxy_dropping_the_digest_header_the_row_is_purged(
    houston: Houston,
    env: dict[str, str],
    registry: Registry,  # noqa: F811 - the imported fixture
    make_proxy: Callable[..., Proxy],  # noqa: F811 - the imported fixture
) -> None:
    """Issue 10: a registry front-end that drops Docker-Content-Digest and answers DELETE
    with 200 failed every tag on every run; now the tags go and the row is purged."""
    release = houston.deployment("proxied", deleted_days_ago=20)
    pusher = registry.pusher()
    single = pusher.image(f"{release}/airflow", "1.0.0")
    multi = pusher.index(f"{release}/airflow", "multi", oci=False)
    proxy = make_proxy(
        registry.url, drop_headers=frozenset({"docker-content-digest"}), statuses={202: 200}
    )
    env["JANITOR_REGISTRY_URL"] = proxy.url

    run = janitor(["run"], env)

    assert run.code == 0, run.events
    assert {e["target"]: (e["outcome"], e["digest"]) for e in run.of("registry.tag.delete")} == {
        f"{release}/airflow:1.0.0": ("done", single.digest),
        f"{release}/airflow:multi": ("done", multi.digest),
    }
    assert run.outcomes("deployment.purge") == {release: "done"}
    assert release not in houston.rows()
    assert pusher.tags(f"{release}/airflow") == []


def test_a_dangling_tag_fails_the_run_and_keeps_the_row_on_every_run(
    houston: Houston,
    env: dict[str, str],
    registry: Registry,  # noqa: F811 - the imported fixture
) -> None:
    """A tag listed without a manifest (lost from storage): failed, exit 1, row kept, each
    run, until an operator repairs the repository; the other tags go on the first run."""
    release = houston.deployment("dangling", deleted_days_ago=20)
    pusher = registry.pusher()
    lost = pusher.image(f"{release}/airflow", "lost", label="lost")
    pusher.image(f"{release}/airflow", "1.0.0")
    dangle(registry, f"{release}/airflow", lost)
    env["JANITOR_REGISTRY_URL"] = registry.url

    first, second = janitor(["run"], env), janitor(["run"], env)

    assert first.outcomes("registry.tag.delete") == {
        f"{release}/airflow:1.0.0": "done",
        f"{release}/airflow:lost": "failed",
    }
    assert second.outcomes("registry.tag.delete") == {f"{release}/airflow:lost": "failed"}
    for run in (first, second):
        assert run.code == 1
        assert run.outcomes("deployment.purge") == {release: "skipped"}
        (failure,) = [e for e in run.of("registry.tag.delete") if e["outcome"] == "failed"]
        assert failure["error"].startswith("dangling tag: ")
    assert release in houston.rows()
