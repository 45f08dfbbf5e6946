"""Wall time of `janitor audit` over a big platform: 10,000 registry repositories, 20,000 roles
and (disk permitting) 1,000 databases on the local PostgreSQL, against a Houston table of
9,000 rows; a tenth of the releases have no row (the orphans).

    .venv/bin/python -m benchmarks.audit_bench [--releases 10000] [--databases 1000]
        [--orphan-every 10] [--concurrency 8]

Every repository is pushed through the registry API (a real docker-registry, distribution
2.8.2, on loopback). A PostgreSQL database costs ~7.5 MB of disk (a copy of template1), so
10,000 would need 75 GB: the real databases are `--databases` of the releases, and the
name matching is also timed on its own over 10,000 database names. The audit runs twice:
once straight to the registry (the time), once through a counting proxy (the requests).
Exits 1 when a count is off or the audit does not exit 0.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmarks._fleet import (
    DATABASE,
    EXPIRED,
    LIVE,
    RECENT,
    REPOSITORY,
    create_databases,
    create_roles,
    insert_rows,
    scratch,
)
from janitor.cli import main
from janitor.clients.registry import connect_registry
from janitor.naming import render
from janitor.sweepers.orphans import classify
from tests.registry_server import Proxy, Pusher, Registry, run_registry


def _releases(prefix: str, count: int) -> list[str]:
    return [f"{prefix}-{i}" for i in range(count)]


def _seed_houston(houston: str, releases: list[str], orphan_every: int) -> None:
    """Rows for every release but each ``orphan_every``-th: live, recently deleted and
    expired in turn."""
    ages = (LIVE, RECENT, EXPIRED)
    insert_rows(
        houston,
        [(r, ages[i % len(ages)]) for i, r in enumerate(releases) if i % orphan_every],
    )


def _seed_registry(pusher: Pusher, releases: list[str], concurrency: int) -> None:
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda r: pusher.image(render(REPOSITORY, r), "1.0.0"), releases))


@contextmanager
def _platform(tmp: Path) -> Iterator[tuple[str, str, Registry]]:
    with scratch("a") as names:
        houston = names.houston("audit")
        with run_registry(tmp / "registry") as registry:
            yield houston, names.prefix, registry


def _audit(env: dict[str, str]) -> tuple[int, float, dict[str, Any], list[dict[str, Any]]]:
    out = io.StringIO()
    started = time.monotonic()
    code = main(["audit", "--log-format", "json"], environ=env, stdout=out)
    wall = time.monotonic() - started
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    return code, wall, events[-1], events


def _matching_alone(count: int, orphan_every: int) -> float:
    """classify() over ``count`` database names against the rows of all but every
    ``orphan_every``-th release: the Python side of the audit at the full scale."""
    releases = _releases("m", count)
    names = [render(DATABASE, r) for r in releases]
    rows = frozenset(r for i, r in enumerate(releases) if i % orphan_every)
    started = time.monotonic()
    found = classify("database", names, (DATABASE,), rows)
    elapsed = time.monotonic() - started
    assert len(found) == len(releases) - len(rows)
    return elapsed


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with (
        tempfile.TemporaryDirectory(prefix="janitor-audit-bench-") as tmp,
        _platform(Path(tmp)) as (houston, prefix, registry),
    ):
        releases = _releases(prefix, args.releases)
        started = time.monotonic()
        _seed_houston(houston, releases, args.orphan_every)
        create_roles(releases)
        create_databases(releases[: args.databases])
        seeded_db = time.monotonic() - started
        started = time.monotonic()
        _seed_registry(registry.pusher(), releases, args.concurrency)
        seeded_registry = time.monotonic() - started
        env = {
            "JANITOR_HOUSTON_DSN": houston,
            "JANITOR_REGISTRY_URL": registry.url,
            "JANITOR_CONCURRENCY": str(args.concurrency),
        }
        code, wall, finished, events = _audit(env)
        started = time.monotonic()
        listed = connect_registry(
            registry.url, username=None, password=None, token=None, ca_bundle=None
        ).list_repositories()
        catalog = time.monotonic() - started
        proxy = Proxy(registry.url)
        try:
            counted_code, counted_wall, _, _ = _audit(env | {"JANITOR_REGISTRY_URL": proxy.url})
            requests = dict(proxy.counts)
        finally:
            proxy.close()
    orphans = {
        kind: sum(
            1 for e in events if e["event"] == f"orphan.{kind}" and e["target"].startswith(prefix)
        )
        for kind in ("database", "role", "repository")
    }
    expected = {
        "database": -(-args.databases // args.orphan_every),
        "role": 2 * -(-args.releases // args.orphan_every),
        "repository": -(-args.releases // args.orphan_every),
    }
    return {
        "releases": args.releases,
        "repositories": args.releases,
        "roles": 2 * args.releases,
        "databases": args.databases,
        "seed_postgres_s": round(seeded_db, 1),
        "seed_registry_s": round(seeded_registry, 1),
        "audit_s": round(wall, 2),
        "audit_through_proxy_s": round(counted_wall, 2),
        "catalog_alone_s": round(catalog, 2),
        "catalog_repositories": len(listed),
        "exit_codes": [code, counted_code],
        "orphans": orphans,
        "expected": expected,
        "registry_requests": requests,
        "counts": finished["counts"],
        "matching_10000_database_names_s": round(_matching_alone(10_000, args.orphan_every), 3),
    }


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="audit_bench")
    parser.add_argument("--releases", type=int, default=10_000)
    parser.add_argument("--databases", type=int, default=1_000)
    parser.add_argument("--orphan-every", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=8)
    result = measure(parser.parse_args(argv))
    print("janitor audit: registry repositories, roles and databases on the local servers")
    for key, value in result.items():
        print(f"  {key}: {value}")
    ok = (
        result["exit_codes"] == [0, 0]
        and result["orphans"] == result["expected"]
        and result["catalog_repositories"] == result["repositories"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
