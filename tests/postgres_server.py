"""Private PostgreSQL servers for the stories the shared server cannot tell: a cluster of our
own (prepared transactions and logical replication need server settings), and PgBouncer in
transaction pooling mode in front of the shared server. Both run as the `postgres` system
user on loopback ports and are stopped by the fixture.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import PG_HOST, PG_PORT
from tests.loopback import free_port, stop

SYSTEM_USER = "postgres"
# Every wait for a server to come up is bounded.
START_TIMEOUT_S = 30


def _as_postgres(*command: str | Path) -> list[str]:
    """The command run as the `postgres` system user (PostgreSQL and PgBouncer refuse root)."""
    return ["runuser", "-u", SYSTEM_USER, "--", *map(str, command)]


def _private_directory() -> Path:
    # pytest's tmp dirs are private to root; the server runs as `postgres`.
    directory = Path(tempfile.mkdtemp(prefix="janitor-pg-", dir="/tmp"))
    shutil.chown(directory, SYSTEM_USER, SYSTEM_USER)
    directory.chmod(0o700)
    return directory


@pytest.fixture(scope="session")
def private_cluster() -> Iterator[str]:
    """A PostgreSQL cluster of its own with max_prepared_transactions and wal_level=logical;
    yields the superuser DSN of its `postgres` database."""
    bindir = Path(sorted(glob.glob("/usr/lib/postgresql/*/bin"))[-1])
    directory = _private_directory()
    data = directory / "data"
    port = free_port()
    subprocess.run(
        _as_postgres(bindir / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"),
        check=True,
        capture_output=True,
    )
    options = (
        f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        " -c max_prepared_transactions=4 -c wal_level=logical -c max_replication_slots=4"
    )
    subprocess.run(
        _as_postgres(
            bindir / "pg_ctl",
            "-D",
            data,
            "-o",
            options,
            "-l",
            directory / "log",
            "-w",
            "-t",
            str(START_TIMEOUT_S),
            "start",
        ),
        check=True,
        # The server inherits these: a pipe would keep subprocess.run waiting for its end.
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=START_TIMEOUT_S * 2,
    )
    try:
        yield f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
    finally:
        subprocess.run(
            _as_postgres(bindir / "pg_ctl", "-D", data, "-m", "immediate", "stop"),
            check=False,
            capture_output=True,
        )
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def transaction_pooler() -> Iterator[str]:
    """PgBouncer with pool_mode=transaction in front of the shared server; yields its
    address as `host=... port=...` (append `user=` and `dbname=`)."""
    pgbouncer = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.path.exists(pgbouncer):
        pytest.fail("pgbouncer is not installed: run `make services` (scripts/ensure-services.sh)")
    directory = _private_directory()
    port = free_port()
    users = directory / "users.txt"
    users.write_text('"postgres" ""\n')
    config = directory / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        f"* = host={PG_HOST} port={PG_PORT}\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\n"
        f"unix_socket_dir = {directory}\n"
        f"auth_type = trust\nauth_file = {users}\n"
        "pool_mode = transaction\n"
        "ignore_startup_parameters = application_name,options\n"
    )
    for path in (users, config):
        shutil.chown(path, SYSTEM_USER, SYSTEM_USER)
    process = subprocess.Popen(
        _as_postgres(pgbouncer, config), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    address = f"host=127.0.0.1 port={port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            psycopg.connect(f"{address} user=postgres dbname=postgres", connect_timeout=2).close()
            break
        except psycopg.OperationalError:
            if time.monotonic() > deadline or process.poll() is not None:
                stop(process)
                raise
            time.sleep(0.1)
    try:
        yield address
    finally:
        stop(process)
        shutil.rmtree(directory, ignore_errors=True)
