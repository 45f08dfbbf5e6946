"""What each command does once its arguments are parsed: load settings, make the logger,
then `janitor run`/`plan` (janitor.runner), `janitor check` (janitor.preflight),
`janitor audit` (janitor.audit) or `backups`/`restore` (janitor.restore)."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from janitor.config import Settings, load_settings, unknown_variables
from janitor.errors import ConfigurationError, ExitCode
from janitor.events import Log, default_format, make_logger, new_run_id
from janitor.runner import run
from janitor.stopping import Stop

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from janitor.console import ConsoleView

# Set by the kubelet in every container: its absence means "not in a cluster".
IN_CLUSTER = "KUBERNETES_SERVICE_HOST"


def execute(
    command: str,
    flags: Mapping[str, Any],
    config_file: Path | None,
    *,
    environ: Mapping[str, str],
    stdout: TextIO,
    operands: Mapping[str, str | None] | None = None,
) -> int:
    """Runs ``command`` (run, plan, check, audit, backups or restore) and returns its exit
    code; ``operands``: the positional arguments and options of backups and restore."""
    for warning in unknown_variables(environ):
        print(f"janitor: warning: {warning}", file=sys.stderr)
    try:
        settings = load_settings(flags, environ, config_file)
        kube = _kubernetes_client()
    except ConfigurationError as exc:
        # README "Exit codes": a configuration error is a plain line on stderr, exit 2, no events.
        print(f"janitor: invalid configuration: {exc}", file=sys.stderr)
        return ExitCode.INVALID_CONFIGURATION
    if command in ("backups", "restore"):
        return _backup_command(command, settings, operands or {}, _logger(settings, stdout))
    if command == "audit":
        return _audit_command(settings, stdout)
    if not settings.configured:
        print(
            "janitor: invalid configuration: nothing to do: configure at least one of "
            "JANITOR_HOUSTON_DSN, JANITOR_ELASTICSEARCH_URL, JANITOR_PROMETHEUS_URL",
            file=sys.stderr,
        )
        return ExitCode.INVALID_CONFIGURATION
    log_format = settings.log_format or default_format(stdout)
    view = None
    if log_format == "console":
        # README "Console view": the same events, rendered for a person at a terminal.
        from janitor.console import console_view  # noqa: PLC0415 - rich for the console only

        view = console_view(stdout, sys.stderr)
    log = _logger(settings, stdout, view)
    if command == "check":
        from janitor.preflight import check  # noqa: PLC0415 - only `janitor check` uses it

        return check(settings, log, kube=kube)
    stop = Stop()
    # SIGINT too: an operator's Ctrl-C in a one-off run deserves the same summary.
    with stop.on_signals(signal.SIGTERM, signal.SIGINT):
        progress = view.progress if view is not None else None
        return run(settings, log, kube=kube, stop=stop, progress=progress)


def _logger(settings: Settings, stdout: TextIO, view: ConsoleView | None = None) -> Log:
    """The event logger; ``view`` renders a run's events for a person (console format)."""
    return make_logger(
        settings.log_format or default_format(stdout),
        run_id=new_run_id(),
        dry_run=settings.dry_run,
        secrets=settings.secrets(),
        stream=stdout,
        view=view,
    )


def _audit_command(settings: Settings, stdout: TextIO) -> int:
    """README "Orphans: janitor audit": what no row accounts for needs the deployments
    table, and a store to audit."""
    if not {"databases", "registry"} & set(settings.subsystems):
        print(
            "janitor: invalid configuration: janitor audit needs JANITOR_HOUSTON_DSN "
            "(the deployments table) and the databases or the registry to audit",
            file=sys.stderr,
        )
        return ExitCode.INVALID_CONFIGURATION
    from janitor.audit import command  # noqa: PLC0415 - only `janitor audit` uses it

    return command(settings, _logger(settings, stdout))


def _backup_command(
    command: str, settings: Settings, operands: Mapping[str, str | None], log: Log
) -> int:
    """README "Final backups and restore"; a usage error is exit 2 like a setting's."""
    from janitor import restore  # noqa: PLC0415 - only these two commands use it

    release = operands.get("release")
    try:
        if command == "backups":
            return restore.list_backups(settings, log, release)
        return restore.restore(
            settings,
            log,
            release or "",
            database=operands.get("database"),
            uri=operands.get("backup"),
        )
    except ConfigurationError as exc:
        print(f"janitor: invalid configuration: {exc}", file=sys.stderr)
        return ExitCode.INVALID_CONFIGURATION


def _kubernetes_client() -> ApiClient | None:
    """The pod's API client in a cluster; outside one the Kubernetes client (a heavy import)
    is not even loaded."""
    if not os.environ.get(IN_CLUSTER):
        return None
    from janitor.lease import in_cluster_api_client  # noqa: PLC0415 - only in a cluster

    return in_cluster_api_client()
