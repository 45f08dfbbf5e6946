"""astro-janitor: retention janitor for an Astronomer-style Airflow platform."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("astro-janitor")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
