"""Faults between the janitor and every server it talks to (issue 11, SAFETY.md): a loopback
fault proxy before the real registry, the real Prometheus, the Elasticsearch stand-in and
PostgreSQL plays latency, resets, half-closed connections, 429 with Retry-After, 500/503,
truncated and malformed JSON, answers cut short, and sessions ended by pg_terminate_backend.

What is safe to repeat is retried and the run is clean; what is not fails that action with
an error saying what went wrong; nothing is half-recorded (every deployment reported on
ends with one deployment.purge, no row goes before its resources, run.finished is last);
and once the fault is gone the next run reaches the state of an uninterrupted run.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal

import pytest

from tests.conftest import Houston, janitor, soak_beyond
from tests.fault_proxy import (
    Answer,
    Call,
    Delay,
    Fault,
    HalfClose,
    PgProxy,
    Reset,
    Rule,
    StatementRule,
    Truncate,
)
from tests.world import (
    Remotes,
    World,
    assert_converges,
    assert_nothing_purged_too_early,
    assert_recorded_whole,
    registry,  # noqa: F401 - pytest fixture
    remotes,  # noqa: F401 - pytest fixture
    seed_world,
    servers,  # noqa: F401 - pytest fixture
    wait_for_sessions_to_end,
)

THROTTLED = b'{"errors": [{"code": "TOOMANYREQUESTS", "message": "slow down"}]}'
# The shared retries (janitor.clients.http) absorb these when they pass.
ABSORBED: dict[str, Fault] = {
    "latency": Delay(0.3),
    "reset": Reset(),
    "half-closed": HalfClose(),
    "429 with Retry-After: 1": Answer(429, THROTTLED, (("Retry-After", "1"),)),
    "500": Answer(500, b"internal server error"),
    "503": Answer(503, b"service unavailable"),
}
# A 200 whose body is broken is not retried (nothing says a repeat would be better), nor is
# a server asking to wait longer than the retry budget: the action fails, saying why.
FAILING: dict[str, Fault] = {
    "429 with Retry-After: 3600": Answer(429, THROTTLED, (("Retry-After", "3600"),)),
    "truncated JSON": Answer(200, b'{"name": "a/airflow", "tags": ["1.0", "la'),
    "malformed JSON": Answer(200, b"{'tags': [1.0, latest]}"),
    "body cut short": Truncate(),
}
# The first read of each server, and what its failed event says for each failing fault.
READS = {
    "registry": ("GET", "/tags/list"),
    "elasticsearch": ("GET", "^/fluentd"),
    "prometheus": ("GET", "/api/v1/status/runtimeinfo"),
}
SAYS = {
    "429 with Retry-After: 3600": dict.fromkeys(READS, "429"),
    "truncated JSON": {
        "registry": "registry answered invalid JSON",
        "elasticsearch": "Unable to deserialize as JSON",
        "prometheus": "did not answer like the Prometheus API",
    },
    "body cut short": dict.fromkeys(READS, "was cut short"),
}
SAYS["malformed JSON"] = SAYS["truncated JSON"]


def first_run_then_converge(
    world: World, proxies: Remotes, *, clean: bool, says: str | None = None
) -> None:
    """The run under the fault: clean (exit 0, the uninterrupted state) or failing with an
    error that ``says`` what went wrong; never half-recorded. Then, the fault gone, the
    next run converges and the one after does nothing."""
    before = world.state()

    first = janitor(["run"], world.env)

    assert_recorded_whole(first, world)
    assert_nothing_purged_too_early(world, world.state())
    failures = [e for e in first.events if e.get("outcome") == "failed"]
    if clean:
        assert first.code == 0, failures
        assert world.state() == world.expected(before)
    else:
        assert first.code == 1
        errors = [e["error"] for e in failures] + [first.finished.get("error") or ""]
        assert says is not None
        assert any(says in error for error in errors), errors
    proxies.clear()
    assert_converges(world, before)


@pytest.mark.parametrize("kind", list(ABSORBED) + list(FAILING))
@pytest.mark.parametrize("server", list(READS))
def test_a_fault_on_the_first_read_of_a_server_is_retried_or_fails_that_sweep_clearly(
    houston: Houston,
    remotes: Remotes,  # noqa: F811 - the imported fixture
    server: str,
    kind: str,
) -> None:
    """Once, on the registry's tag listing, Elasticsearch's index listing or Prometheus'
    runtimeinfo: a transient fault is retried and the run is clean; a broken answer fails
    that sweep with an error naming it, keeps the rows, and the next run converges."""
    world = seed_world(houston, remotes, databases=False)
    method, path = READS[server]
    fault = ABSORBED.get(kind) or FAILING[kind]
    remotes.http(server).add(Rule(method, path, fault))

    first_run_then_converge(
        world, remotes, clean=kind in ABSORBED, says=SAYS.get(kind, {}).get(server)
    )


LOST = Call(lambda: False, after=True)
"""The server handled the request; its answer is lost (the connection resets)."""

DELETE_FAULTS: dict[str, tuple[str, str, Fault, str | None]] = {
    "registry DELETE reset": ("registry", "/manifests/", Reset(), None),
    "registry DELETE half-closed": ("registry", "/manifests/", HalfClose(), None),
    "registry DELETE 503": ("registry", "/manifests/", ABSORBED["503"], None),
    "registry DELETE done, answer lost": ("registry", "/manifests/", LOST, None),
    "index DELETE reset": ("elasticsearch", "^/fluentd", Reset(), None),
    "index DELETE 503": ("elasticsearch", "^/fluentd", ABSORBED["503"], None),
    "index DELETE done, answer lost": ("elasticsearch", "^/fluentd", LOST, None),
    "index DELETE done, answer cut short": (
        "elasticsearch",
        "^/fluentd",
        Truncate(),
        "was cut short",
    ),
    "index DELETE answered malformed JSON": (
        "elasticsearch",
        "^/fluentd",
        FAILING["malformed JSON"],
        "Unable to deserialize as JSON",
    ),
}


@pytest.mark.parametrize("case", list(DELETE_FAULTS))
def test_a_fault_on_a_delete_is_retried_where_repeating_it_is_safe(
    houston: Houston,
    remotes: Remotes,  # noqa: F811 - the imported fixture
    case: str,
) -> None:
    """Every DELETE the janitor sends is idempotent: one reset, half-closed or refused with
    503, or whose answer was lost after the server did it, is sent again (a repeat finding
    it gone is `absent`) and the run is clean. An answer that is broken fails the batch
    with what was wrong; the next run finds the rest."""
    world = seed_world(houston, remotes, databases=False)
    server, path, fault, says = DELETE_FAULTS[case]
    remotes.http(server).add(Rule("DELETE", path, fault))

    first_run_then_converge(world, remotes, clean=says is None, says=says)


@pytest.mark.parametrize("kind", ["429 with Retry-After: 3600", "malformed JSON"])
@pytest.mark.parametrize("server", list(READS))
def test_a_server_failing_every_request_fails_its_sweep_and_the_run_still_ends(
    houston: Houston,
    remotes: Remotes,  # noqa: F811 - the imported fixture
    server: str,
    kind: str,
) -> None:
    """The fault on every request to that server: the other sweeps go on, the run ends with
    run.finished and exit 1, and the next run after the server recovered converges."""
    world = seed_world(houston, remotes, databases=False)
    method, path = READS[server]
    remotes.http(server).add(Rule(method, path, FAILING[kind], times=None))

    first_run_then_converge(world, remotes, clean=False, says=SAYS[kind][server])


# Every retried fault on every request to a server, through the whole retry budget: up to
# 15 s a case. make test exhausts the retries once, where they are quickest.
EXHAUSTED = {
    f"{server}: {kind}": (server, kind)
    for server in READS
    for kind in ("reset", "half-closed", "500", "503")
}


@pytest.mark.parametrize("case", soak_beyond(EXHAUSTED, ["prometheus: reset"]))
def test_a_server_failing_every_retried_request_exhausts_the_retries_and_fails(
    houston: Houston,
    remotes: Remotes,  # noqa: F811 - the imported fixture
    case: tuple[str, str],
) -> None:
    """A fault the janitor retries, on every request to that server: the retries run out,
    that sweep fails, the run still ends with run.finished, and the next run converges."""
    server, kind = case
    world = seed_world(houston, remotes, databases=False)
    method, path = READS[server]
    remotes.http(server).add(Rule(method, path, ABSORBED[kind], times=None))

    first_run_then_converge(world, remotes, clean=False, says="")


# --- PostgreSQL ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PgFault:
    """A fault at the (``skip`` + 1)-th statement matching ``pattern``: its session ``reset``
    by the proxy, or every janitor session of the test ``terminated`` by pg_terminate_backend
    (before the statement reaches the server, or ``after`` it ran), or ``latency`` on every
    matching statement. ``says``: what the failed event or run.finished says (None: the run
    is clean)."""

    act: Literal["latency", "reset", "terminated"]
    pattern: str
    says: str | None
    after: bool = False
    skip: int = 0

    def rule(self, pg: PgProxy) -> StatementRule:
        if self.act == "latency":
            return StatementRule(self.pattern, delay_s=0.05, times=None)
        action = (
            partial(wait_for_sessions_to_end, pg, terminate=True)
            if self.act == "terminated"
            else lambda: False
        )
        return StatementRule(self.pattern, action, after=self.after, skip=self.skip)


CLOSED = "server closed the connection unexpectedly"
TERMINATED = "57P01 terminating connection due to administrator command"

PG_FAULTS: dict[str, PgFault] = {
    "latency on every drop and purge": PgFault("latency", r"^(DROP|DELETE)", None),
    "reset at A's DROP DATABASE": PgFault("reset", r"^DROP DATABASE", CLOSED),
    "reset at A's row lock": PgFault("reset", "FOR UPDATE", CLOSED),
    "reset after A's purge committed": PgFault(
        "reset", "^COMMIT", "the purge was not confirmed", after=True
    ),
    "reset taking the run lock": PgFault("reset", "pg_try_advisory_lock", "Houston database"),
    "reset reading the fleet": PgFault("reset", "ORDER BY", "Houston database"),
    "terminated at A's DROP DATABASE": PgFault("terminated", r"^DROP DATABASE", TERMINATED),
    "terminated at A's purge": PgFault("terminated", "^DELETE FROM", TERMINATED),
    "terminated while the plan reads the catalog": PgFault(
        "terminated", "FROM pg_database WHERE datname = ANY", TERMINATED
    ),
    "terminated after B's first DROP ROLE": PgFault(
        "terminated", "^DROP ROLE", TERMINATED, after=True, skip=2
    ),
}


# make test: each kind once where it matters most (the purge, a role between deployments);
# make soak: every point.
PG_IN_MAKE_TEST = (
    "latency on every drop and purge",
    "reset after A's purge committed",
    "terminated at A's purge",
    "terminated after B's first DROP ROLE",
)


@pytest.mark.parametrize("case", soak_beyond(PG_FAULTS, PG_IN_MAKE_TEST))
def test_a_postgresql_session_lost_mid_run_fails_only_what_it_carried(
    houston: Houston,
    remotes: Remotes,  # noqa: F811 - the imported fixture
    case: PgFault,
) -> None:
    """PostgreSQL through a proxy that resets a session at a statement, or sessions ended
    by pg_terminate_backend mid-run: what that session carried fails with the server's
    words (a purge whose commit went unanswered is not reported done), a dead pooled
    session is replaced for the next deployment, and the next run converges."""
    world = seed_world(houston, remotes)
    rule = remotes.pg.add(case.rule(remotes.pg))

    first_run_then_converge(world, remotes, clean=case.says is None, says=case.says)
    assert rule.served == 1 or rule.times is None
