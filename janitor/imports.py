"""Loading libraries without the optional extras they reach for (README "Benchmarks":
start-up): elastic-transport imports aiohttp for an asynchronous node and structlog imports
rich for pretty tracebacks, neither of which the janitor uses, and each costs more than a
logs-only run's work.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def without(*modules: str) -> Iterator[None]:
    """Inside the block, importing any of ``modules`` raises ImportError, as if it were not
    installed (the libraries above then leave their extra out); afterwards each imports as
    usual. A module already loaded is left alone."""
    hidden = [name for name in modules if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in hidden:
            if sys.modules.get(name, False) is None:
                del sys.modules[name]
