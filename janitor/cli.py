"""Command line (README "Command line"): run, plan, check, --version; exit codes."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from janitor import __version__
from janitor.config import load_settings, unknown_variables
from janitor.errors import ConfigurationError, ExitCode
from janitor.events import default_format, make_logger, new_run_id
from janitor.lease import in_cluster_api_client
from janitor.preflight import check
from janitor.runner import run
from janitor.stopping import Stop


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="janitor",
        description="Retention janitor: hard-deletes expired deployments' databases, roles and "
        "registry tags, deletes old log indices, checks Prometheus retention.",
    )
    parser.add_argument("--version", action="version", version=f"janitor {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    selectors = argparse.ArgumentParser(add_help=False)
    selectors.add_argument("--only", metavar="LIST", help="databases,registry,logs,metrics")
    selectors.add_argument("--config", type=Path, metavar="FILE", help="YAML settings file")
    selectors.add_argument(
        "--max-deletions", metavar="N", help="refuse a bigger plan (0: no limit)"
    )
    selectors.add_argument("--concurrency", metavar="N", help="parallel deletions (default 8)")
    selectors.add_argument("--log-format", metavar="FORMAT", help="json or console")
    run_cmd = commands.add_parser("run", parents=[selectors], help="one janitor run")
    run_cmd.add_argument("--dry-run", action="store_true", default=None, help="read only")
    commands.add_parser("plan", parents=[selectors], help="what a run would do (= run --dry-run)")
    commands.add_parser("check", parents=[selectors], help="connectivity and permissions preflight")
    return parser


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    flags = {
        "only": args.only,
        "max_deletions": args.max_deletions,
        "concurrency": args.concurrency,
        "log_format": args.log_format,
    }
    if args.command == "plan" or getattr(args, "dry_run", None):
        flags["dry_run"] = True
    return flags


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
) -> int:
    args = _parser().parse_args(argv)
    out = stdout if stdout is not None else sys.stdout
    env = environ if environ is not None else os.environ
    for warning in unknown_variables(env):
        print(f"janitor: warning: {warning}", file=sys.stderr)
    try:
        settings = load_settings(_flags(args), env, args.config)
    except ConfigurationError as exc:
        # README "Exit codes": a configuration error is a plain line on stderr, exit 2, no events.
        print(f"janitor: invalid configuration: {exc}", file=sys.stderr)
        return ExitCode.INVALID_CONFIGURATION
    if not settings.subsystems:
        print(
            "janitor: invalid configuration: nothing to do: configure at least one of "
            "JANITOR_HOUSTON_DSN, JANITOR_ELASTICSEARCH_URL, JANITOR_PROMETHEUS_URL",
            file=sys.stderr,
        )
        return ExitCode.INVALID_CONFIGURATION
    log = make_logger(
        settings.log_format or default_format(out),
        run_id=new_run_id(),
        dry_run=settings.dry_run,
        secrets=settings.secrets(),
        stream=out,
    )
    try:
        kube = in_cluster_api_client()
    except ConfigurationError as exc:
        print(f"janitor: invalid configuration: {exc}", file=sys.stderr)
        return ExitCode.INVALID_CONFIGURATION
    if args.command == "check":
        return check(settings, log, kube=kube)
    stop = Stop()
    # SIGINT too: an operator's Ctrl-C in a one-off run deserves the same summary.
    with stop.on_signals(signal.SIGTERM, signal.SIGINT):
        return run(settings, log, kube=kube, stop=stop)
