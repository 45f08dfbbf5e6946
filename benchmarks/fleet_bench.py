"""Fleet scale (README "Benchmarks"): `janitor plan` and `janitor run` as whole processes
over fleets of N expired deployments on the real services, checked against the targets of
issue 12.

    .venv/bin/python -m benchmarks.fleet_bench [--sizes 100,1000,10000]
        [--max-databases 2000] [--concurrency 8] [--no-comparisons]

Per size N, a throwaway fleet: N expired deployments in a new Houston database, plus N/10
live and N/20 recently deleted ones (which must survive); every deployment with its two
roles, its registry repository (``--tags`` tags, pushed to a real docker-registry behind a
counting proxy in its own process adding ``--registry-latency-ms``) and log indices in
proportion (``--indices-per-deployment``, at most ``--max-indices``, about half past the
window, on the Elasticsearch stand-in adding ``--es-latency-ms`` to every request). Each
expired deployment has its Airflow database only as far as the disk allows: a database
costs ~7.5 MB, so ``--max-databases`` is the count at the largest size and every size gets
the same share; the others' databases are already gone, as after an interrupted run (roles,
tags and rows still there). Every janitor process is measured from outside: wall time
(process start included), CPU of the child (``os.wait4``) and its own peak RSS (``VmHWM``, see
PEAK_PROBE), requests by kind at
the proxy and the stand-in, and PostgreSQL transactions (``pg_stat_database`` of the
bench's own Houston database, which the janitor's Airflow sessions also use).

Beside each fleet: the same number of real databases and roles dropped by the janitor
(``JANITOR_REGISTRY_URL=none``) and by a bare psycopg loop of the same statements with the
same concurrency (the janitor's overhead). Once per invocation: the registry sweep at 10 ms
per request against the sequential "GET digest, then DELETE" loop, and a logs-only run over
3,000 indices against Curator 9, both end to end.

Prints PASS, MISS or "not measured" per target and exits 1 when one is missed. Everything it
creates (databases, roles, Houston databases, registry storage, temp dirs) is removed on the
way out, also on failure and Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

from benchmarks import logs_bench
from benchmarks._fleet import (
    ADMIN,
    DATABASE,
    EXPIRED,
    LIVE,
    RECENT,
    REPOSITORY,
    ROLES,
    RemoteProxy,
    Scratch,
    create_databases,
    create_roles,
    insert_rows,
    remote_proxy,
    scratch,
    seed_indices,
    seed_registry,
    sequential_sweep,
)
from janitor.naming import render
from tests.es_standin import ElasticsearchStandin, running_standin
from tests.registry_server import Registry, run_registry

RETENTION_DAYS = 15
# One index round every 8 days: rounds at 0 and 8 days are young, 16 days and more expired.
INDEX_EVERY_DAYS = 8
DATABASE_BYTES = 8 * 1024**2  # ~7.5 MB: a copy of template1
KEEP_FREE_BYTES = 30 * 1024**3
# Targets (issue 12).
PLAN_TARGET_S = 10.0
PLAN_TARGET_FLEET = 10_000
PLAN_TARGET_INDICES = 100_000
LINEAR_TARGET = 1.5
OVERHEAD_TARGET = 0.10
CPU_PER_REQUEST_TARGET_MS = 1.0
SEQUENTIAL_TARGET = 5.0
CURATOR_TARGET = 50.0
RSS_TARGET_MB = 300.0


# --- one janitor process, measured from outside ----------------------------------------


@dataclass
class Counters:
    """Where a janitor process's requests are counted."""

    proxy: RemoteProxy | None = None
    standin: ElasticsearchStandin | None = None
    database: str | None = None
    """The Houston database all its PostgreSQL sessions use (pg_stat_database)."""


@dataclass(frozen=True)
class Process:
    """One janitor process: ``wall_s`` from spawn to exit, the child's own CPU and peak RSS,
    its requests by kind, and the CPU the stand-in spent answering it (this process's)."""

    command: str
    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    exit_code: int
    finished: dict[str, Any]
    requests: Counter[str]
    standin_cpu_s: float

    def count(self, prefix: str) -> int:
        return sum(n for kind, n in self.requests.items() if kind.startswith(prefix))


def _transactions(database: str) -> int:
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
            (database,),
        ).fetchone()
    return int(row[0]) if row else 0


def _settled_transactions(database: str) -> int:
    # Ended backends report their counts a moment after the client saw them go.
    last = _transactions(database)
    for _ in range(15):
        time.sleep(0.2)
        now = _transactions(database)
        if now == last:
            return now
        last = now
    return last


def es_kind(target: str) -> str:
    """``/``, an API (``_data_stream``) or ``<indices>`` with its sub-API, from a path."""
    parts = [p for p in urlsplit(target).path.split("/") if p]
    if not parts:
        return "/"
    if parts[0].startswith("_"):
        return parts[0]
    return "/".join(["<indices>", *parts[1:2]])


# The child's own peak RSS: Linux carries a parent's resident size into the ru_maxrss of a
# child it forks (and across exec), and this bench holds the Elasticsearch stand-in with every
# index, so wait4 would report the bench's size. VmHWM is the peak of the child's own memory
# since its exec; the probe records it at exit and otherwise runs `python -m janitor`.
PEAK_PROBE = """
import atexit, os, runpy, sys
def record():
    with open("/proc/self/status") as status:
        peak = next(line for line in status if line.startswith("VmHWM:"))
    with open(os.environ["BENCH_PEAK_FILE"], "w") as out:
        out.write(peak.split()[1])
atexit.register(record)
runpy.run_module("janitor", run_name="__main__", alter_sys=True)
"""


def janitor(command: Sequence[str], env: dict[str, str], counters: Counters) -> Process:
    """Runs ``python -m janitor COMMAND --log-format json`` with only ``env`` as janitor
    settings, and measures it."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("JANITOR_")} | env
    if counters.proxy is not None:
        counters.proxy.reset()
    es_before = len(counters.standin.requests) if counters.standin is not None else 0
    pg_before = _settled_transactions(counters.database) if counters.database else 0
    with (
        tempfile.TemporaryFile() as out,
        tempfile.TemporaryFile() as err,
        tempfile.NamedTemporaryFile("r") as peak,
    ):
        environment["BENCH_PEAK_FILE"] = peak.name
        own_cpu = time.process_time()
        started = time.perf_counter()
        child = subprocess.Popen(
            [sys.executable, "-c", PEAK_PROBE, *command, "--log-format", "json"],
            stdout=out,
            stderr=err,
            env=environment,
        )
        try:
            _, status, usage = os.wait4(child.pid, 0)
        except BaseException:
            child.kill()
            child.wait()
            raise
        wall = time.perf_counter() - started
        standin_cpu = time.process_time() - own_cpu
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        lines = out.read().decode().splitlines()
        err.seek(0)
        problems = err.read().decode()
        peak_kb = int(peak.read() or 0)
    if not lines:
        raise RuntimeError(f"janitor {' '.join(command)} printed nothing: {problems[-2000:]}")
    requests: Counter[str] = Counter()
    if counters.proxy is not None:
        requests.update({f"registry {k}": n for k, n in counters.proxy.counts().items()})
    if counters.standin is not None:
        requests.update(
            f"es {r.method} {es_kind(r.target)}" for r in counters.standin.requests[es_before:]
        )
    if counters.database:
        requests["postgres transactions"] = _settled_transactions(counters.database) - pg_before
    return Process(
        command=" ".join(command),
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=peak_kb / 1024,
        exit_code=child.returncode,
        finished=json.loads(lines[-1]),
        requests=requests,
        standin_cpu_s=standin_cpu,
    )


# --- the fleet -------------------------------------------------------------------------


@dataclass(frozen=True)
class Fleet:
    size: int
    houston: str
    expired: list[str]
    kept: list[str]
    """Live and recently deleted releases: nothing of theirs may go."""
    real_databases: int
    indices: int
    young_indices: frozenset[str]
    seed_s: float


def free_bytes() -> int:
    with psycopg.connect(ADMIN) as conn:
        ((directory,),) = conn.execute("SHOW data_directory").fetchall()
    return shutil.disk_usage(directory if Path(directory).exists() else "/").free


def affordable_databases(wanted: int) -> int:
    """``wanted``, or fewer so that the disk keeps KEEP_FREE_BYTES free."""
    spare = free_bytes() - KEEP_FREE_BYTES
    return max(0, min(wanted, spare // DATABASE_BYTES))


def seed_fleet(
    names: Scratch,
    size: int,
    args: argparse.Namespace,
    registry: Registry,
    standin: ElasticsearchStandin,
) -> Fleet:
    started = time.monotonic()
    expired = names.releases(f"x{size}", size)
    kept = names.releases(f"l{size}", math.ceil(size / 10))
    kept += names.releases(f"r{size}", math.ceil(size / 20))
    houston = names.houston(f"fleet_{size}")
    live = len(kept) - math.ceil(size / 20)
    insert_rows(
        houston,
        [(r, EXPIRED) for r in expired]
        + [(r, LIVE) for r in kept[:live]]
        + [(r, RECENT) for r in kept[live:]],
    )
    create_roles(expired + kept)
    real = affordable_databases(round(size * args.database_share))
    create_databases(expired[:real])
    with ThreadPoolExecutor(8) as pool:
        seed_registry(registry.pusher(), expired + kept, args.tags, pool)
    count = min(size * args.indices_per_deployment, args.max_indices)
    now = datetime.now(UTC)
    old = seed_indices(
        standin,
        count,
        expired + kept,
        now,
        retention_days=RETENTION_DAYS,
        every_days=INDEX_EVERY_DAYS,
    )
    young = frozenset(standin.index_names() - set(old))
    return Fleet(size, houston, expired, kept, real, count, young, time.monotonic() - started)


def check_fleet(fleet: Fleet, registry: Registry, standin: ElasticsearchStandin) -> list[str]:
    """What the full run left that it should not have, or took that it should have left."""
    wrong = []
    with psycopg.connect(fleet.houston) as conn:
        ((rows,),) = conn.execute('SELECT count(*) FROM "houston$default"."Deployment"').fetchall()
    if rows != len(fleet.kept):
        wrong.append(f"{rows} rows left, expected the {len(fleet.kept)} kept ones")
    roles = {render(t, r): r in fleet.kept for r in fleet.expired + fleet.kept for t in ROLES}
    with psycopg.connect(ADMIN) as conn:
        existing = {
            name
            for (name,) in conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (list(roles),)
            )
        }
        databases = conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname = ANY(%s)",
            ([render(DATABASE, r) for r in fleet.expired],),
        ).fetchone()
    if {name for name, keep in roles.items() if keep} != existing:
        wrong.append("the roles left are not exactly the kept deployments' roles")
    if databases and databases[0]:
        wrong.append(f"{databases[0]} expired deployments' databases left")
    pusher = registry.pusher()
    if any(not pusher.tags(render(REPOSITORY, r)) for r in fleet.kept):
        wrong.append("a kept deployment's repository lost its tags")
    if any(pusher.tags(render(REPOSITORY, r)) for r in fleet.expired[:: max(1, fleet.size // 100)]):
        wrong.append("an expired deployment's repository still lists tags")
    if standin.index_names() != fleet.young_indices:
        wrong.append("the indices left are not exactly the young ones")
    return wrong


# --- the bare statements against the janitor -------------------------------------------


def bare_drops(releases: Sequence[str], concurrency: int) -> float:
    """Seconds for DROP DATABASE … WITH (FORCE) and DROP ROLE of each release, from
    ``concurrency`` sessions opened beforehand, each taking its share in turn."""
    sessions = [psycopg.connect(ADMIN, autocommit=True) for _ in range(concurrency)]

    def drop(conn: psycopg.Connection[Any], share: Sequence[str]) -> None:
        for release in share:
            conn.execute(
                sql.SQL("DROP DATABASE {} WITH (FORCE)").format(
                    sql.Identifier(render(DATABASE, release))
                )
            )
            for role in ROLES:
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(render(role, release))))

    try:
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            shares = [releases[i::concurrency] for i in range(concurrency)]
            for done in [pool.submit(drop, c, s) for c, s in zip(sessions, shares, strict=True)]:
                done.result()
        return time.perf_counter() - started
    finally:
        for conn in sessions:
            conn.close()


@dataclass(frozen=True)
class Overhead:
    """The same number of deployments dropped by ``janitor run`` (two processes, each over
    half) and by the bare statements (two loops), measured in the order janitor, bare, bare,
    janitor so that a drift of the shared machine weighs on both alike."""

    databases: int
    janitor: tuple[Process, Process]
    bare_s: float

    @property
    def janitor_s(self) -> float:
        return sum(p.wall_s for p in self.janitor)

    @property
    def in_run_s(self) -> float:
        """Without the process starts: the runs' own ``duration_s``."""
        return sum(float(p.finished["duration_s"]) for p in self.janitor)

    @property
    def ratio(self) -> float:
        return self.janitor_s / self.bare_s - 1

    @property
    def in_run_ratio(self) -> float:
        return self.in_run_s / self.bare_s - 1


def _janitor_drops(names: Scratch, kind: str, count: int, concurrency: int) -> Process:
    houston = names.houston(kind)
    releases = names.releases(kind, count)
    create_roles(releases)
    create_databases(releases)
    insert_rows(houston, [(r, EXPIRED) for r in releases])
    env = {
        "JANITOR_HOUSTON_DSN": houston,
        "JANITOR_AIRFLOW_DSN": houston,
        "JANITOR_REGISTRY_URL": "none",
        "JANITOR_CONCURRENCY": str(concurrency),
    }
    process = janitor(["run"], env, Counters(database=urlsplit_dbname(houston)))
    if process.exit_code != 0:
        raise RuntimeError(f"janitor run over {count} databases: {process.finished}")
    return process


def _bare_drops(names: Scratch, kind: str, count: int, concurrency: int) -> float:
    releases = names.releases(kind, count)
    create_roles(releases)
    create_databases(releases)
    return bare_drops(releases, concurrency)


def measure_overhead(names: Scratch, size: int, count: int, concurrency: int) -> Overhead:
    """``count`` deployments (database + 2 roles + row) dropped by ``janitor run``, and as
    many others by the bare statements; at most ``count`` databases exist at any time."""
    first, second = count - count // 2, count // 2
    ours = _janitor_drops(names, f"d{size}", first, concurrency)
    bare = _bare_drops(names, f"e{size}", second, concurrency)
    bare += _bare_drops(names, f"g{size}", first, concurrency)
    again = _janitor_drops(names, f"h{size}", second, concurrency)
    return Overhead(count, (ours, again), bare)


def urlsplit_dbname(dsn: str) -> str:
    return dict(part.split("=", 1) for part in dsn.split())["dbname"]


# --- one size --------------------------------------------------------------------------


@dataclass
class SizeResult:
    fleet: Fleet
    plan: Process
    run: Process
    wrong: list[str]
    overhead: Overhead | None = None
    plan_without_registry: Process | None = None
    """The same plan without the registry's reads (a listing and a HEAD per tag): what the
    Houston database, the Airflow catalog and Elasticsearch cost on their own."""


def measure_size(names: Scratch, size: int, args: argparse.Namespace, workdir: Path) -> SizeResult:
    with ExitStack() as stack:
        registry = stack.enter_context(run_registry(workdir / f"registry-{size}"))
        proxy = stack.enter_context(remote_proxy(registry.url, args.registry_latency_ms / 1000))
        standin = stack.enter_context(running_standin(latency_s=args.es_latency_ms / 1000))
        fleet = seed_fleet(names, size, args, registry, standin)
        print(
            f"\nfleet {size:,}: {len(fleet.expired):,} expired + {len(fleet.kept):,} kept "
            f"deployments, {fleet.real_databases:,} real databases (the other "
            f"{size - fleet.real_databases:,} already gone), {args.tags} tags each, "
            f"{fleet.indices:,} indices ({fleet.indices - len(fleet.young_indices):,} past "
            f"{RETENTION_DAYS} days); seeded in {fleet.seed_s:.0f} s",
            flush=True,
        )
        env = {
            "JANITOR_HOUSTON_DSN": fleet.houston,
            "JANITOR_AIRFLOW_DSN": fleet.houston,
            "JANITOR_REGISTRY_URL": proxy.url,
            "JANITOR_ELASTICSEARCH_URL": standin.url,
            "JANITOR_LOG_RETENTION_DAYS": str(RETENTION_DAYS),
            "JANITOR_CONCURRENCY": str(args.concurrency),
        }
        counters = Counters(proxy, standin, urlsplit_dbname(fleet.houston))
        without_registry = janitor(["plan", "--only", "databases,logs"], env, counters)
        plan = janitor(["plan"], env, counters)
        run = janitor(["run"], env, counters)
        wrong = check_fleet(fleet, registry, standin)
        for process in (without_registry, plan, run):
            if process.exit_code != 0:
                wrong.append(f"janitor {process.command} exited {process.exit_code}")
    result = SizeResult(fleet, plan, run, wrong, plan_without_registry=without_registry)
    if fleet.real_databases:
        result.overhead = measure_overhead(names, size, fleet.real_databases, args.concurrency)
    return result


# --- the comparisons -------------------------------------------------------------------


@dataclass(frozen=True)
class RegistryComparison:
    deployments: int
    latency_ms: float
    janitor: Process
    start: Process
    """The same command over a fleet with nothing expired: the process start alone."""
    sequential_s: float

    @property
    def cpu_ms_per_request(self) -> float:
        return 1000 * self.janitor.cpu_s / self.janitor.count("registry ")

    @property
    def net_cpu_ms_per_request(self) -> float:
        net = self.janitor.cpu_s - self.start.cpu_s
        return 1000 * net / self.janitor.count("registry ")

    @property
    def speedup(self) -> float:
        return self.sequential_s / self.janitor.wall_s


def compare_registry(names: Scratch, args: argparse.Namespace, workdir: Path) -> RegistryComparison:
    count = min(max(args.sizes), args.registry_sample)
    ours, theirs = names.releases("rj", count), names.releases("rs", count)
    with (
        run_registry(workdir / "registry-comparison") as registry,
        remote_proxy(registry.url, args.sequential_latency_ms / 1000) as proxy,
    ):
        with ThreadPoolExecutor(8) as pool:
            seed_registry(registry.pusher(), ours + theirs, args.tags, pool)
        houston = names.houston("registry")
        env = {
            "JANITOR_HOUSTON_DSN": houston,
            "JANITOR_REGISTRY_URL": proxy.url,
            "JANITOR_CONCURRENCY": str(args.concurrency),
        }
        counters = Counters(proxy)
        start = janitor(["run", "--only", "registry"], env, counters)
        insert_rows(houston, [(r, EXPIRED) for r in ours])
        process = janitor(["run", "--only", "registry"], env, counters)
        started = time.perf_counter()
        sequential_sweep(proxy.url, theirs)
        sequential = time.perf_counter() - started
    return RegistryComparison(count, args.sequential_latency_ms, process, start, sequential)


@dataclass(frozen=True)
class CuratorComparison:
    indices: int
    janitor: Process
    curator_s: float | None


def compare_curator(args: argparse.Namespace) -> CuratorComparison:
    python = logs_bench.curator_python()
    with running_standin(version="9.1.0", latency_s=args.es_latency_ms / 1000) as standin:
        now = datetime.now(UTC)
        count = args.curator_indices
        seed_indices(standin, count, logs_bench.RELEASES, now, retention_days=RETENTION_DAYS)
        env = {
            "JANITOR_ELASTICSEARCH_URL": standin.url,
            "JANITOR_LOG_RETENTION_DAYS": str(RETENTION_DAYS),
            "JANITOR_CONCURRENCY": str(args.concurrency),
        }
        process = janitor(["run", "--only", "logs"], env, Counters(standin=standin))
        curator_s = None
        if python is not None:
            standin.clear()
            seed_indices(standin, count, logs_bench.RELEASES, now, retention_days=RETENTION_DAYS)
            started = time.perf_counter()
            if logs_bench.run_curator(standin, python, now) is not None:
                curator_s = time.perf_counter() - started
    return CuratorComparison(count, process, curator_s)


# --- report ----------------------------------------------------------------------------


def _kinds(process: Process) -> str:
    return ", ".join(f"{kind} {n:,}" for kind, n in sorted(process.requests.items()))


def print_size(result: SizeResult) -> None:
    fleet = result.fleet
    print(
        "| fleet | command | wall s | per deployment ms | janitor CPU s | peak RSS MB "
        "| registry req | ES req | PG xacts | stand-in CPU s | exit |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    first = (result.plan_without_registry,) if result.plan_without_registry else ()
    for process in (*first, result.plan, result.run):
        print(
            f"| {fleet.size:,} | {process.command} | {process.wall_s:.2f} "
            f"| {1000 * process.wall_s / fleet.size:.2f} | {process.cpu_s:.2f} "
            f"| {process.peak_rss_mb:.0f} | {process.count('registry '):,} "
            f"| {process.count('es '):,} | {process.count('postgres '):,} "
            f"| {process.standin_cpu_s:.2f} | {process.exit_code} |"
        )
    for process in (result.plan, result.run):
        print(f"  {process.command} requests: {_kinds(process)}")
        registry = process.count("registry ")
        if registry:
            print(
                f"  {process.command}: janitor CPU {1000 * process.cpu_s / registry:.2f} ms per "
                "registry request (all its CPU, start and other work included)"
            )
    overhead = result.overhead
    if overhead is not None:
        print(
            f"  DROP overhead over {overhead.databases:,} real databases (+2 roles each): "
            f"janitor run {overhead.janitor_s:.2f} s in 2 processes (in-run "
            f"{overhead.in_run_s:.2f} s), bare statements {overhead.bare_s:.2f} s: "
            f"{100 * overhead.ratio:+.1f} % (in-run {100 * overhead.in_run_ratio:+.1f} %)"
        )
    for problem in result.wrong:
        print(f"  WRONG: {problem}")


@dataclass
class Verdicts:
    lines: list[tuple[str, str]] = field(default_factory=list)

    def check(self, name: str, measured: Callable[[], tuple[bool, str]] | None) -> None:
        if measured is None:
            self.lines.append(("not measured", name))
            return
        passed, detail = measured()
        self.lines.append(("PASS" if passed else "MISS", f"{name}: {detail}"))

    @property
    def missed(self) -> bool:
        return any(verdict == "MISS" for verdict, _ in self.lines)


def verdicts(
    results: Sequence[SizeResult],
    registry: RegistryComparison | None,
    curator: CuratorComparison | None,
) -> Verdicts:
    found = Verdicts()
    largest = results[-1]
    found.check(
        "every run did exactly its job",
        lambda: (not any(r.wrong for r in results), f"{sum(len(r.wrong) for r in results)} wrong"),
    )
    full = [
        r
        for r in results
        if r.fleet.size >= PLAN_TARGET_FLEET and r.fleet.indices >= PLAN_TARGET_INDICES
    ]
    found.check(
        f"plan over {PLAN_TARGET_FLEET:,} expired deployments and {PLAN_TARGET_INDICES:,} "
        f"indices < {PLAN_TARGET_S:g} s",
        (lambda: (full[0].plan.wall_s < PLAN_TARGET_S, f"{full[0].plan.wall_s:.2f} s"))
        if full
        else None,
    )
    if len(results) >= 2:
        small, big = results[-2], results[-1]
        growth = (big.run.wall_s / big.fleet.size) / (small.run.wall_s / small.fleet.size)
        found.check(
            f"full run grows linearly (per deployment at {big.fleet.size:,} within "
            f"{LINEAR_TARGET:g}x of {small.fleet.size:,})",
            lambda: (growth <= LINEAR_TARGET, f"{growth:.2f}x"),
        )
    else:
        found.check("full run grows linearly", None)
    overhead = largest.overhead
    found.check(
        f"overhead over bare DROP statements < {100 * OVERHEAD_TARGET:g} %",
        (
            lambda: (
                overhead.ratio < OVERHEAD_TARGET,
                f"{100 * overhead.ratio:+.1f} % over {overhead.databases:,} databases",
            )
        )
        if overhead is not None
        else None,
    )
    found.check(
        f"janitor CPU < {CPU_PER_REQUEST_TARGET_MS:g} ms per registry request",
        (
            lambda: (
                registry.cpu_ms_per_request < CPU_PER_REQUEST_TARGET_MS,
                f"{registry.cpu_ms_per_request:.2f} ms (net of process start "
                f"{registry.net_cpu_ms_per_request:.2f} ms)",
            )
        )
        if registry is not None
        else None,
    )
    found.check(
        f">= {SEQUENTIAL_TARGET:g}x the sequential registry loop at 10 ms per request",
        (lambda: (registry.speedup >= SEQUENTIAL_TARGET, f"{registry.speedup:.1f}x"))
        if registry is not None
        else None,
    )
    curator_s = curator.curator_s if curator is not None else None
    found.check(
        f">= {CURATOR_TARGET:g}x Curator 9 end to end at 3,000 indices",
        (
            lambda: (
                curator_s / curator.janitor.wall_s >= CURATOR_TARGET,
                f"{curator_s / curator.janitor.wall_s:.1f}x",
            )
        )
        if curator is not None and curator_s is not None
        else None,
    )
    peak = max(largest.plan.peak_rss_mb, largest.run.peak_rss_mb)
    found.check(
        f"peak RSS < {RSS_TARGET_MB:g} MB at the largest fleet ({largest.fleet.size:,})",
        lambda: (peak < RSS_TARGET_MB, f"{peak:.0f} MB"),
    )
    return found


def print_comparisons(
    registry: RegistryComparison | None, curator: CuratorComparison | None
) -> None:
    if registry is not None:
        process = registry.janitor
        print(
            f"\nregistry, {registry.deployments:,} deployments, {registry.latency_ms:g} ms per "
            f"request: janitor run --only registry {process.wall_s:.2f} s "
            f"({process.count('registry '):,} requests, CPU {process.cpu_s:.2f} s, of which "
            f"process start {registry.start.cpu_s:.2f} s), sequential loop "
            f"{registry.sequential_s:.2f} s: {registry.speedup:.1f}x"
        )
        print(f"  requests: {_kinds(process)}")
    if curator is not None:
        process = curator.janitor
        against = (
            f"Curator 9 {curator.curator_s:.2f} s: {curator.curator_s / process.wall_s:.1f}x"
            if curator.curator_s is not None
            else "Curator could not be run"
        )
        print(
            f"\nlogs, {curator.indices:,} indices, end to end: janitor run --only logs "
            f"{process.wall_s:.2f} s ({process.count('es '):,} requests, CPU "
            f"{process.cpu_s:.2f} s, peak RSS {process.peak_rss_mb:.0f} MB), {against}"
        )


def _sizes(text: str) -> list[int]:
    sizes = sorted(int(s) for s in text.split(","))
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive integers, got {text!r}")
    return sizes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fleet_bench")
    parser.add_argument("--sizes", type=_sizes, default=_sizes("100,1000,10000"))
    parser.add_argument("--max-databases", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--tags", type=int, default=2, help="tags per deployment")
    parser.add_argument("--indices-per-deployment", type=int, default=10)
    parser.add_argument("--max-indices", type=int, default=100_000)
    parser.add_argument("--registry-latency-ms", type=float, default=0.0)
    parser.add_argument("--es-latency-ms", type=float, default=2.0)
    parser.add_argument("--sequential-latency-ms", type=float, default=10.0)
    parser.add_argument("--registry-sample", type=int, default=1000)
    parser.add_argument("--curator-indices", type=int, default=3000)
    parser.add_argument("--no-comparisons", action="store_true")
    args = parser.parse_args(argv)
    args.database_share = min(1.0, args.max_databases / max(args.sizes))
    print(
        f"fleets {', '.join(f'{s:,}' for s in args.sizes)}; real databases for "
        f"{100 * args.database_share:.0f} % of the expired deployments "
        f"(--max-databases {args.max_databases:,}, keeping {KEEP_FREE_BYTES // 1024**3} GB "
        f"free; {free_bytes() / 1024**3:.0f} GB free now); registry +"
        f"{args.registry_latency_ms:g} ms, Elasticsearch stand-in +{args.es_latency_ms:g} ms "
        f"per request; concurrency {args.concurrency}",
        flush=True,
    )
    results: list[SizeResult] = []
    registry = curator = None
    with scratch("f") as names, tempfile.TemporaryDirectory(prefix="fleet-bench-") as tmp:
        for size in args.sizes:
            result = measure_size(names, size, args, Path(tmp))
            print_size(result)
            results.append(result)
        if not args.no_comparisons:
            registry = compare_registry(names, args, Path(tmp))
            curator = compare_curator(args)
            print_comparisons(registry, curator)
    found = verdicts(results, registry, curator)
    print()
    for verdict, line in found.lines:
        print(f"{verdict} {line}")
    return 1 if found.missed else 0


if __name__ == "__main__":
    sys.exit(main())
