"""The console view (README "Console view"): what an operator at a terminal sees.

It renders the same events the JSON lines carry, after the secret scrubber: ``run.started``
as a header naming only the settings that differ from their defaults; every action event of
the run is kept and rendered at ``run.finished`` as one summary, grouped by deployment
(database, roles, tag count, row) and by subsystem (log indices by pattern with their ages,
the Prometheus verdict), with totals and the exit code, in the spirit of ``terraform plan``.
While a plan executes, deployments and batches done of total are shown on stderr when it is
a terminal. Any other event is one line, as structlog's console renderer prints it.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

import structlog
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress
from structlog.typing import EventDict, WrappedLogger

from janitor.config import Settings
from janitor.errors import ExitCode
from janitor.events import HEAD_KEYS, Unit
from janitor.naming import reaching_pattern

Event = Mapping[str, Any]

DEPLOYMENT_PARTS = {
    "database.drop": "database",
    "role.drop": "roles",
    "registry.tag.delete": "tags",
    "deployment.purge": "row",
}
PART_ORDER = ("database", "roles", "tags")
LOGS_EVENT = "logs.index.delete"
CHECK_EVENT = "metrics.retention.check"
NOUNS = {
    "database.drop": ("database", "databases"),
    "role.drop": ("role", "roles"),
    "registry.tag.delete": ("tag", "tags"),
    "deployment.purge": ("row", "rows"),
    "logs.index.delete": ("log index", "log indices"),
    "metrics.retention.check": ("retention check", "retention checks"),
}
OUTCOME_ORDER = ("planned", "done", "absent", "ok", "mismatch", "skipped", "failed")
# A line's mark is its most pressing outcome's: the first of these it holds.
MARKS = (
    ("failed", "!"),
    ("mismatch", "!"),
    ("skipped", "~"),
    ("planned", "-"),
    ("done", "-"),
    ("absent", "="),
    ("ok", " "),
)
EXIT_MEANINGS = {
    ExitCode.OK: "everything done",
    ExitCode.FAILED: "an action failed, or the run could not finish",
    ExitCode.INVALID_CONFIGURATION: "invalid configuration",
    ExitCode.RETENTION_MISMATCH: "no failures, but the Prometheus retention does not match",
    ExitCode.GUARD_REFUSED: "refused by the safety guard (--max-deletions): nothing was changed",
}
# run.finished keys the summary shows itself; any other one is printed as it is.
SHOWN = frozenset({*HEAD_KEYS, "counts", "exit_code", "duration_s"})
NAMES_SHOWN = 3


class TerminalProgress:
    """Deployments and batches done of total while a plan executes, on a terminal; the
    display is cleared when it stops, leaving the terminal to the summary."""

    def __init__(self, stream: TextIO) -> None:
        self._display = RichProgress(
            TextColumn("{task.description:<12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(file=stream),
            transient=True,
        )
        self._tasks: dict[Unit, TaskID] = {}

    def begin(self, totals: Mapping[Unit, int]) -> None:
        for unit, total in totals.items():
            if total > 0:
                self._tasks[unit] = self._display.add_task(unit, total=total)
        if self._tasks:
            self._display.start()

    def advance(self, unit: Unit) -> None:
        task = self._tasks.get(unit)
        if task is not None:
            self._display.advance(task)

    def stop(self) -> None:
        self._display.stop()


class ConsoleView:
    """The console format's renderer (the last structlog processor): returns the text of
    an event, or drops an action event, kept for the summary at ``run.finished``."""

    def __init__(self, *, colors: bool, progress: TerminalProgress | None = None) -> None:
        self.progress = progress
        self._line = structlog.dev.ConsoleRenderer(colors=colors)
        self._started: Event | None = None
        self._skipped: str | None = None
        self._actions: list[Event] = []
        self._lock = threading.Lock()

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        event = event_dict.get("event")
        if event == "run.started":
            self._started = event_dict
            return header(event_dict)
        if event == "run.finished":
            if self.progress is not None:
                self.progress.stop()
            with self._lock:
                actions = list(self._actions)
            return summary(self._started or {}, actions, event_dict, skipped=self._skipped)
        if self._started is not None and "outcome" in event_dict:
            with self._lock:
                self._actions.append(event_dict)
            raise structlog.DropEvent
        if event == "run.skipped":
            self._skipped = str(event_dict.get("reason"))
            return f"Skipped: {self._skipped}"
        return str(self._line(logger, name, event_dict))


def console_view(stdout: TextIO, stderr: TextIO) -> ConsoleView:
    """The view for ``stdout``, with a progress display when ``stderr`` is a terminal."""
    progress = TerminalProgress(stderr) if stderr.isatty() else None
    return ConsoleView(colors=stdout.isatty(), progress=progress)


# --- run.started -----------------------------------------------------------------------------


def header(started: Event) -> str:
    """Version, plan or run, the subsystems, and the settings not at their defaults."""
    subsystems = ", ".join(started.get("subsystems") or []) or "nothing"
    kind = "plan (dry run: nothing is changed)" if started.get("dry_run") else "run"
    lines = [f"janitor {started.get('version')}: {kind} of {subsystems}"]
    config: Mapping[str, Any] = started.get("config") or {}
    defaults = Settings().summary()
    changed = {k: v for k, v in config.items() if k not in defaults or defaults[k] != v}
    if not changed:
        lines.append("Every setting at its default.")
        return "\n".join(lines)
    lines.append("Settings that differ from the defaults:")
    width = max(len(k) for k in changed)
    lines += [f"  {k:<{width}}  {_value(v)}" for k, v in changed.items()]
    return "\n".join(lines)


def _value(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, bool):
        return str(value).lower()
    return "unset" if value is None else str(value)


# --- run.finished ----------------------------------------------------------------------------


def summary(
    started: Event, actions: Sequence[Event], finished: Event, *, skipped: str | None
) -> str:
    """The whole summary: sections, totals, exit code; a stable text (sorted, no times)."""
    subsystems = set(started.get("subsystems") or [])
    # Whether an empty section means "nothing to do" rather than "never got that far".
    complete = skipped is None and "error" not in finished
    config: Mapping[str, Any] = started.get("config") or {}
    by_section: dict[str, list[Event]] = defaultdict(list)
    for action in actions:
        by_section[_section(action)].append(action)
    done = "to delete" if finished.get("dry_run") else "deleted"
    lines = ["", f"Marks: - {done}, = already gone, ~ skipped, ! failed or mismatch"]
    if by_section["deployments"] or (complete and subsystems & {"databases", "registry"}):
        lines += ["", *_deployments(by_section["deployments"])]
    if by_section["logs"] or (complete and "logs" in subsystems):
        patterns = list(config.get("log_index_patterns") or [])
        lines += ["", *_logs(by_section["logs"], patterns, config.get("log_retention_days"))]
    if by_section["metrics"]:
        lines += ["", *_metrics(by_section["metrics"])]
    if by_section["other"]:
        lines += ["", "Not tied to one deployment"]
        for action in sorted(by_section["other"], key=_target):
            lines.append(_line(2, f"{action['event']} {_target(action)}", [action]))
            lines += _notes(6, [action])
    lines += ["", *_totals(finished.get("counts") or {}), "", *_ending(finished)]
    return "\n".join(lines)


def _section(action: Event) -> str:
    event = action.get("event")
    if action.get("deployment") is not None or event == "deployment.purge":
        return "deployments"
    if event == LOGS_EVENT:
        return "logs"
    if event == CHECK_EVENT:
        return "metrics"
    return "other"


def _target(action: Event) -> str:
    return str(action.get("target"))


def _outcomes(actions: Iterable[Event]) -> list[str]:
    return [str(a.get("outcome")) for a in actions]


def _mark(outcomes: Iterable[str]) -> str:
    held = set(outcomes)
    return next((mark for outcome, mark in MARKS if outcome in held), "?")


def _ordered(outcomes: Iterable[str]) -> list[str]:
    known = [o for o in OUTCOME_ORDER if o in outcomes]
    return known + sorted(set(outcomes) - set(OUTCOME_ORDER))


def _tally(outcomes: Sequence[str]) -> str:
    """``done`` when all are, else ``2 done, 1 failed``."""
    counted = Counter(outcomes)
    if len(counted) == 1:
        return outcomes[0]
    return ", ".join(f"{counted[o]} {o}" for o in _ordered(counted))


def _line(indent: int, subject: str, actions: Sequence[Event], detail: str = "") -> str:
    outcomes = _outcomes(actions)
    return f"{' ' * indent}{_mark(outcomes)} {subject}: {_tally(outcomes)}{detail}"


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    more = len(names) - NAMES_SHOWN
    return f"{shown} and {more} more" if more > 0 else shown


def _why(action: Event) -> str | None:
    why = action.get("error") or action.get("reason")
    return None if why is None else str(why)


def _notes(indent: int, actions: Sequence[Event]) -> list[str]:
    """The reason or error of each action that has one; the same text once, with the
    names it applies to when the line above holds several."""
    said: dict[tuple[str, str], list[str]] = defaultdict(list)
    for action in sorted(actions, key=_target):
        why = _why(action)
        if why is not None:
            said[(_mark([str(action.get("outcome"))]), why)].append(_target(action))
    named = len(actions) > 1
    return [
        f"{' ' * indent}{mark} {f'{_names(names)}: ' if named else ''}{why}"
        for (mark, why), names in said.items()
    ]


def _deployments(actions: Sequence[Event]) -> list[str]:
    grouped: dict[str, list[Event]] = defaultdict(list)
    for action in actions:
        grouped[str(action.get("deployment") or _target(action))].append(action)
    if not grouped:
        return ["Expired deployments: none"]
    lines = [f"Expired deployments: {len(grouped)}"]
    for name in sorted(grouped):
        lines += _deployment(name, grouped[name])
    return lines


def _deployment(name: str, actions: Sequence[Event]) -> list[str]:
    parts: dict[str, list[Event]] = defaultdict(list)
    for action in actions:
        event = str(action.get("event"))
        parts[DEPLOYMENT_PARTS.get(event, event)].append(action)
    rows = parts.pop("row", [])
    lines = [f"  {_mark(_outcomes(rows or actions))} {name}"]
    labels = [p for p in PART_ORDER if p in parts] + sorted(set(parts) - set(PART_ORDER))
    width = max([len(label) for label in labels] + [len("row")])
    for label in labels:
        items = sorted(parts[label], key=_target)
        subject = _tags(items) if label == "tags" else ", ".join(_target(a) for a in items)
        lines.append(_line(6, f"{label:<{width}}  {subject}", items))
        lines += _notes(10, items)
    for row in rows:
        why = _why(row)
        said = f"{row.get('outcome')}: {why}" if why else str(row.get("outcome"))
        lines.append(f"      {_mark(_outcomes([row]))} {'row':<{width}}  {said}")
    return lines


def _tags(items: Sequence[Event]) -> str:
    """``3 in repo/airflow``; a repository reported as a whole (unknown, unreadable) by name."""
    repositories = sorted({_target(a).rpartition(":")[0] or _target(a) for a in items})
    tags = [a for a in items if ":" in _target(a)]
    return f"{len(tags)} in {', '.join(repositories)}" if tags else ", ".join(repositories)


def _logs(actions: Sequence[Event], patterns: Sequence[str], days: object) -> list[str]:
    grouped: dict[str, list[Event]] = {p: [] for p in patterns}
    for action in actions:
        reached = reaching_pattern(_target(action), patterns) or _target(action)
        grouped.setdefault(reached, []).append(action)
    lines = [f"Log indices older than {days} days"]
    width = max([len(key) for key in grouped] + [1])
    for key in [*patterns, *sorted(set(grouped) - set(patterns))]:
        items = grouped[key]
        if not items:
            lines.append(f"    {key:<{width}}  none past the window")
            continue
        lines.append(_line(2, f"{key:<{width}}  {_ages(items)}", items))
        lines += _notes(6, items)
    return lines


def _ages(items: Sequence[Event]) -> str:
    """``3 indices, 16 to 30 days old`` (ages are whole days, README "Events")."""
    count = f"{len(items)} {'index' if len(items) == 1 else 'indices'}"
    ages = sorted(int(a["age_days"]) for a in items if isinstance(a.get("age_days"), int))
    if not ages:
        return count
    span = f"{ages[0]}" if ages[0] == ages[-1] else f"{ages[0]} to {ages[-1]}"
    return f"{count}, {span} days old"


def _metrics(actions: Sequence[Event]) -> list[str]:
    lines = ["Prometheus retention"]
    for action in sorted(actions, key=_target):
        lines.append(_line(2, _target(action), [action], _verdict(action)))
        lines += _notes(6, [action])
    return lines


def _verdict(action: Event) -> str:
    if "expected" not in action:
        return ""
    actual = action.get("actual") or "no time limit"
    size = f", size limit {action['size_limit']}" if action.get("size_limit") else ""
    return f" (expected {action['expected']}, actual {actual}{size})"


def _totals(counts: Mapping[str, Mapping[str, int]]) -> list[str]:
    by_outcome: dict[str, list[str]] = defaultdict(list)
    known = [e for e in NOUNS if e in counts]
    for event in known + sorted(set(counts) - set(NOUNS)):
        one, many = NOUNS.get(event, (event, event))
        for outcome, n in counts[event].items():
            by_outcome[outcome].append(f"{n} {one if n == 1 else many}")
    if not by_outcome:
        return ["Totals: nothing to do"]
    width = max(len(o) for o in by_outcome)
    return ["Totals"] + [
        f"  {o:<{width}}  {', '.join(by_outcome[o])}" for o in _ordered(by_outcome)
    ]


def _ending(finished: Event) -> list[str]:
    code = finished.get("exit_code")
    meaning = next((text for known, text in EXIT_MEANINGS.items() if known == code), "")
    lines = [f"Exit code {code}: {meaning}" if meaning else f"Exit code {code}"]
    if finished.get("dry_run"):
        lines.append("This was a plan: nothing was changed.")
    lines += [f"  {key}: {_value(value)}" for key, value in finished.items() if key not in SHOWN]
    return lines
