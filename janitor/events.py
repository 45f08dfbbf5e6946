"""The event stream: one JSON object per line on stdout (README "Events").

Every line carries ``event``, ``timestamp`` (ISO 8601 UTC), ``level``, ``run_id`` and
``dry_run``. Secrets are masked by the last processor before rendering, so no caller can
leak one, whatever it puts into an error message.
"""

from __future__ import annotations

import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any, Literal, ParamSpec, Protocol, TextIO, TypeVar

from janitor.imports import without
from janitor.plan import Action, Result
from janitor.redact import Scrubber

with without("rich"):
    import structlog
    from structlog.typing import EventDict, Processor, WrappedLogger

LogFormat = Literal["json", "console"]
Log = structlog.typing.FilteringBoundLogger
Unit = Literal["deployments", "batches"]
"""What the executor counts as done: expired deployments, and the steps of their own (a
DELETE batch of log indices, the retention check)."""
T = TypeVar("T")
P = ParamSpec("P")


class Progress(Protocol):
    """Told how much of the executed plan is done (the console view's progress display)."""

    def begin(self, totals: Mapping[Unit, int]) -> None: ...

    def advance(self, unit: Unit) -> None: ...


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def run_id_of(log: Log) -> str:
    """The ``run_id`` bound to ``log`` (make_logger), "" for none. The runner asks here so
    that structlog is loaded in one place, without rich (janitor.imports)."""
    return str(structlog.get_context(log).get("run_id", ""))


def default_format(stream: TextIO) -> LogFormat:
    """README "Configuration": json when stdout is not a TTY, else console."""
    return "console" if stream.isatty() else "json"


def redactor(secrets: Iterable[str]) -> Processor:
    """Masks secrets in every string of the event (janitor.redact.Scrubber)."""
    scrubber = Scrubber(secrets)

    def scrub(value: Any) -> Any:
        if isinstance(value, str):
            return scrubber(value)
        if isinstance(value, Mapping):
            return {k: scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [scrub(v) for v in value]
        return value

    def redact(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        return {key: scrub(value) for key, value in event_dict.items()}

    return redact


def event_first(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Puts the common keys (README "Events") first, so a line reads from its event name."""
    head = {k: event_dict[k] for k in HEAD_KEYS if k in event_dict}
    return head | {k: v for k, v in event_dict.items() if k not in head}


HEAD_KEYS = ("event", "timestamp", "level", "run_id", "dry_run")


class LineWriter:
    """Writes whole lines under a lock: deployments are executed by several threads."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def msg(self, message: str) -> None:
        with self._lock:
            self._stream.write(message + "\n")
            self._stream.flush()

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def make_logger(
    log_format: LogFormat,
    *,
    run_id: str,
    dry_run: bool,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
    view: Processor | None = None,
) -> Log:
    """The event logger; ``view`` replaces the console format's line renderer (it sees each
    event after the secret scrubber, as the renderer would)."""
    out = stream if stream is not None else sys.stdout
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    logger: Log = structlog.wrap_logger(
        LineWriter(out),
        wrapper_class=structlog.make_filtering_bound_logger(0),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redactor(secrets),
            event_first,
            view if view is not None else renderer,
        ],
        context_class=dict,
        cache_logger_on_first_use=False,
    )
    return logger.bind(run_id=run_id, dry_run=dry_run)


_LEVELS = {"failed": "error", "mismatch": "warning"}


class Recorder:
    """Emits action events and counts them for run.finished: {event: {outcome: n}}; tells
    ``progress``, if any, how much of the executed plan is done."""

    def __init__(self, log: Log, progress: Progress | None = None) -> None:
        self.log = log
        self._progress = progress
        self._counts: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    def begin(self, *, deployments: int, batches: int) -> None:
        if self._progress is not None:
            self._progress.begin({"deployments": deployments, "batches": batches})

    def counted(self, unit: Unit, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``call(*args, **kwargs)``, counted as one ``unit`` done when it returns or raises
        (in its own thread: a future's done-callback may run after its waiter returned)."""
        try:
            return call(*args, **kwargs)
        finally:
            if self._progress is not None:
                self._progress.advance(unit)

    def action(self, action: Action, result: Result) -> None:
        fields: MutableMapping[str, Any] = {"target": action.target, "outcome": result.outcome}
        if action.deployment is not None:
            fields["deployment"] = action.deployment
        fields.update(action.fields)
        fields.update(result.fields)
        if result.reason is not None:
            fields["reason"] = result.reason
        if result.error is not None:
            fields["error"] = result.error
        with self._lock:
            self._counts[(action.event, result.outcome)] += 1
        level = _LEVELS.get(result.outcome, "info")
        getattr(self.log, level)(action.event, **fields)

    def counts(self) -> dict[str, dict[str, int]]:
        with self._lock:
            summary: dict[str, dict[str, int]] = {}
            for (event, outcome), n in sorted(self._counts.items()):
                summary.setdefault(event, {})[outcome] = n
            return summary

    def outcomes(self) -> set[str]:
        with self._lock:
            return {outcome for (_, outcome) in self._counts}
