"""Wall time of a real run over N expired deployments (default 1,000), each with its Airflow
database (owned by its role) and two roles, on the local PostgreSQL.

    .venv/bin/python -m benchmarks.deployments_bench [N] [--concurrency 1,8]

Seeds a throwaway Houston database, runs `janitor run` in-process for each concurrency
(reseeding in between), prints a table, and drops everything it created.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time

from benchmarks._fleet import (
    EXPIRED,
    Scratch,
    create_databases,
    create_roles,
    insert_rows,
    scratch,
)
from janitor.cli import main


def _seed(names: Scratch, count: int) -> str:
    """``count`` expired deployments, each with its database and roles; the Houston DSN."""
    houston = names.houston("deployments")
    releases = names.releases("d", count)
    create_roles(releases)
    create_databases(releases)
    insert_rows(houston, [(release, EXPIRED) for release in releases])
    return houston


def measure(count: int, concurrency: int) -> dict[str, object]:
    with scratch("b") as names:
        started = time.monotonic()
        houston = _seed(names, count)
        seeded = time.monotonic() - started
        env = {
            "JANITOR_HOUSTON_DSN": houston,
            "JANITOR_REGISTRY_URL": "none",
            "JANITOR_CONCURRENCY": str(concurrency),
        }
        out = io.StringIO()
        started = time.monotonic()
        code = main(["run", "--log-format", "json"], environ=env, stdout=out)
        wall = time.monotonic() - started
        finished = json.loads(out.getvalue().splitlines()[-1])
    counts = finished["counts"]
    return {
        "deployments": count,
        "concurrency": concurrency,
        "exit_code": code,
        "seed_s": round(seeded, 1),
        "run_s": round(wall, 2),
        "per_deployment_ms": round(wall * 1000 / count, 1),
        "databases_dropped": counts.get("database.drop", {}).get("done", 0),
        "roles_dropped": counts.get("role.drop", {}).get("done", 0),
        "rows_purged": counts.get("deployment.purge", {}).get("done", 0),
    }


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="deployments_bench")
    parser.add_argument("count", nargs="?", type=int, default=1000)
    parser.add_argument("--concurrency", default="1,8")
    args = parser.parse_args(argv)
    rows = [measure(args.count, int(c)) for c in args.concurrency.split(",")]
    print("expired deployments: real run over the local PostgreSQL")
    print(" | ".join(rows[0]))
    for row in rows:
        print(" | ".join(str(v) for v in row.values()))
    ok = all(
        r["exit_code"] == 0 and r["rows_purged"] == r["deployments"] == r["databases_dropped"]
        for r in rows
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
