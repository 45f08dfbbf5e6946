"""astro-janitor: retention janitor for an Astronomer-style Airflow platform."""

# Also the package's version (pyproject.toml reads it): importlib.metadata would cost more
# at start-up than `janitor --version` itself (README "Benchmarks").
__version__ = "0.1.0"
