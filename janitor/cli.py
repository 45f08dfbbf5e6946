"""Command line (README "Command line"): run, plan, check, audit, backups, restore,
--version.

Only argument parsing lives here: `janitor --version` and `--help` import nothing else, and
a command imports what it uses (janitor.commands).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from janitor import __version__


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
    adopting = argparse.ArgumentParser(add_help=False)
    adopting.add_argument(
        "--adopt-orphans",
        action="store_true",
        default=None,
        help="also sweep orphans found for JANITOR_ORPHAN_GRACE_DAYS (see README)",
    )
    adopting.add_argument(
        "--shard",
        metavar="I/N",
        help='sweep only shard I of N of the deployments (README "Sharding")',
    )
    run_cmd = commands.add_parser("run", parents=[selectors, adopting], help="one janitor run")
    run_cmd.add_argument("--dry-run", action="store_true", default=None, help="read only")
    commands.add_parser(
        "plan", parents=[selectors, adopting], help="what a run would do (= run --dry-run)"
    )
    commands.add_parser("check", parents=[selectors], help="connectivity and permissions preflight")
    commands.add_parser(
        "audit",
        parents=[_settings_only()],
        help="databases, roles and repositories no deployment row accounts for",
    )
    _backup_commands(commands)
    return parser


def _settings_only() -> argparse.ArgumentParser:
    """The options of a command that takes no selectors: where settings come from and how
    events look (audit, backups, restore)."""
    plain = argparse.ArgumentParser(add_help=False)
    plain.add_argument("--config", type=Path, metavar="FILE", help="YAML settings file")
    plain.add_argument("--log-format", metavar="FORMAT", help="json or console")
    return plain


def _backup_commands(commands: Any) -> None:
    """README "Final backups and restore": `backups` and `restore` (JANITOR_BACKUP_URL)."""
    store = _settings_only()
    listing = commands.add_parser("backups", parents=[store], help="list final backups")
    listing.add_argument("release", nargs="?", metavar="RELEASE", help="only this deployment's")
    restore = commands.add_parser(
        "restore", parents=[store], help="restore a deployment database from its final backup"
    )
    restore.add_argument("release", metavar="RELEASE")
    restore.add_argument(
        "--as", dest="database", metavar="DATABASE", help="default: the original name"
    )
    restore.add_argument("--backup", metavar="URI", help="default: the newest backup")


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    names = ("only", "max_deletions", "concurrency", "log_format", "adopt_orphans", "shard")
    flags = {name: getattr(args, name, None) for name in names}
    if args.command == "plan" or getattr(args, "dry_run", None):
        flags["dry_run"] = True
    return flags


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
) -> int:
    """Runs the command ``argv`` names and returns its exit code (README "Exit codes")."""
    args = _parser().parse_args(argv)
    from janitor import commands  # noqa: PLC0415 - --version and --help need none of it

    return commands.execute(
        args.command,
        _flags(args),
        args.config,
        environ=environ if environ is not None else os.environ,
        stdout=stdout if stdout is not None else sys.stdout,
        operands={k: getattr(args, k, None) for k in ("release", "database", "backup")},
    )
