"""One world for the safety stories (issue 11): a fleet on the real PostgreSQL, the real
registry, the Elasticsearch stand-in and a real Prometheus, each reached through a loopback
fault proxy, and the checks every story ends with.

Import the fixtures ``registry``, ``servers`` and ``remotes`` by name into a test module.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from tests.conftest import ADMIN_DSN, PG_HOST, PG_PORT, Houston, Run, janitor
from tests.es_standin import ElasticsearchStandin, running_standin
from tests.fault_proxy import HttpProxy, PgProxy
from tests.fleet import Fleet, Member, State, server_now
from tests.prometheus_server import running_prometheus
from tests.registry_server import Registry, registry  # noqa: F401 - pytest fixture

ES_PRODUCT = (("X-Elastic-Product", "Elasticsearch"),)


@dataclass
class Remotes:
    """The real registry, the Elasticsearch stand-in and a real Prometheus, each behind a
    fault proxy, and a proxy before PostgreSQL."""

    registry: Registry
    es: ElasticsearchStandin
    pg: PgProxy
    registry_proxy: HttpProxy
    es_proxy: HttpProxy
    prometheus_proxy: HttpProxy

    def http(self, remote: str) -> HttpProxy:
        """The proxy before ``registry``, ``elasticsearch`` or ``prometheus``."""
        return {
            "registry": self.registry_proxy,
            "elasticsearch": self.es_proxy,
            "prometheus": self.prometheus_proxy,
        }[remote]

    def clear(self) -> None:
        self.pg.clear()
        for proxy in (self.registry_proxy, self.es_proxy, self.prometheus_proxy):
            proxy.clear()


@pytest.fixture(scope="module")
def servers(
    registry: Registry,  # noqa: F811 - the imported fixture
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Registry, ElasticsearchStandin, str]]:
    """The real registry, an Elasticsearch stand-in and a real Prometheus keeping 15d."""
    directory = tmp_path_factory.mktemp("world") / "prometheus"
    with (
        running_standin() as es,
        running_prometheus(directory, "--storage.tsdb.retention.time=15d") as prometheus,
    ):
        yield registry, es, prometheus


@pytest.fixture
def remotes(servers: tuple[Registry, ElasticsearchStandin, str]) -> Iterator[Remotes]:
    """Fresh proxies (no rules, nothing counted) before the module's servers."""
    registry_server, es, prometheus = servers
    made = Remotes(
        registry_server,
        es,
        PgProxy(PG_HOST, int(PG_PORT)),
        HttpProxy(registry_server.url),
        HttpProxy(es.url, ES_PRODUCT),
        HttpProxy(prometheus),
    )
    yield made
    for proxy in (made.pg, made.registry_proxy, made.es_proxy, made.prometheus_proxy):
        proxy.close()


@dataclass
class World:
    """The fleet, its environment and what an uninterrupted run leaves."""

    fleet: Fleet
    env: dict[str, str]
    expired: tuple[str, str]
    index_prefix: str
    old_indices: frozenset[str]
    es: ElasticsearchStandin

    def state(self) -> State:
        indices = frozenset(n for n in self.es.index_names() if n.startswith(self.index_prefix))
        return self.fleet.state(indices)

    def expected(self, before: State) -> State:
        """What an uninterrupted run leaves of ``before``."""
        return before.without(self.expired, self.old_indices)


# Log indices by age in days: three past the 15-day window, one young.
INDEX_AGES = {"30d": 30, "20d": 20, "16d": 16, "1d": 1}


def seed_world(houston: Houston, remotes: Remotes, *, databases: bool = True) -> World:
    """Two expired deployments (A with three tags on two digests, B whose celery role holds
    a grant in another database), a live and a recently deleted one, the indices of
    INDEX_AGES, and the environment of a run reaching every server through its proxy
    (JANITOR_CONCURRENCY=1: the same order of steps on every run).

    Without ``databases`` the deployments' databases are already gone and no grant is left
    elsewhere (a half-cleaned fleet): the stories about remotes other than PostgreSQL need
    no CREATE DATABASE, the costliest part of a seed."""
    fleet = Fleet(houston, remotes.registry.pusher())
    now = server_now()
    a, b, live, recent = (houston.release(n) for n in ("a", "b", "live", "recent"))
    fleet.seed(
        [
            Member(a, now - timedelta(days=30), databases, tags=("1.0", "2.0")),
            Member(
                b, now - timedelta(days=20), databases, tags=("1.0",), granted_elsewhere=databases
            ),
            Member(live, None, databases, tags=("1.0",), granted_elsewhere=databases),
            Member(recent, now - timedelta(days=3), databases, tags=("1.0",)),
        ]
    )
    # A third tag of A on the digest of its 1.0 (the same image pushed again): one DELETE
    # removes both (README "Events").
    remotes.registry.pusher().image(f"{a}/airflow", "latest", label=f"{a}/airflow:1.0")
    prefix = f"fluentd.{houston.prefix}-"
    for suffix, days in INDEX_AGES.items():
        remotes.es.add_index(prefix + suffix, now - timedelta(days=days))
    old = frozenset(prefix + suffix for suffix, days in INDEX_AGES.items() if days > 15)
    pg = remotes.pg
    env = {
        "JANITOR_HOUSTON_DSN": f"host={pg.host} port={pg.port} user=postgres"
        f" dbname={houston.dbname}",
        "JANITOR_REGISTRY_URL": remotes.registry_proxy.url,
        "JANITOR_ELASTICSEARCH_URL": remotes.es_proxy.url,
        "JANITOR_LOG_INDEX_PATTERNS": f"{prefix}*",
        "JANITOR_PROMETHEUS_URL": remotes.prometheus_proxy.url,
        "JANITOR_CONCURRENCY": "1",
    }
    return World(fleet, env, (a, b), prefix, old, remotes.es)


def assert_nothing_purged_too_early(world: World, state: State) -> None:
    """README step 3: the row is the record of what is left; it goes only after the rest."""
    releases = {release for release, _ in state.rows}
    for release in world.expired:
        if release not in releases:
            assert state.left_of(release) == [], f"{release} purged with {state.left_of(release)}"


def assert_recorded_whole(run: Run, world: World) -> None:
    """``run.finished`` is the last line, and every expired deployment the run reported on
    ends with exactly one ``deployment.purge`` (README "Events"), nothing after it."""
    assert run.finished["event"] == "run.finished", run.events[-3:]
    for release in world.expired:
        mine = [e for e in run.events if e.get("deployment") == release]
        purges = [e for e in mine if e["event"] == "deployment.purge"]
        assert len(purges) == (1 if mine else 0), mine
        assert not mine or mine[-1] is purges[0], mine


def assert_converges(world: World, before: State) -> None:
    """A rerun ends in the state of an uninterrupted run; a third run does nothing."""
    expected = world.expected(before)
    rerun = janitor(["run"], world.env)
    assert rerun.code == 0, [e for e in rerun.events if e.get("outcome") == "failed"]
    assert_recorded_whole(rerun, world)
    assert world.state() == expected
    third = janitor(["run"], world.env)
    assert third.code == 0
    assert busy(third) == []
    assert world.state() == expected


def busy(run: Run) -> list[dict[str, Any]]:
    """The events of ``run`` that changed or tried to change something."""
    return [e for e in run.events if e.get("outcome") in ("done", "failed", "planned")]


# A session of this test's janitor is a row of pg_stat_activity whose pid and client port are
# those of a session through the test's own proxy. application_name 'astro-janitor' would
# also name the janitors of other suites sharing the server (helper notes: never end them).
_OWN_SESSIONS = """
SELECT a.pid FROM pg_stat_activity a
  JOIN unnest(%s::int[], %s::int[]) AS own(pid, port)
    ON a.pid = own.pid AND a.client_port = own.port
"""
SESSIONS_END_S = 60.0


def live_sessions(conn: psycopg.Connection[Any], pg: PgProxy) -> list[int]:
    """The server processes still serving janitor sessions that went through ``pg``."""
    backends = pg.backends()
    pids, ports = [p for p, _ in backends], [port for _, port in backends]
    return [row[0] for row in conn.execute(_OWN_SESSIONS, (pids, ports))]


def wait_for_sessions_to_end(pg: PgProxy, *, terminate: bool = False) -> bool:
    """Waits (bounded) until the janitor sessions that went through ``pg`` and are alive now
    have ended; with ``terminate`` ends them first by pg_terminate_backend, as a DBA would.
    Sessions the janitor opens meanwhile are not waited for. True: as a proxy rule's action,
    the held statement goes on (to its dead session)."""
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        pids = live_sessions(conn, pg)
        if terminate:
            conn.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,))
        deadline = time.monotonic() + SESSIONS_END_S
        while conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,)
        ).fetchone() != (0,):
            assert time.monotonic() < deadline, f"the janitor's sessions {pids} never ended"
            time.sleep(0.02)
    return True
