"""What decides a run's exit code: the codes themselves, and the error that means exit 2."""

from enum import IntEnum


class ExitCode(IntEnum):
    """The exit codes of every command (README "Exit codes")."""

    OK = 0
    """Everything done, nothing to do, or the run lock is held by another run."""
    FAILED = 1
    """At least one action failed (or the run was stopped); everything else was attempted."""
    INVALID_CONFIGURATION = 2
    """Invalid configuration or usage; nothing was changed."""
    RETENTION_MISMATCH = 3
    """No failures, but Prometheus' retention differs from the configured one."""
    GUARD_REFUSED = 4
    """The plan exceeded ``--max-deletions``; nothing was changed."""


class ConfigurationError(Exception):
    """Invalid configuration or an endpoint that is not what it claims to be (exit 2).

    The message names the setting (or endpoint) and the bad value, with secrets masked;
    nothing has been changed when it is raised.
    """
