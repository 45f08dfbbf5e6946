"""Executing a plan's steps (README "Events", "Time limits"): one event per action, a stop
honoured between units of work, and whatever a step raises contained in its own actions.

Shared by the runner and by :mod:`janitor.deployments`; it knows neither the Houston
database nor any remote.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from janitor.config import Settings
from janitor.errors import ConfigurationError
from janitor.events import Recorder
from janitor.plan import (
    PLANNED,
    Action,
    DeploymentWork,
    Result,
    Step,
    failed,
    final,
    skipped,
    unexpected,
)
from janitor.stopping import Stop

GONE = frozenset({"done", "absent"})


@dataclass(frozen=True)
class Context:
    """What the executor needs beyond the plan."""

    settings: Settings
    now: datetime
    dry_run: bool
    recorder: Recorder
    workers: Executor
    stop: Stop


def settle(step: Step, context: Context, *, alone: bool = True) -> list[Result]:
    """Executes one step (unless dry run) and emits one event per action. A step that is a
    unit of work of its own (``alone``: a batch, a check) not started before a stop was
    requested is skipped with the stop's reason; a deployment's steps all run once the
    deployment has started (README "Time limits": work in flight finishes)."""
    stopped = context.stop.reason() if alone else None
    if stopped is not None and step.run is not None:
        results = [skipped(stopped) if a.deletes else a.planned for a in step.actions]
    elif context.dry_run or step.run is None:
        results = [a.planned for a in step.actions]
    else:
        try:
            results = list(step.run())
        except Exception as exc:  # noqa: BLE001 - one broken step must not stop the others
            results = [failed(unexpected(exc))] * len(step.actions)
    for action, result in zip(step.actions, results, strict=True):
        context.recorder.action(action, result)
    return results


def purge_action(work: DeploymentWork) -> Action:
    deployment = work.deployment
    fields: dict[str, Any] = {"id": deployment.id, "deleted_at": deployment.deleted_at}
    if work.adopted is not None:
        fields = {"adopted_orphan": True, "first_seen": work.adopted}
    return Action(
        "deployment.purge",
        deployment.release_name or deployment.id,
        PLANNED,
        deployment.release_name or None,
        fields,
    )


@contextmanager
def contained(event: str, target: str) -> Iterator[list[Step]]:
    """Turns an exception of the block, except ConfigurationError (exit 2, nothing
    changed), into one failed step appended to the yielded list."""
    failure: list[Step] = []
    try:
        yield failure
    except ConfigurationError:
        raise
    except Exception as exc:  # noqa: BLE001 - one broken sweeper must not stop the others
        failure.append(final(Action(event, target, failed(unexpected(exc)))))


def skip_steps(work: DeploymentWork, reason: str, context: Context) -> None:
    for step in work.steps:
        for action in step.actions:
            context.recorder.action(action, skipped(reason) if action.deletes else action.planned)


def keep_reason(results: Sequence[Result], purge_blocked: str | None) -> str | None:
    """Why the row stays although this deployment was processed (README step 3): a
    resource not confirmed gone, else why no row may go in this run; None to purge."""
    left = [r.outcome for r in results if r.outcome not in GONE and r.outcome != "planned"]
    if left:
        counted = ", ".join(f"{left.count(o)} {o}" for o in sorted(set(left)))
        return f"not all resources are gone ({counted})"
    return purge_blocked
