"""One ``requests`` session per remote: pooled connections, timeouts, retries with backoff.

Retries cover connection errors and 429/5xx answers, honouring ``Retry-After`` (urllib3
does the parsing and the waiting). DELETE is retried too: every delete the janitor sends is
idempotent and a repeat that finds the thing gone is reported as ``absent``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class HttpOptions:
    """How the janitor talks to one remote. Defaults suit a server across a cluster network."""

    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    retries: int = 4
    backoff_factor_s: float = 0.5
    backoff_max_s: float = 30.0
    pool_size: int = 8
    ca_bundle: Path | None = None

    @property
    def timeout(self) -> tuple[float, float]:
        return (self.connect_timeout_s, self.read_timeout_s)


class TimeoutSession(requests.Session):
    """A session whose requests get the configured timeout unless one is given."""

    def __init__(self, timeout: tuple[float, float]) -> None:
        super().__init__()
        self._timeout = timeout

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self._timeout)
        # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override session.verify
        # (psf/requests#3829): pass the configured CA bundle explicitly on every request.
        kwargs.setdefault("verify", self.verify)
        return super().request(method, url, *args, **kwargs)


def make_session(options: HttpOptions = HttpOptions()) -> requests.Session:
    retry = Retry(
        total=options.retries,
        connect=options.retries,
        read=options.retries,
        status=options.retries,
        backoff_factor=options.backoff_factor_s,
        backoff_max=options.backoff_max_s,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=frozenset({"GET", "HEAD", "DELETE", "PUT", "POST"}),
        respect_retry_after_header=True,
        # The caller reads the last answer (e.g. a 503 body) and reports it as a failure.
        raise_on_status=False,
    )
    adapter = HTTPAdapter(
        max_retries=retry, pool_connections=options.pool_size, pool_maxsize=options.pool_size
    )
    session = TimeoutSession(options.timeout)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    if options.ca_bundle is not None:
        session.verify = str(options.ca_bundle)
    return session
