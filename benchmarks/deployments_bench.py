"""Wall time of a real run over N expired deployments (default 1,000), each with its Airflow
database (owned by its role, holding a table) and two roles, on the local PostgreSQL.

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
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql

from janitor.cli import main

ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
TABLE = """
CREATE SCHEMA "houston$default";
CREATE TABLE "houston$default"."Deployment" (
    id text PRIMARY KEY, "releaseName" text, "deletedAt" timestamp(3) without time zone);
"""


def _seed(houston_db: str, prefix: str, count: int) -> None:
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        for i in range(count):
            snake = f"{prefix}_{i}"
            for role in (f"{snake}_airflow", f"{snake}_celery"):
                conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {} STRATEGY FILE_COPY").format(
                    sql.Identifier(f"{snake}_airflow"), sql.Identifier(f"{snake}_airflow")
                )
            )
    houston = ADMIN.replace("dbname=postgres", f"dbname={houston_db}")
    with psycopg.connect(houston) as conn, conn.cursor() as cur:
        cur.executemany(
            'INSERT INTO "houston$default"."Deployment" VALUES (%s, %s,'
            " (now() AT TIME ZONE 'UTC') - interval '20 days')",
            [(str(uuid.uuid4()), f"{prefix}-{i}".replace("_", "-")) for i in range(count)],
        )


@contextmanager
def _houston() -> Iterator[tuple[str, str]]:
    token = uuid.uuid4().hex[:6]
    houston_db, prefix = f"bench_houston_{token}", f"b{token}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(houston_db)))
    with psycopg.connect(ADMIN.replace("dbname=postgres", f"dbname={houston_db}")) as conn:
        conn.execute(TABLE)
    try:
        yield houston_db, prefix
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            leftovers = conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s OR datname = %s",
                (f"{prefix}%", houston_db),
            ).fetchall()
            for (name,) in leftovers:
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
            for (role,) in conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolname LIKE %s", (f"{prefix}%",)
            ).fetchall():
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def measure(count: int, concurrency: int) -> dict[str, object]:
    with _houston() as (houston_db, prefix):
        started = time.monotonic()
        _seed(houston_db, prefix, count)
        seeded = time.monotonic() - started
        env = {
            "JANITOR_HOUSTON_DSN": ADMIN.replace("dbname=postgres", f"dbname={houston_db}"),
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
