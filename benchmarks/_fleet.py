"""What the benchmarks seed and count with, shared so each benchmark seeds the same fleet
the same way (README "Benchmarks").

- PostgreSQL: a throwaway Houston database with the deployments table, rows of given ages,
  deployment roles and databases (names from the default templates), and ``scratch``, which
  drops everything named with its prefix afterwards, also on failure or Ctrl-C.
- Registry: deployments' repositories pushed through the API (``seed_registry``), a counting
  proxy adding latency in a process of its own (``remote_proxy``, so its CPU is not the
  client's), and the strictly sequential "GET digest, then DELETE" loop the janitor is
  compared against (``sequential_sweep``).
- Elasticsearch: log indices on the stand-in, one per release and shipper per day
  (``seed_indices``).
"""

from __future__ import annotations

import multiprocessing
import os
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psycopg
import requests
from psycopg import sql

from janitor.clients.registry import DOCKER_MANIFEST
from janitor.naming import render
from tests.es_standin import ElasticsearchStandin
from tests.registry_server import Proxy, Pusher

ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
TABLE = """
CREATE SCHEMA "houston$default";
CREATE TABLE "houston$default"."Deployment" (
    id text PRIMARY KEY, "releaseName" text, "deletedAt" timestamp(3) without time zone);
"""
DATABASE = "{release_snake}_airflow"
ROLES = ("{release_snake}_airflow", "{release_snake}_celery")
REPOSITORY = "{release}/airflow"
# deletedAt of each kind of row, on the database server's clock (README "Time").
EXPIRED = "(now() AT TIME ZONE 'UTC') - interval '20 days'"
RECENT = "(now() AT TIME ZONE 'UTC') - interval '3 days'"
LIVE = "NULL"
# Roles are created and dropped this many to a transaction: each holds a lock until the
# commit, and max_locks_per_transaction (64 per connection by default) bounds them.
ROLES_PER_TRANSACTION = 500


def dsn(database: str) -> str:
    return ADMIN.replace("dbname=postgres", f"dbname={database}")


# --- PostgreSQL ------------------------------------------------------------------------


@dataclass(frozen=True)
class Scratch:
    """Names of one benchmark's throwaway objects: every database and role starts with
    ``prefix`` (release names ``<prefix>-…``), Houston databases with ``houston_prefix``."""

    prefix: str
    houston_prefix: str

    def releases(self, kind: str, count: int) -> list[str]:
        return [f"{self.prefix}-{kind}-{i}" for i in range(count)]

    def houston(self, name: str) -> str:
        """A new Houston database with an empty deployments table; its DSN."""
        database = f"{self.houston_prefix}_{name}"
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        with psycopg.connect(dsn(database)) as conn:
            conn.execute(TABLE)
        return dsn(database)


@contextmanager
def scratch(letter: str) -> Iterator[Scratch]:
    """A ``Scratch`` whose databases and roles are all dropped on the way out."""
    token = uuid.uuid4().hex[:6]
    names = Scratch(f"{letter}{token}", f"bench_houston_{token}")
    try:
        yield names
    finally:
        drop_everything(names)


def drop_everything(names: Scratch) -> None:
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        for (database,) in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s OR datname LIKE %s",
            (f"{names.prefix}%", f"{names.houston_prefix}%"),
        ).fetchall():
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )
        roles = conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE %s", (f"{names.prefix}%",)
        ).fetchall()
        each_role(conn, "DROP ROLE IF EXISTS {}", [role for (role,) in roles])


def insert_rows(houston: str, rows: Iterable[tuple[str, str]]) -> None:
    """Deployment rows: (release name, deletedAt as one of EXPIRED, RECENT, LIVE)."""
    by_age: dict[str, list[tuple[str, str]]] = {}
    for release, age in rows:
        by_age.setdefault(age, []).append((str(uuid.uuid4()), release))
    with psycopg.connect(houston) as conn, conn.cursor() as cur:
        for age, values in by_age.items():
            cur.executemany(
                'INSERT INTO "houston$default"."Deployment" VALUES (%s, %s, '  # noqa: S608 - fixed ages
                + age
                + ")",
                values,
            )


def each_role(conn: psycopg.Connection[Any], statement: str, roles: Sequence[str]) -> None:
    for start in range(0, len(roles), ROLES_PER_TRANSACTION):
        with conn.transaction():
            for role in roles[start : start + ROLES_PER_TRANSACTION]:
                conn.execute(sql.SQL(statement).format(sql.Identifier(role)))


def create_roles(releases: Sequence[str]) -> None:
    """Both default roles of each release."""
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        each_role(conn, "CREATE ROLE {}", [render(t, r) for r in releases for t in ROLES])


def create_databases(releases: Sequence[str], concurrency: int = 8) -> None:
    """Each release's Airflow database, owned by its first role (which must exist);
    ``concurrency`` sessions at once (a CREATE DATABASE mostly waits on the disk)."""

    def create(chunk: Sequence[str]) -> None:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            for release in chunk:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(render(DATABASE, release)),
                        sql.Identifier(render(ROLES[0], release)),
                    )
                )

    chunks = [releases[i::concurrency] for i in range(concurrency)]
    with ThreadPoolExecutor(concurrency) as pool:
        for done in [pool.submit(create, chunk) for chunk in chunks if chunk]:
            done.result()


# --- registry --------------------------------------------------------------------------


def seed_deployment(pusher: Pusher, repository: str, tags: int) -> None:
    """``tags`` tags: a fifth aliases (shared digests), a fifth multi-arch (half Docker
    manifest lists, half OCI indexes), the rest distinct single-arch images."""
    aliases = tags // 5
    multi = tags // 5
    images = []
    singles = tags - aliases - multi
    for n in range(singles):
        images.append(pusher.image(repository, f"1.{n}.0", label=f"{repository}-{n}"))
    for n in range(multi):
        oci = n % 2 == 1
        images.append(pusher.index(repository, f"multi-{n}", oci=oci, label=f"{repository}-m{n}"))
    for n in range(aliases):
        # Alternate single-arch and multi-arch aliases, like "latest" and "deploy-N".
        target = images[n] if n % 2 == 0 or not multi else images[singles + (n // 2) % multi]
        pusher.put_manifest(repository, f"deploy-{n}", target)


def seed_registry(pusher: Pusher, releases: Sequence[str], tags: int, pool: Executor) -> None:
    """Each release's repository (default template) with ``tags`` tags."""
    futures = [pool.submit(seed_deployment, pusher, render(REPOSITORY, r), tags) for r in releases]
    for future in futures:
        future.result()


def _serve_proxy(conn: Connection, upstream: str, delay_s: float) -> None:
    proxy = Proxy(upstream, delay_s=delay_s)
    conn.send(proxy.url)
    while True:
        command = conn.recv()
        if command == "counts":
            conn.send(dict(proxy.counts))
        elif command == "reset":
            proxy.reset_counts()
            conn.send(None)
        else:
            proxy.close()
            conn.send(None)
            return


@dataclass
class RemoteProxy:
    url: str
    conn: Connection
    pid: int

    def counts(self) -> Counter[str]:
        """Requests since the last reset, as ``"METHOD kind"`` (tests.registry_server)."""
        self.conn.send("counts")
        return Counter(self.conn.recv())

    def reset(self) -> None:
        self.conn.send("reset")
        self.conn.recv()


@contextmanager
def remote_proxy(upstream: str, delay_s: float) -> Iterator[RemoteProxy]:
    """A counting proxy adding ``delay_s`` per request, in its own process."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_serve_proxy, args=(child, upstream, delay_s), daemon=True)
    process.start()
    try:
        yield RemoteProxy(parent.recv(), parent, process.pid or 0)
    finally:
        parent.send("stop")
        parent.recv()
        process.join(10)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a running process, from /proc (e.g. the registry's own CPU)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sequential_sweep(url: str, releases: Sequence[str]) -> None:
    """One request at a time: list, then per tag GET the manifest (Docker v2 only) for its
    digest and DELETE it. Multi-arch tags answer with a child or 404, so they stay."""
    session = requests.Session()
    for release in releases:
        repository = render(REPOSITORY, release)
        listing = session.get(f"{url}/v2/{repository}/tags/list", timeout=30)
        for tag in listing.json().get("tags") or []:
            manifest = session.get(
                f"{url}/v2/{repository}/manifests/{tag}",
                headers={"Accept": DOCKER_MANIFEST},
                timeout=30,
            )
            if manifest.status_code != 200:
                continue
            digest = manifest.headers["Docker-Content-Digest"]
            session.delete(f"{url}/v2/{repository}/manifests/{digest}", timeout=30)


# --- Elasticsearch ---------------------------------------------------------------------


def seed_indices(
    standin: ElasticsearchStandin,
    count: int,
    releases: Sequence[str],
    now: datetime,
    *,
    retention_days: int,
    every_days: int = 1,
) -> list[str]:
    """``count`` indices ``<shipper>.<release>.<date>``, newest first: for each day (every
    ``every_days`` days back from ``now``) one per release and shipper. Returns the
    expired ones (created at or before ``now - retention_days``)."""
    expired: list[str] = []
    made, day = 0, 0
    while made < count:
        # Half past the hour keeps every index clear of the cutoff, for every tool.
        created = now - timedelta(days=day, minutes=30)
        for shipper in ("fluentd", "vector"):
            for release in releases[: min(len(releases), count - made)]:
                name = f"{shipper}.{release}.{created:%Y.%m.%d}"
                standin.add_index(name, created)
                if created <= now - timedelta(days=retention_days):
                    expired.append(name)
                made += 1
                if made == count:
                    return expired
        day += every_days
    return expired
