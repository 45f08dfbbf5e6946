"""What a final backup costs per deployment database (README "Final backups and restore"):
the janitor's backup (pg_dump streamed into a file store while hashed, fsynced, read back for
the sha256 and `pg_restore --list`, roles file and manifest) against a bare
`pg_dump --format=custom --file`, for databases of about 10 MB and 100 MB on the local
PostgreSQL.

    .venv/bin/python -m benchmarks.backup_bench [--sizes 10,100] [--repeat 3]

Seeds throwaway databases, prints a table (best of --repeat each), drops everything it made.
Target: the janitor's backup takes at most TARGET_RATIO times the bare pg_dump, plus
TARGET_SLACK_S for the fixed costs (a connection, the version check, the manifest).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql

from janitor.backup import Backups, Prepared, Tools, find_tools, libpq_target, take
from janitor.clients.backupstore import FileStore
from janitor.postgres import Timeouts

ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
# A row of the seeded table takes about this much of the database (heap and index), and an
# empty database about EMPTY_MB (its catalogs).
BYTES_PER_ROW = 145
EMPTY_MB = 7.6
TARGET_RATIO = 2.5
TARGET_SLACK_S = 0.5


@contextmanager
def _database(megabytes: int) -> Iterator[tuple[str, int]]:
    """A database of about ``megabytes`` MB owned by a role of its own: (name, bytes)."""
    name = f"bench_backup_{uuid.uuid4().hex[:8]}"
    owner = sql.Identifier(name)
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {}").format(owner))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(owner, owner))
    try:
        with psycopg.connect(ADMIN.replace("dbname=postgres", f"dbname={name}")) as conn:
            conn.execute(
                "CREATE TABLE task_instance (id bigint PRIMARY KEY, dag_id text, state text,"
                " payload text)"
            )
            conn.execute(
                "INSERT INTO task_instance SELECT i, 'dag_' || (i %% 500), "
                "(ARRAY['success','failed','running'])[1 + i %% 3], md5(i::text) || md5((-i)::text)"
                " FROM generate_series(1, %s) i",
                (int((megabytes - EMPTY_MB) * 1_000_000 / BYTES_PER_ROW),),
            )
            conn.execute(sql.SQL("ALTER TABLE task_instance OWNER TO {}").format(owner))
            conn.commit()
            conn.autocommit = True
            conn.execute("VACUUM ANALYZE task_instance")
            ((size,),) = conn.execute("SELECT pg_database_size(current_database())").fetchall()
        yield name, int(size)
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(owner))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(owner))


def _bare(tools: Tools, database: str, out: Path) -> float:
    target, env = libpq_target(ADMIN, database, Timeouts())
    started = time.monotonic()
    subprocess.run(
        [tools.pg_dump, "--format=custom", f"--file={out}", f"--dbname={target}"],
        env=env,
        check=True,
    )
    return time.monotonic() - started


def _janitor(tools: Tools, database: str, root: Path) -> tuple[float, int]:
    store = FileStore(root)
    backups = Backups(f"file://{root}", lambda: store, datetime.now(UTC), "bench")
    prepared = Prepared(backups, ADMIN, Timeouts(), tools, store)
    started = time.monotonic()
    result = take(prepared, lambda: psycopg.connect(ADMIN), "bench", database, [database])
    took = time.monotonic() - started
    if result.outcome != "done":
        raise RuntimeError(f"backup failed: {result.error}")
    return took, int(result.fields["bytes"])


def measure(megabytes: int, repeat: int, tools: Tools) -> dict[str, object]:
    with _database(megabytes) as (database, size), tempfile.TemporaryDirectory() as scratch:
        bare, ours, dump_bytes = [], [], 0
        for attempt in range(repeat):
            out = Path(scratch) / f"bare-{attempt}.dump"
            bare.append(_bare(tools, database, out))
            out.unlink()
            took, dump_bytes = _janitor(tools, database, Path(scratch) / f"store-{attempt}")
            ours.append(took)
    best_bare, best_ours = min(bare), min(ours)
    return {
        "database_mb": round(size / 1e6, 1),
        "dump_mb": round(dump_bytes / 1e6, 1),
        "bare_pg_dump_s": round(best_bare, 3),
        "janitor_backup_s": round(best_ours, 3),
        "overhead_s": round(best_ours - best_bare, 3),
        "ratio": round(best_ours / best_bare, 2),
        "within_target": best_ours <= TARGET_RATIO * best_bare + TARGET_SLACK_S,
    }


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="backup_bench")
    parser.add_argument("--sizes", default="10,100", help="database sizes in MB")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    with psycopg.connect(ADMIN) as conn:
        tools = find_tools(conn.info.server_version)
    if isinstance(tools, str):
        print(tools)
        return 1
    rows = [measure(int(mb), args.repeat, tools) for mb in args.sizes.split(",")]
    print(f"final backup per deployment database vs bare pg_dump ({tools.pg_dump}, file store)")
    print(" | ".join(rows[0]))
    for row in rows:
        print(" | ".join(str(v) for v in row.values()))
    return 0 if all(r["within_target"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
