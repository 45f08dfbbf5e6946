"""Crash-resume: the janitor is SIGKILLed at a point of its run chosen from outside (a count
of event lines on its stdout, of requests at a loopback proxy before the registry,
Elasticsearch or Prometheus, of statements at a proxy before PostgreSQL). After each kill no
row is gone while anything of it remains, a rerun reaches exactly the state an
uninterrupted run leaves, and a third run has nothing to do (issue 11, SAFETY.md).

The fleet: two expired deployments (A with three tags on two digests, B whose celery role
holds a grant in another database), a live one and a recently deleted one, three log indices
past the window and a young one, and a Prometheus keeping what is configured. The run
goes with JANITOR_CONCURRENCY=1, so the order of its steps, and with it each point, is the
same on every run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from tests.conftest import Houston, soak_beyond
from tests.fault_proxy import Call, Rule, StatementRule
from tests.world import (
    Remotes,
    assert_converges,
    assert_nothing_purged_too_early,
    registry,  # noqa: F401 - pytest fixture
    remotes,  # noqa: F401 - pytest fixture
    seed_world,
    servers,  # noqa: F401 - pytest fixture
    wait_for_sessions_to_end,
)

ROOT = Path(__file__).resolve().parent.parent
# Bounds every wait of these stories; none comes near it.
WAIT_S = 60.0

Where = Literal["stdout", "postgres", "registry", "elasticsearch", "prometheus"]


@dataclass(frozen=True)
class KillPoint:
    """Where the janitor dies: after ``lines`` event lines on stdout, or at the
    (``skip`` + 1)-th request or statement matching ``pattern`` (``method`` for HTTP),
    before it reaches the server or (``after``) once the server handled it and before the
    janitor hears the answer."""

    where: Where
    pattern: str = ""
    method: str = "*"
    skip: int = 0
    after: bool = False
    lines: int = 0


def stdout(lines: int) -> KillPoint:
    return KillPoint("stdout", lines=lines)


def statement(pattern: str, skip: int = 0, *, after: bool = False) -> KillPoint:
    return KillPoint("postgres", pattern, skip=skip, after=after)


# The event lines of an uninterrupted run, in order (JANITOR_CONCURRENCY=1): run.started;
# A's database, 2 roles, 3 tags, purge; B's database, 2 roles, 1 tag, purge; 3 indices;
# the retention check; run.finished.
EVENT_LINES = 18

NAMED_POINTS: dict[str, KillPoint] = {
    # Event lines seen on stdout: inside the plan, between a deployment's steps, after a
    # purge, inside the logs sweeper.
    "stdout: run.started": stdout(1),
    "stdout: A database dropped": stdout(2),
    "stdout: A first role dropped": stdout(3),
    "stdout: A first tag deleted": stdout(5),
    "stdout: A purged": stdout(8),
    "stdout: B roles dropped": stdout(11),
    "stdout: B purged": stdout(13),
    "stdout: first index deleted": stdout(14),
    # Statements seen at the PostgreSQL proxy.
    "pg: taking the run lock": statement(r"pg_try_advisory_lock"),
    "pg: databases plan reading the catalog": statement(r"FROM pg_database WHERE datname = ANY"),
    "pg: A row lock": statement(r"FOR UPDATE"),
    "pg: A DROP DATABASE unsent": statement(r"^DROP DATABASE"),
    "pg: A DROP DATABASE done, unanswered": statement(r"^DROP DATABASE", after=True),
    "pg: A first DROP ROLE done, unanswered": statement(r"^DROP ROLE", after=True),
    "pg: A second DROP ROLE unsent": statement(r"^DROP ROLE", 1),
    "pg: B grants revoked elsewhere, role kept": statement(r"^DROP OWNED", after=True),
    "pg: A purge DELETE done, not committed": statement(r"^DELETE FROM", after=True),
    "pg: A purge committed, unanswered": statement(r"^COMMIT", after=True),
    "pg: B purge commit unsent": statement(r"^COMMIT", 1),
    # Requests seen at the registry proxy: listing and resolving in the plan, a manifest
    # DELETE before and after the registry handled it, the listing that proves A empty.
    "registry: first tag listing": KillPoint("registry", "/tags/list", "GET"),
    "registry: resolving a tag": KillPoint("registry", "/manifests/", "HEAD", skip=1),
    "registry: A manifest DELETE unsent": KillPoint("registry", "/manifests/", "DELETE"),
    "registry: A manifest DELETE done, unanswered": KillPoint(
        "registry", "/manifests/", "DELETE", after=True
    ),
    "registry: A emptiness probe, before the purge": KillPoint(
        "registry", "/tags/list", "GET", skip=2
    ),
    # Requests seen at the Elasticsearch and Prometheus proxies.
    "es: index listing": KillPoint("elasticsearch", r"^/fluentd", "GET"),
    "es: batched DELETE unsent": KillPoint("elasticsearch", r"^/fluentd", "DELETE"),
    "es: batched DELETE done, unanswered": KillPoint(
        "elasticsearch", r"^/fluentd", "DELETE", after=True
    ),
    "prometheus: retention read": KillPoint("prometheus", "/api/v1/status/", "GET"),
}

# Every event line, and each statement and manifest DELETE of the run, before the server sees
# it and after it handled it.
EVERY_POINT: dict[str, KillPoint] = {
    **{f"stdout: line {n}": stdout(n) for n in range(1, EVENT_LINES)},
    **{
        f"pg: {name} #{n + 1}{' after' if after else ''}": statement(pattern, n, after=after)
        for name, pattern, count in (
            ("DROP DATABASE", r"^DROP DATABASE", 2),
            ("DROP ROLE", r"^DROP ROLE", 4),
            ("row lock", r"FOR UPDATE", 2),
            ("purge", r"^DELETE FROM", 2),
            ("commit", r"^COMMIT", 2),
            ("grant lookup", r"FROM pg_shdepend", 4),
        )
        for n in range(count)
        for after in (False, True)
    },
    **{
        f"registry: DELETE #{n + 1}{' after' if after else ''}": KillPoint(
            "registry", "/manifests/", "DELETE", skip=n, after=after
        )
        for n in range(3)
        for after in (False, True)
    },
}


def arm(point: KillPoint, proxies: Remotes, kill: Any) -> None:
    """Installs the rule that calls ``kill`` at ``point`` (stdout points are counted by the
    reader in :func:`run_until_killed`)."""
    if point.where == "postgres":
        proxies.pg.add(StatementRule(point.pattern, kill, after=point.after, skip=point.skip))
    elif point.where != "stdout":
        fault = Call(kill, after=point.after)
        proxies.http(point.where).add(Rule(point.method, point.pattern, fault, skip=point.skip))


def janitor_process(env: dict[str, str], stderr: Any) -> subprocess.Popen[bytes]:
    """``python -m janitor run`` as the CronJob starts it, from the worktree."""
    return subprocess.Popen(
        [sys.executable, "-m", "janitor", "run", "--log-format", "json"],
        cwd=ROOT,
        env={**env, "PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=stderr,
    )


def run_until_killed(env: dict[str, str], point: KillPoint | None, proxies: Remotes) -> list[str]:
    """Runs the janitor until ``point`` kills it (None: to its end); its stdout lines.
    Fails when the point is never reached: each point must be a real one."""
    killed = threading.Event()
    with tempfile.TemporaryFile() as stderr:
        process = janitor_process(env, stderr)

        def kill() -> bool:
            killed.set()
            process.send_signal(signal.SIGKILL)
            process.wait()
            return False

        if point is not None:
            arm(point, proxies, kill)
        watchdog = threading.Timer(WAIT_S, process.kill)
        watchdog.start()
        lines: list[str] = []
        try:
            assert process.stdout is not None
            for line in process.stdout:
                lines.append(line.decode())
                if point is not None and point.where == "stdout" and len(lines) == point.lines:
                    kill()
            process.wait()
        finally:
            watchdog.cancel()
            proxies.clear()
        stderr.seek(0)
        errors = stderr.read().decode()
    if point is None:
        assert process.returncode == 0, errors
    else:
        assert killed.is_set(), f"the kill point was never reached: {lines}{errors}"
        assert process.returncode == -signal.SIGKILL
    return lines


def crash_and_resume(houston: Houston, proxies: Remotes, point: KillPoint) -> None:
    """Seed, kill at ``point``, check what the kill left, resume."""
    world = seed_world(houston, proxies)
    before = world.state()

    run_until_killed(world.env, point, proxies)
    # A killed janitor's sessions end once the server notices (after a statement in flight
    # finishes); until then its run lock is held, as after a real crash.
    wait_for_sessions_to_end(proxies.pg)

    assert_nothing_purged_too_early(world, world.state())
    assert_converges(world, before)


# The points of make test: every stage issue 11 names. Inside each sweeper (databases: the
# catalog read, a DROP DATABASE and DROP ROLE on either side of the server; registry: a tag
# listing and a manifest DELETE; logs: the listing; metrics: the retention read), between a
# deployment's steps (stdout), between the last resource and the purge (the emptiness probe,
# the purge DELETE and its COMMIT), during the batched index DELETE; the run lock, a row
# lock, a grant revoked elsewhere. make soak adds the other points.
IN_MAKE_TEST = (
    "pg: taking the run lock",
    "pg: databases plan reading the catalog",
    "pg: A row lock",
    "pg: A DROP DATABASE unsent",
    "pg: A DROP DATABASE done, unanswered",
    "pg: A first DROP ROLE done, unanswered",
    "pg: B grants revoked elsewhere, role kept",
    "pg: A purge DELETE done, not committed",
    "pg: A purge committed, unanswered",
    "stdout: A database dropped",
    "stdout: A first tag deleted",
    "stdout: B roles dropped",
    "stdout: first index deleted",
    "registry: first tag listing",
    "registry: A manifest DELETE unsent",
    "registry: A manifest DELETE done, unanswered",
    "registry: A emptiness probe, before the purge",
    "es: index listing",
    "es: batched DELETE unsent",
    "es: batched DELETE done, unanswered",
    "prometheus: retention read",
)


def distinct(*named: dict[str, KillPoint]) -> dict[str, KillPoint]:
    """Each distinct point once, under the first name it has."""
    first: dict[KillPoint, str] = {}
    for points in named:
        for name, point in points.items():
            first.setdefault(point, name)
    return {name: point for point, name in first.items()}


KILL_POINTS = distinct(NAMED_POINTS, EVERY_POINT)


@pytest.mark.parametrize("point", soak_beyond(KILL_POINTS, IN_MAKE_TEST))
def test_a_janitor_killed_at_any_point_leaves_no_orphan_and_the_next_run_finishes_the_job(
    houston: Houston,
    remotes: Remotes,  # noqa: F811 - the imported fixture
    point: KillPoint,
) -> None:
    """SIGKILL at this point: no row went before its database, roles and tags; the next run
    ends in the uninterrupted run's state, and the run after it has nothing to do."""
    crash_and_resume(houston, remotes, point)


def test_an_uninterrupted_run_leaves_the_state_every_resumed_run_is_compared_with(
    houston: Houston,
    remotes: Remotes,  # noqa: F811 - the imported fixture
) -> None:
    """The reference: the expired deployments and old indices fully gone, all else as it
    was, every event line in the order the kill points count them."""
    world = seed_world(houston, remotes)
    before = world.state()

    lines = run_until_killed(world.env, None, remotes)

    assert len(lines) == EVENT_LINES
    assert world.state() == world.expected(before)
