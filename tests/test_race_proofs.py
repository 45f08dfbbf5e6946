"""Races (issue 11, SAFETY.md): runs started together, a restore in Houston at each point of
a deployment's processing, a deployment soft-deleted again mid-run.

The points are chosen from outside: the proxy before PostgreSQL (or the registry) holds
the janitor's statement (or request) while the story plays the other side, then lets it go.

A restore that commits before the janitor takes the deployment's row lock wins: nothing of
the deployment is touched. Once the janitor holds the row lock (SPEC.md "Safety rules"), a
restore waits for it and then finds the row purged: Houston never holds a live row whose
database, roles or tags the janitor dropped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.conftest import ADMIN_DSN, SCHEMA, Houston, janitor
from tests.fault_proxy import Call, Rule, StatementRule
from tests.fleet import Fleet, Member, database_of, roles_of, server_now
from tests.world import (
    Remotes,
    World,
    assert_recorded_whole,
    registry,  # noqa: F401 - pytest fixture
    remotes,  # noqa: F401 - pytest fixture
    seed_world,
    servers,  # noqa: F401 - pytest fixture
)

ROOT = Path(__file__).resolve().parent.parent
WAIT_S = 30.0
NO_LONGER_EXPIRED = "deployment was restored or is no longer past the retention window"


def set_deleted_at(houston: Houston, release: str, value: str) -> int:
    """Houston's own UPDATE of a deployment row (``value`` is SQL: NULL, a timestamp);
    waits for any row lock, as Houston does; returns the rows it changed."""
    with psycopg.connect(houston.dsn, autocommit=True, application_name="houston") as conn:
        return conn.execute(
            sql.SQL('UPDATE {}."Deployment" SET "deletedAt" = {} WHERE "releaseName" = %s').format(
                sql.Identifier(SCHEMA), sql.SQL(value)
            ),
            (release,),
        ).rowcount


def houston_waits_on_a_lock(houston: Houston) -> bool:
    with psycopg.connect(ADMIN_DSN, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
            " AND application_name = 'houston' AND wait_event_type = 'Lock'",
            (houston.dbname,),
        ).fetchone()
    return bool(row and row[0])


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def intact(world: World, release: str) -> bool:
    state = world.state()
    left = state.left_of(release)
    return (
        release in {r for r, _ in state.rows}
        and f"database {database_of(release)}" in left
        and all(f"role {role}" in left for role in roles_of(release))
        and any(item.startswith("tag ") for item in left)
    )


class HoustonSide:
    """Houston's side of a story: an UPDATE started in a thread at a point of the run."""

    def __init__(self, houston: Houston) -> None:
        self.houston = houston
        self.pool = ThreadPoolExecutor(1)
        self.update: Future[int] | None = None

    def restore(self, release: str, value: str = "NULL", *, blocked: bool) -> Callable[[], bool]:
        """The action of a hold: start the UPDATE; once it committed (``blocked=False``) or
        waits on the janitor's row lock (``blocked=True``), let the janitor go on."""

        def act() -> bool:
            self.update = self.pool.submit(set_deleted_at, self.houston, release, value)
            if blocked:
                wait_for(lambda: houston_waits_on_a_lock(self.houston), "the restore to wait")
            else:
                self.update.result(timeout=WAIT_S)
            return True

        return act

    def changed(self) -> int:
        assert self.update is not None, "the point was never reached"
        return self.update.result(timeout=WAIT_S)


# Points of A's processing, once the janitor holds A's row lock: the restore waits for it.
HELD_POINTS: dict[str, tuple[str, str, bool]] = {
    "at A's DROP DATABASE": ("postgres", r"^DROP DATABASE", False),
    "after A's first DROP ROLE": ("postgres", r"^DROP ROLE", True),
    "at A's manifest DELETE": ("registry", "/manifests/", False),
    "at the listing proving A's repository empty": ("registry", "/tags/list", False),
    "at A's purge": ("postgres", r"^DELETE FROM", False),
    "at A's COMMIT": ("postgres", r"^COMMIT", False),
}


def hold(proxies: Remotes, where: str, pattern: str, after: bool, act: Callable[[], bool]) -> None:
    """Installs ``act`` at the point: a statement at the PostgreSQL proxy, a request at the
    registry proxy."""
    if where == "postgres":
        proxies.pg.add(StatementRule(pattern, act, after=after))
    elif pattern == "/tags/list":
        # The third listing: two in the plan (A, B), then the one after A's deletes.
        proxies.registry_proxy.add(Rule("GET", pattern, Call(act), skip=2))
    else:
        proxies.registry_proxy.add(Rule("DELETE", pattern, Call(act, after=after)))


@pytest.mark.parametrize("point", list(HELD_POINTS))
def test_a_restore_once_the_row_is_locked_waits_and_never_revives_a_dropped_deployment(
    houston: Houston,
    remotes: Remotes,  # noqa: F811 - the imported fixture
    point: str,
) -> None:
    """Houston restores A while the janitor is in the middle of A: the restore waits on the
    row lock, A is fully removed, and the restore then changes no row; B goes as usual."""
    world = seed_world(houston, remotes)
    a, b = world.expired
    other_side = HoustonSide(houston)
    hold(remotes, *HELD_POINTS[point], other_side.restore(a, blocked=True))

    run = janitor(["run"], world.env)

    assert run.code == 0, run.events
    assert_recorded_whole(run, world)
    assert other_side.changed() == 0
    assert world.state().left_of(a) == []
    assert a not in {r for r, _ in world.state().rows}
    assert run.outcomes("deployment.purge") == {a: "done", b: "done"}


@pytest.mark.parametrize(
    ("point", "pattern", "skip"),
    [
        ("between the plan and A's row lock", "FOR UPDATE", 0),
        ("while the janitor drops A's database", r"^DROP DATABASE", 0),
        ("while the janitor purges A", r"^DELETE FROM", 0),
    ],
)
def test_a_restore_before_the_janitor_locks_the_row_wins_and_the_deployment_survives_intact(
    houston: Houston,
    remotes: Remotes,  # noqa: F811 - the imported fixture
    point: str,
    pattern: str,
    skip: int,
) -> None:
    """A restore of a deployment the janitor has planned but not yet locked commits at
    once: at its row lock the janitor finds it live and skips everything of it (reason
    'restored'), exit 0; it keeps its row, database, roles and tags."""
    world = seed_world(houston, remotes)
    a, b = world.expired
    target = a if pattern == "FOR UPDATE" else b
    other_side = HoustonSide(houston)
    remotes.pg.add(StatementRule(pattern, other_side.restore(target, blocked=False), skip=skip))

    run = janitor(["run"], world.env)

    assert run.code == 0, run.events
    assert_recorded_whole(run, world)
    assert other_side.changed() == 1
    assert intact(world, target)
    mine = [e for e in run.events if e.get("deployment") == target and "outcome" in e]
    assert {e["outcome"] for e in mine} == {"skipped"}
    assert {e["reason"] for e in mine} == {NO_LONGER_EXPIRED}


def test_a_restore_before_the_run_keeps_everything(
    houston: Houston,
    remotes: Remotes,  # noqa: F811 - the imported fixture
) -> None:
    """Restored before the run started: the deployment is live and not even reported."""
    world = seed_world(houston, remotes)
    a, _ = world.expired
    assert set_deleted_at(houston, a, "NULL") == 1

    run = janitor(["run"], world.env)

    assert run.code == 0
    assert [e for e in run.events if e.get("deployment") == a] == []
    assert intact(world, a)


@pytest.mark.parametrize(
    ("again", "judged"),
    [
        ("now() AT TIME ZONE 'UTC'", "skipped"),
        ("(now() AT TIME ZONE 'UTC') - interval '40 days'", "done"),
    ],
    ids=["deleted again just now", "deletedAt moved further back"],
)
def test_a_deployment_soft_deleted_again_mid_run_is_judged_by_its_row_lock(
    houston: Houston,
    remotes: Remotes,  # noqa: F811 - the imported fixture
    again: str,
    judged: str,
) -> None:
    """B is expired when the run plans; while A is dropped, Houston restores B and deletes
    it again. At B's row lock the janitor reads the row as it is then: deleted just now, B
    is young again and everything of it stays; deleted 40 days back, B is swept."""
    world = seed_world(houston, remotes)
    _, b = world.expired

    def restore_and_delete_again() -> bool:
        assert set_deleted_at(houston, b, "NULL") == 1
        assert set_deleted_at(houston, b, again) == 1
        return True

    remotes.pg.add(StatementRule(r"^DROP DATABASE", restore_and_delete_again))

    run = janitor(["run"], world.env)

    assert run.code == 0, run.events
    assert_recorded_whole(run, world)
    assert run.outcomes("deployment.purge")[b] == judged
    if judged == "skipped":
        assert intact(world, b)
    else:
        assert world.state().left_of(b) == []


def janitor_process(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "janitor", "run", "--log-format", "json"],
        cwd=ROOT,
        env={**env, "PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def events_of(out: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.decode().splitlines()]


RUNS_AT_ONCE = 5


def test_runs_started_at_once_let_exactly_one_work(
    houston: Houston,
    remotes: Remotes,  # noqa: F811 - the imported fixture
) -> None:
    """Five `janitor run` processes start together while the first DROP DATABASE of
    whichever wins is held: exactly one works; the four others print run.started,
    run.skipped (the run lock) and run.finished, exit 0, and touch nothing."""
    world = seed_world(houston, remotes)
    before = world.state()
    released = threading.Event()
    remotes.pg.add(StatementRule(r"^DROP DATABASE", lambda: released.wait(WAIT_S)))

    processes = [janitor_process(world.env) for _ in range(RUNS_AT_ONCE)]
    try:
        skipped_ones = []
        deadline = time.monotonic() + WAIT_S
        while len(skipped_ones) < RUNS_AT_ONCE - 1 and time.monotonic() < deadline:
            skipped_ones = [p for p in processes if p.poll() is not None]
            time.sleep(0.02)
        released.set()
        outputs = [p.communicate(timeout=WAIT_S) for p in processes]
    finally:
        released.set()
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    runs = [events_of(out) for out, _ in outputs]
    workers = [r for r in runs if not any(e["event"] == "run.skipped" for e in r)]
    skippers = [r for r in runs if any(e["event"] == "run.skipped" for e in r)]
    assert len(workers) == 1
    assert [p.returncode for p in processes] == [0] * RUNS_AT_ONCE
    for events in skippers:
        assert [e["event"] for e in events] == ["run.started", "run.skipped", "run.finished"]
        assert events[1]["reason"] == "another run holds the run lock"
    assert workers[0][-1]["event"] == "run.finished"
    assert world.state() == world.expected(before)


PARALLEL_GRANTED = 8


def test_deployments_dropped_in_parallel_whose_roles_share_a_grant_all_go(
    houston: Houston,
) -> None:
    """Found by the fleet property: eight expired deployments whose celery roles may all
    SELECT on one table of another database, swept by eight workers. Their grants are
    revoked one role at a time (two REVOKEs of one table's privileges at once fail with
    XX000 "tuple concurrently updated"), so every role is dropped and every row purged."""
    fleet = Fleet(houston)
    now = server_now()
    releases = [houston.release(f"g{i}") for i in range(PARALLEL_GRANTED)]
    fleet.seed(
        Member(r, now - timedelta(days=20), database=False, granted_elsewhere=True)
        for r in releases
    )
    env = {"JANITOR_HOUSTON_DSN": houston.dsn, "JANITOR_REGISTRY_URL": "none"}

    run = janitor(["run", "--concurrency", str(PARALLEL_GRANTED)], env)

    assert run.code == 0, [e["error"] for e in run.events if e.get("outcome") == "failed"]
    assert run.outcomes("deployment.purge") == dict.fromkeys(releases, "done")
    assert fleet.state().grants == frozenset()
