"""`janitor audit` (issue 14) on the real PostgreSQL and the real registry: what no deployment
row accounts for is reported, with its size or tag count; protected and ambiguous names are
never orphans; a store that cannot be read is named and exits 1; nothing changes.

The PostgreSQL server is shared with every other test, so each story looks only at the names
of its own Houston fixture (its prefix); orphans of other tests are reported too, as they
would be on a real server.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from psycopg import sql

from tests.conftest import Houston, admin, existing_databases, existing_roles, janitor
from tests.registry_server import (  # noqa: F401 - pytest fixtures
    Fault,
    Proxy,
    Registry,
    connect,
    make_proxy,
    registry,
    token_registry,
)

MakeProxy = Callable[..., Proxy]


def mine(run_events: list[dict[str, Any]], event: str, houston: Houston) -> dict[str, Any]:
    """The ``event`` lines about this story's names, by target."""
    return {
        e["target"]: e
        for e in run_events
        if e["event"] == event and e["target"].startswith(houston.prefix)
    }


def orphan(houston: Houston, name: str) -> str:
    """A release whose database (owned by its airflow role, holding a table) and two roles
    are left behind with no row, as a hard delete that died halfway leaves them."""
    release = houston.release(name)
    snake = release.replace("-", "_")
    houston.create_role(f"{snake}_airflow")
    houston.create_role(f"{snake}_celery")
    houston.create_database(f"{snake}_airflow", owner=f"{snake}_airflow")
    return release


def empty_database(houston: Houston, name: str) -> None:
    """A database of any name (a DSN could not name some of them to fill it)."""
    houston.databases.add(name)
    with admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def test_audit_finds_what_no_row_accounts_for_next_to_live_recent_and_expired_deployments(
    houston: Houston,
    env: dict[str, str],
    registry: Registry,  # noqa: F811 - the imported fixture
) -> None:
    """Only the ghost's database (with its size), roles and repository (with its tag count)
    are orphans: a live, a recently deleted and an expired deployment are accounted for by
    their rows, and an emptied repository holds nothing. Nothing changes; exit 0."""
    live = houston.deployment("live")
    recent = houston.deployment("recent", deleted_days_ago=3)
    expired = houston.deployment("expired", deleted_days_ago=40)
    ghost = orphan(houston, "ghost")
    pusher = registry.pusher()
    for release in (live, recent, expired, ghost):
        pusher.image(f"{release}/airflow", "1.0.0", label=release)
    pusher.image(f"{ghost}/airflow", "2.0.0", label="second")
    emptied = houston.release("emptied")
    image = pusher.image(f"{emptied}/airflow", "1.0.0", label=emptied)
    assert connect(registry).delete_manifest(f"{emptied}/airflow", image.digest)
    env["JANITOR_REGISTRY_URL"] = registry.url

    run = janitor(["audit"], env)

    assert run.code == 0, run.events
    snake = ghost.replace("-", "_")
    (database,) = mine(run.events, "orphan.database", houston).values()
    assert (database["target"], database["outcome"], database["deployment"]) == (
        f"{snake}_airflow",
        "found",
        ghost,
    )
    assert database["size_bytes"] > 1_000_000
    roles = mine(run.events, "orphan.role", houston)
    assert {name: e["outcome"] for name, e in roles.items()} == {
        f"{snake}_airflow": "found",
        f"{snake}_celery": "found",
    }
    assert {e["deployment"] for e in roles.values()} == {ghost}
    repositories = mine(run.events, "orphan.repository", houston)
    assert {name: (e["outcome"], e["tags"]) for name, e in repositories.items()} == {
        f"{ghost}/airflow": ("found", 2)
    }
    finished = run.finished
    assert finished["event"] == "audit.finished"
    assert finished["exit_code"] == 0
    assert finished["counts"]["orphan.repository"]["found"] >= 1
    assert finished["counts"]["orphan.role"]["found"] >= 2
    assert existing_databases(houston.databases) == houston.databases
    assert existing_roles(houston.roles) == houston.roles
    assert pusher.tags(f"{ghost}/airflow") == ["1.0.0", "2.0.0"]
    assert set(houston.rows()) == {live, recent, expired}


def test_only_names_a_template_gives_in_full_are_orphans(
    houston: Houston,
    env: dict[str, str],
    registry: Registry,  # noqa: F811 - the imported fixture
) -> None:
    """At the edges of `{release_snake}_airflow`, `{release_snake}_celery` and
    `{release}/airflow`: the template's own suffix inside a release (`x_airflow_airflow`)
    and doubled dashes (`x__y`) are orphans; a name with a character around it, a capital,
    a dash in a snake part, a trailing `_` or newline, or a path under it, is not."""
    p = houston.prefix
    for name in (
        f"{p}_edge_airflow",
        f"{p}_edge_airflow_airflow",
        f"{p}__double_airflow",
        f"{p}_edge_airflowx",
        f"x{p}_edge_Airflow",
        f"{p}-dash_airflow",
        f"{p}_trailing__airflow",
        f"{p}_edge_airflow\n",
    ):
        empty_database(houston, name)
    for name in (f"{p}_role_celery", f"{p}_role_celery_", f"{p}_role_celerY"):
        houston.create_role(name)
    pusher = registry.pusher()
    for name in (f"{p}-edge/airflow", f"{p}-edge/airflow/extra", f"{p}-edge/airflowx"):
        pusher.image(name, "1.0.0", label=name)
    pusher.image(f"{p}_edge/airflow", "1.0.0", label="snake")
    env["JANITOR_REGISTRY_URL"] = registry.url

    run = janitor(["audit"], env)

    assert run.code == 0, run.events
    assert {
        n: e["deployment"] for n, e in mine(run.events, "orphan.database", houston).items()
    } == {
        f"{p}_edge_airflow": f"{p}-edge",
        f"{p}_edge_airflow_airflow": f"{p}-edge-airflow",
        f"{p}__double_airflow": f"{p}--double",
    }
    assert {n: e["deployment"] for n, e in mine(run.events, "orphan.role", houston).items()} == {
        f"{p}_role_celery": f"{p}-role"
    }
    assert {
        n: e["deployment"] for n, e in mine(run.events, "orphan.repository", houston).items()
    } == {f"{p}-edge/airflow": f"{p}-edge"}


def test_a_name_two_readings_could_explain_is_ambiguous_and_never_an_orphan(
    houston: Houston, env: dict[str, str]
) -> None:
    """With role templates `{release_snake}_celery,{release_snake}`: `a_celery` is the live
    deployment a's, and would be release a-celery's (no row); `b_celery` is b's or
    b-celery's (neither has a row); `legacy_airflow` is what an old row `legacy` (an
    underscore, invalid today) renders to and what release legacy would: each is `skipped`
    with the reason. `c`, read only one way, is an orphan."""
    p = houston.prefix
    env["JANITOR_ROLE_TEMPLATES"] = "{release_snake}_celery,{release_snake}"
    houston.add(f"{p}-a")
    houston.add(f"{p}_legacy", deleted_days_ago=2)
    for role in (f"{p}_a_celery", f"{p}_b_celery", f"{p}_c"):
        houston.create_role(role)
    empty_database(houston, f"{p}_legacy_airflow")

    run = janitor(["audit"], env)

    assert run.code == 0, run.events
    roles = mine(run.events, "orphan.role", houston)
    assert {name: e["outcome"] for name, e in roles.items()} == {
        f"{p}_a_celery": "skipped",
        f"{p}_b_celery": "skipped",
        f"{p}_c": "found",
    }
    assert roles[f"{p}_a_celery"]["reason"] == (
        f"ambiguous: {p}_a_celery is what {{release_snake}}_celery gives for deployment "
        f"'{p}-a', and what {{release_snake}} gives for release '{p}-a-celery', which has no row"
    )
    assert roles[f"{p}_b_celery"]["reason"] == (
        f"ambiguous: {p}_b_celery is given by {{release_snake}}_celery for release '{p}-b' or "
        f"by {{release_snake}} for release '{p}-b-celery'; none has a row"
    )
    assert "deployment" not in roles[f"{p}_b_celery"]
    assert roles[f"{p}_c"]["deployment"] == f"{p}-c"
    (legacy,) = mine(run.events, "orphan.database", houston).values()
    assert legacy["outcome"] == "skipped"
    assert f"deployment '{p}_legacy'" in legacy["reason"]
    assert f"release '{p}-legacy'" in legacy["reason"]


def test_protected_names_are_never_reported(houston: Houston, env: dict[str, str]) -> None:
    """Templates that reach protected names: `{release}` gives postgres, template0 and
    template1, `houston_{release}` the Houston database itself; as roles, the janitor's own
    login role and a superuser. None is ever reported; an ordinary role next to them is."""
    janitor_dsn = houston.janitor_role("janitor")
    houston.create_role(houston.release("boss"))
    with admin() as conn:
        conn.execute(
            sql.SQL("ALTER ROLE {} SUPERUSER").format(sql.Identifier(houston.release("boss")))
        )
    houston.create_role(houston.release("plain"))
    env["JANITOR_HOUSTON_DSN"] = janitor_dsn
    env["JANITOR_ROLE_TEMPLATES"] = "{release}"
    reported = []
    for template in ("{release}", "houston_{release}", "template{release}", "postgre{release}"):
        env["JANITOR_DATABASE_TEMPLATE"] = template
        run = janitor(["audit"], env)
        assert run.code == 0, run.events
        reported += [e["target"] for e in run.of("orphan.database")]
        roles = {e["target"] for e in run.of("orphan.role")}
        assert houston.release("plain") in roles
        assert not roles & {"postgres", houston.release("janitor"), houston.release("boss")}

    assert not {"postgres", "template0", "template1", houston.dbname} & set(reported)


@pytest.mark.parametrize("status", [403, 404])
def test_a_registry_that_refuses_its_catalog_is_named_and_the_audit_exits_1(
    houston: Houston,
    env: dict[str, str],
    registry: Registry,  # noqa: F811 - the imported fixture
    make_proxy: MakeProxy,  # noqa: F811 - the imported fixture
    status: int,
) -> None:
    """A registry (or the proxy in front of it) answering the catalog with 403 or 404: one
    failed `orphan.repository` names the registry and what it answered; the databases and
    roles are still audited; exit 1."""
    ghost = orphan(houston, "ghost")
    proxy = make_proxy(registry.url)
    body = json.dumps({"errors": [{"code": "DENIED", "message": "catalog is off"}]}).encode()
    headers = {"Docker-Distribution-API-Version": "registry/2.0"}
    proxy.inject(Fault("GET", "/v2/_catalog", status, body, headers, times=None))
    env["JANITOR_REGISTRY_URL"] = proxy.url

    run = janitor(["audit"], env)

    assert run.code == 1
    (refused,) = run.of("orphan.repository")
    assert (refused["target"], refused["outcome"]) == (proxy.url, "failed")
    assert refused["error"] == (
        f"registry {proxy.url} refuses its catalog to anonymous access (/v2/_catalog answered "
        f"{status}: DENIED: catalog is off): the audit needs catalog access (token scope "
        "registry:catalog:*)"
    )
    snake = ghost.replace("-", "_")
    assert set(mine(run.events, "orphan.database", houston)) == {f"{snake}_airflow"}
    assert run.finished["event"] == "audit.finished"
    assert run.finished["exit_code"] == 1


def test_a_token_account_without_the_catalog_scope_is_named(
    houston: Houston,
    env: dict[str, str],
    token_registry: Registry,  # noqa: F811 - the imported fixture
) -> None:
    """The token service grants the janitor's account pull and delete, not
    registry:catalog:*: the failure says which scope is missing, and exits 1."""
    env |= {
        "JANITOR_REGISTRY_URL": token_registry.url,
        "JANITOR_REGISTRY_USERNAME": token_registry.username or "",
        "JANITOR_REGISTRY_PASSWORD": token_registry.password or "",
        "JANITOR_REGISTRY_CA_BUNDLE": str(token_registry.ca_bundle),
    }

    run = janitor(["audit"], env)

    assert run.code == 1
    (refused,) = run.of("orphan.repository")
    assert refused["outcome"] == "failed"
    assert "did not grant 'registry:catalog:*'" in refused["error"]
    assert token_registry.password not in json.dumps(run.events)


def test_a_registry_url_that_is_no_registry_ends_the_audit_with_exit_2(
    houston: Houston,
    env: dict[str, str],
    registry: Registry,  # noqa: F811 - the imported fixture
    make_proxy: MakeProxy,  # noqa: F811 - the imported fixture
) -> None:
    """JANITOR_REGISTRY_URL answers, but not as a registry (no API version header): the
    configuration is wrong, audit.finished says so, exit 2, as a run would."""
    proxy = make_proxy(registry.url, drop_headers=frozenset({"docker-distribution-api-version"}))
    env["JANITOR_REGISTRY_URL"] = proxy.url

    run = janitor(["audit"], env)

    assert run.code == 2
    assert [e["event"] for e in run.events] == ["audit.finished"]
    assert "is not a Docker registry" in run.finished["error"]


def test_an_unreachable_houston_database_ends_the_audit_with_its_error(
    env: dict[str, str],
) -> None:
    """Nothing answers at the Houston DSN: audit.finished names the database error, exit 1."""
    env["JANITOR_HOUSTON_DSN"] = "host=127.0.0.1 port=1 user=postgres dbname=houston"

    run = janitor(["audit"], env)

    assert run.code == 1
    assert [e["event"] for e in run.events] == ["audit.finished"]
    assert run.finished["error"].startswith("Houston database: ")


@pytest.mark.parametrize(
    ("args", "variables", "message"),
    [
        (["audit"], {"JANITOR_ELASTICSEARCH_URL": "http://127.0.0.1:9"}, "janitor audit needs"),
        (
            ["plan", "--adopt-orphans"],
            {"JANITOR_ELASTICSEARCH_URL": "http://127.0.0.1:9"},
            "JANITOR_ADOPT_ORPHANS (--adopt-orphans) needs JANITOR_HOUSTON_DSN",
        ),
        (
            ["plan"],
            {"JANITOR_HOUSTON_DSN": "host=127.0.0.1", "JANITOR_ORPHAN_GRACE_DAYS": "0"},
            "JANITOR_ORPHAN_GRACE_DAYS='0' (environment): must be a whole number >= 1",
        ),
        (
            ["plan"],
            {"JANITOR_HOUSTON_DSN": "host=127.0.0.1", "JANITOR_ORPHAN_GRACE_DAYS": "36501"},
            "JANITOR_ORPHAN_GRACE_DAYS='36501' (environment): must be at most 36500",
        ),
    ],
    ids=["audit without houston", "adoption without houston", "no grace", "grace too long"],
)
def test_audit_and_adoption_settings_are_checked_before_anything_connects(
    capsys: pytest.CaptureFixture[str], args: list[str], variables: dict[str, str], message: str
) -> None:
    """A configuration that cannot audit or adopt is one plain line on stderr, exit 2."""
    run = janitor(args, variables)

    assert run.code == 2
    assert run.events == []
    assert message in capsys.readouterr().err
