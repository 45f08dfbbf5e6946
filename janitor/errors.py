"""Errors that decide a run's exit code before any action runs."""


class ConfigurationError(Exception):
    """Invalid configuration or an endpoint that is not what it claims to be (SPEC.md exit 2).

    The message names the setting (or endpoint) and the bad value, with secrets masked;
    nothing has been changed when it is raised.
    """
