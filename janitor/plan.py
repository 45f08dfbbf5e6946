"""Typed actions, the plan a run executes, and the safety guard.

A sweeper reads the world and returns *steps*. A step is one unit of remote work (one
``DROP DATABASE``, one registry manifest ``DELETE`` that removes several tags, one batched
Elasticsearch ``DELETE a,b,c``) and carries the *actions* it settles: one action is one
reported thing, i.e. one event line (README "Events"). Executing a step returns one
:class:`Result` per action, in order.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Outcome = Literal["planned", "done", "absent", "skipped", "failed", "ok", "mismatch", "found"]
Counts = Mapping[str, Mapping[str, int]]
"""What ``run.finished`` reports: {event: {outcome: n}}."""


@dataclass(frozen=True)
class Result:
    """How one action ended. ``reason`` goes with skipped/mismatch, ``error`` with failed."""

    outcome: Outcome
    reason: str | None = None
    error: str | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)


PLANNED = Result("planned")
DONE = Result("done")
ABSENT = Result("absent")


def skipped(reason: str) -> Result:
    return Result("skipped", reason=reason)


def failed(error: str) -> Result:
    return Result("failed", error=error)


@dataclass(frozen=True)
class Action:
    """One reported thing: becomes exactly one event line."""

    event: str
    target: str
    planned: Result
    deployment: str | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)

    @property
    def deletes(self) -> bool:
        """Counted by the guard: planned deletions only (README "Configuration",
        JANITOR_MAX_DELETIONS)."""
        return self.planned.outcome == "planned"


@dataclass(frozen=True)
class Step:
    """One unit of work settling ``actions``; ``run`` is None when the plan already knows
    every outcome (absent, skipped, or a read-only check)."""

    actions: tuple[Action, ...]
    run: Callable[[], Sequence[Result]] | None = None


def final(action: Action) -> Step:
    """A step whose outcome the plan already settled."""
    return Step((action,), None)


def single(action: Action, run: Callable[[], Result]) -> Step:
    """A step doing one thing for one action."""
    return Step((action,), lambda: (run(),))


Probe = Callable[[], str | None]
"""A read-only check run after a deployment's steps: a sentence naming what still exists
(e.g. tags a registry listing still shows), or None when everything is gone."""


@dataclass(frozen=True)
class Deployment:
    """A row of the Houston deployments table that is past the retention window."""

    id: str
    release_name: str
    deleted_at: str


@dataclass(frozen=True)
class DeploymentWork:
    """Everything to destroy for one expired deployment, in order, before its row may go.

    ``remaining`` are read-only probes run after the steps: each returns a sentence naming
    what still exists (e.g. tags a registry listing still shows) or None when all is gone.
    ``blocked`` names why the row must be kept whatever the steps do (a protected or
    conflicting name); ``None`` when the row may be purged once everything is gone.
    """

    deployment: Deployment
    steps: tuple[Step, ...] = ()
    remaining: tuple[Probe, ...] = ()
    blocked: str | None = None
    denied: str | None = None
    """Why the janitor may not lock or delete the row (a missing privilege, with the grant
    that fixes it): the purge is ``failed`` and nothing of the deployment is attempted."""
    adopted: str | None = None
    """For an orphan swept with ``--adopt-orphans`` (README "Orphans: janitor audit"): when
    the audit first found it (UTC, ISO 8601). It has no row: the janitor's orphan records
    stand for it, are locked and re-checked instead, and are what its purge deletes."""


@dataclass(frozen=True)
class Plan:
    deployments: tuple[DeploymentWork, ...]
    steps: tuple[Step, ...]
    purge_blocked: str | None
    """Why no row may be purged in this run (a sweeper that did not run), else None."""

    def actions(self) -> list[Action]:
        found = [a for w in self.deployments for s in w.steps for a in s.actions]
        found += [a for s in self.steps for a in s.actions]
        return found

    def deletions(self) -> int:
        """What the guard counts: planned deletions, plus the rows that would be purged."""
        count = sum(1 for a in self.actions() if a.deletes)
        if self.purge_blocked is None:
            count += sum(1 for w in self.deployments if w.blocked is None and w.denied is None)
        return count


def guard_refusal(plan: Plan, max_deletions: int) -> str | None:
    """The reason the whole run is refused (README "Exit codes": 4), or None. 0 means no limit."""
    if max_deletions <= 0:
        return None
    count = plan.deletions()
    if count <= max_deletions:
        return None
    return f"guard: plan deletes {count} things, more than max_deletions={max_deletions}"


# --- the one shape of every sweeper ----------------------------------------------------------


@dataclass(frozen=True)
class Share:
    """What one deployment sweeper holds of one expired deployment: its steps, in order,
    and the probes that must find nothing left before the row may go."""

    steps: tuple[Step, ...] = ()
    remaining: tuple[Probe, ...] = ()


@dataclass(frozen=True)
class DeploymentPlan:
    """A deployment sweeper's plan: a share per ``Deployment.id``; when it could not read
    its world at all, ``failures`` (one failed event each) and ``unswept``, why no row may
    be purged in this run."""

    shares: Mapping[str, Share]
    failures: tuple[Step, ...] = ()
    unswept: str | None = None


@dataclass(frozen=True)
class DeploymentSweeper:
    """Sweeps what expired deployments leave behind (databases and roles, registry tags).

    ``plan`` reads the world and never raises on remote trouble: what it cannot read or
    may not do becomes failed actions. It raises only ConfigurationError, for an endpoint
    that is not what the configuration says (exit 2, nothing changed). ``problems`` is what
    ``janitor check`` reports: sentences naming what keeps the sweeper from its job, for
    the expired deployments given (the same failures their plan would show).
    """

    subsystem: str
    event: str
    """The event its actions report, also used for a failure of the sweeper as a whole."""
    plan: Callable[[Sequence[Deployment]], DeploymentPlan]
    problems: Callable[[Sequence[Deployment]], list[str]]
    notes: Callable[[Counts], Mapping[str, str]] = lambda _: {}
    """Fields ``run.finished`` gains from the run's counts (e.g. a garbage-collect hint)."""


@dataclass(frozen=True)
class Sweeper:
    """Sweeps on its own (log indices, the Prometheus retention check); same rules as
    :class:`DeploymentSweeper`."""

    subsystem: str
    event: str
    plan: Callable[[], list[Step]]
    problems: Callable[[], list[str]]


def unexpected(exc: BaseException) -> str:
    """The error text of an exception nobody planned for, with where it was raised (no
    traceback text: it may quote data)."""
    frames = traceback.extract_tb(exc.__traceback__)
    text = f"unexpected error: {type(exc).__name__}: {exc}"
    if not frames:
        return text
    return f"{text} (at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name})"
