"""One ``requests`` session per remote (registry, Elasticsearch, Prometheus): pooled
connections, timeouts, bounded retries, and one wording for requests that got no answer.

Retries cover connection errors and 429/5xx answers, honouring ``Retry-After`` within the
retry budget. DELETE is retried too: every delete the janitor sends is idempotent and a
repeat that finds the thing gone is reported as ``absent``.

Waits are bounded (README "Time limits"): one wait between attempts is
at most ``backoff_max_s``, and all the waits of one request together at most
``wait_budget_s``. urllib3 alone obeys a ``Retry-After`` of up to 6 hours on every retry; a
server asking for more than the budget has left ends the retries at once, and the caller
reports that answer (e.g. the 429) as the action's failure.
"""

from __future__ import annotations

import http.client
import re
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit

import requests
from requests import PreparedRequest
from requests.adapters import HTTPAdapter
from requests.utils import get_auth_from_url, get_netrc_auth
from urllib3 import BaseHTTPResponse
from urllib3.connectionpool import ConnectionPool
from urllib3.exceptions import InvalidHeader, MaxRetryError, ResponseError
from urllib3.util.retry import Retry

if TYPE_CHECKING:
    from requests.adapters import _HostParams, _PoolKwargs
    from requests.sessions import _Settings

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
DEFAULT_PORTS = {"http": 80, "https": 443}
# What OpenSSL reports when a server answers the TLS ClientHello in plain text: 1.1 and 3.0
# "wrong version number", 3.2+ "record layer failure", older "unknown protocol", and a
# plain-text answer read as the length of a TLS record: "packet length too long".
_PLAIN_TEXT_REASONS = frozenset(
    {"WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE", "UNKNOWN_PROTOCOL", "PACKET_LENGTH_TOO_LONG"}
)
# X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH (openssl x509_vfy.h): the
# certificate is trusted but names another host, which no CA bundle fixes.
_NAME_MISMATCH_CODES = frozenset({62, 64})
# What Go's net/http (the registry, Prometheus) and nginx answer to plain HTTP on a TLS port.
_TLS_PORT_ANSWERS = (
    "Client sent an HTTP request to an HTTPS server",
    "The plain HTTP request was sent to HTTPS port",
)
# urllib3 and requests wrap an error two to four times; the walk stops well past that, so a
# wrapper that (directly or not) holds itself cannot hang it.
_MAX_WRAPPING = 8
_MAX_PATH_SHOWN = 80
_POOL_PREFIX = re.compile(r"HTTPS?Connection(?:Pool)?\([^)]*\): ")


@dataclass(frozen=True)
class HttpOptions:
    """How the janitor talks to one remote. Defaults suit a server across a cluster network.

    A request makes at most ``1 + retries`` attempts, each within the timeouts, and waits
    between them at most ``backoff_max_s`` at a time and ``wait_budget_s`` in all.
    """

    connect_timeout_s: float = 5.0
    read_timeout_s: float = 30.0
    retries: int = 4
    backoff_factor_s: float = 0.5
    backoff_max_s: float = 30.0
    wait_budget_s: float = 60.0
    pool_size: int = 8
    ca_bundle: Path | None = None

    @property
    def timeout(self) -> tuple[float, float]:
        return (self.connect_timeout_s, self.read_timeout_s)


class BudgetedRetry(Retry):
    """urllib3's Retry whose waits stay within ``backoff_max`` each and ``wait_budget_s``
    over one request. A wait past either (a long ``Retry-After``) is refused, not shortened:
    retrying before the time the server named would only be refused again."""

    def __init__(self, *args: Any, wait_budget_s: float, waited_s: float = 0.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.wait_budget_s = wait_budget_s
        self.waited_s = waited_s

    def new(self, **kw: Any) -> Self:
        kw.setdefault("wait_budget_s", self.wait_budget_s)
        kw.setdefault("waited_s", self.waited_s)
        return super().new(**kw)

    def increment(
        self,
        method: str | None = None,
        url: str | None = None,
        response: BaseHTTPResponse | None = None,
        error: Exception | None = None,
        _pool: ConnectionPool | None = None,
        _stacktrace: TracebackType | None = None,
    ) -> Self:
        retry = super().increment(method, url, response, error, _pool, _stacktrace)
        wait = retry.wait_s(response)
        allowed = min(self.backoff_max, self.wait_budget_s - self.waited_s)
        if wait > allowed:
            # With raise_on_status=False urllib3 hands the caller this last answer; after an
            # error the caller gets the error.
            reason = error or ResponseError(
                f"asked to wait {wait:g} s before retrying, more than the {allowed:g} s left "
                "of the retry budget"
            )
            raise MaxRetryError(_pool, url, reason) from reason  # type: ignore[arg-type]
        return retry.new(waited_s=self.waited_s + wait)

    def get_retry_after(self, response: BaseHTTPResponse) -> float | None:
        # urllib3 raises InvalidHeader for a value it cannot read, ending the request
        # unretried: a garbled header is ignored like a missing one instead.
        try:
            return super().get_retry_after(response)
        except InvalidHeader:
            return None

    def wait_s(self, response: BaseHTTPResponse | None) -> float:
        """The wait before the next attempt: the server's ``Retry-After``, else the backoff
        (urllib3's own order)."""
        asked = None
        if response is not None and self.respect_retry_after_header:
            asked = self.get_retry_after(response)
        return asked or self.get_backoff_time()

    def sleep(self, response: BaseHTTPResponse | None = None) -> None:
        # The wait increment() checked against the budget, never urllib3's own choice.
        wait = self.wait_s(response)
        if wait > 0:
            time.sleep(wait)


def _no_auth(request: PreparedRequest) -> PreparedRequest:
    return request


class TimeoutSession(requests.Session):
    """A session whose requests get the configured timeout unless one is given.

    What requests reads from the environment for every request (proxy variables,
    ``REQUESTS_CA_BUNDLE``, ``~/.netrc``: a dozen ``stat`` calls and environment scans, about
    a third of the janitor's CPU per registry request) is read once per origin and kept for
    the session's life, a run: the answers are the same, the environment does not change
    under a run (README "Benchmarks").
    """

    def __init__(self, timeout: tuple[float, float]) -> None:
        super().__init__()
        self._timeout = timeout
        self._environment: dict[tuple[str, Any, Any, str], _Settings] = {}
        self._netrc: dict[str, Any] = {}
        self._lock = threading.Lock()

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self._timeout)
        # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override session.verify
        # (psf/requests#3829): pass the configured CA bundle explicitly on every request.
        kwargs.setdefault("verify", self.verify)
        return super().request(method, url, *args, **kwargs)

    def merge_environment_settings(
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> _Settings:
        if proxies or not isinstance(url, str):
            return super().merge_environment_settings(url, proxies, stream, verify, cert)
        key = (origin(url), stream, verify, str(cert))
        with self._lock:
            merged = self._environment.get(key)
        if merged is None:
            merged = super().merge_environment_settings(url, proxies, stream, verify, cert)
            with self._lock:
                self._environment[key] = merged
        # The caller may change what it gets: a copy of the kept settings.
        copy = merged.copy()
        copy["proxies"] = dict(merged["proxies"] or {})
        return copy

    def prepare_request(self, request: requests.Request) -> PreparedRequest:
        if self.trust_env and not request.auth and not self.auth and request.url:
            where = origin(str(request.url))
            with self._lock:
                known = where in self._netrc
                auth = self._netrc.get(where)
            if not known:
                auth = get_netrc_auth(str(request.url))
                with self._lock:
                    self._netrc[where] = auth
            # Else, as requests does, the URL's user info; with neither, an auth that adds
            # nothing keeps requests from looking the file up again.
            in_url = get_auth_from_url(str(request.url))
            request.auth = auth or (in_url if any(in_url) else _no_auth)
        return super().prepare_request(request)


class _PoolKeyAdapter(HTTPAdapter):
    """An adapter that works out each origin's pool key once: requests checks whether a
    CA bundle path is a directory (``os.path.isdir``) on every request."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._keys: dict[tuple[str, Any, str], tuple[_HostParams, _PoolKwargs]] = {}
        self._keys_lock = threading.Lock()

    def build_connection_pool_key_attributes(
        self, request: PreparedRequest, verify: Any, cert: Any = None
    ) -> tuple[_HostParams, _PoolKwargs]:
        key = (origin(str(request.url)), verify, str(cert))
        with self._keys_lock:
            found = self._keys.get(key)
        if found is None:
            found = super().build_connection_pool_key_attributes(request, verify, cert)
            with self._keys_lock:
                self._keys[key] = found
        host, pool = found
        return host.copy(), pool.copy()


def make_retry(options: HttpOptions) -> BudgetedRetry:
    return BudgetedRetry(
        total=options.retries,
        connect=options.retries,
        read=options.retries,
        status=options.retries,
        backoff_factor=options.backoff_factor_s,
        backoff_max=options.backoff_max_s,
        wait_budget_s=options.wait_budget_s,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=frozenset({"GET", "HEAD", "DELETE", "PUT", "POST"}),
        respect_retry_after_header=True,
        # The caller reads the last answer (e.g. a 503 body) and reports it as a failure.
        raise_on_status=False,
    )


def make_session(options: HttpOptions = HttpOptions()) -> requests.Session:
    adapter = _PoolKeyAdapter(
        max_retries=make_retry(options),
        pool_connections=options.pool_size,
        pool_maxsize=options.pool_size,
    )
    session = TimeoutSession(options.timeout)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    if options.ca_bundle is not None:
        session.verify = str(options.ca_bundle)
    return session


def origin(url: str) -> str:
    """``scheme://host:port`` of ``url``, the port spelled out and no user info: what two
    URLs must share to be the same server (RFC 6454), and what messages may show."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:  # a port that is not a number: shown as given, never equal to one
        port = None
        host = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme.lower()}://{host}" + (f":{port}" if port else "")


def describe_transport_error(exc: BaseException, setting: str) -> str:
    """A request that got no HTTP answer, for an event's ``error`` or ``janitor check``: the
    server's origin, the innermost cause, and the setting that fixes it when one does
    (``setting`` e.g. ``JANITOR_REGISTRY``). Never user info nor the query string."""
    chain = _wrapped(exc)
    request = next(
        (e.request for e in chain if isinstance(e, requests.RequestException) and e.request),
        None,
    )
    url = str(request.url or "") if request is not None else ""
    where = origin(url) if url else "the server"
    innermost = chain[-1]
    cause = _POOL_PREFIX.sub("", str(innermost), count=1) or type(innermost).__name__
    if isinstance(innermost, ssl.SSLError) and innermost.reason in _PLAIN_TEXT_REASONS:
        return f"the server at {where} speaks plain HTTP, not TLS: use http:// in {setting}_URL"
    if isinstance(innermost, ssl.SSLCertVerificationError):
        if innermost.verify_code in _NAME_MISMATCH_CODES:
            fix = f"put a host name its certificate names in {setting}_URL"
        else:
            fix = f"set {setting}_CA_BUNDLE to the CA that signed its certificate"
        return f"TLS verification of {where} failed ({cause}): {fix}"
    if isinstance(innermost, http.client.IncompleteRead):
        # The server answered and the connection closed before the body announced by
        # Content-Length (or the last chunk) arrived: not a server out of reach.
        return f"the answer of {where} was cut short: {cause}"
    if request is None:
        return f"cannot reach {where}: {cause}"
    path = urlsplit(url).path
    # An Elasticsearch DELETE names up to 4 KB of indices: the event needs only the start.
    if len(path) > _MAX_PATH_SHOWN:
        path = path[: _MAX_PATH_SHOWN - 1] + "…"
    return f"cannot reach {where} ({request.method} {path}): {cause}"


def tls_port_hint(response: requests.Response, setting: str) -> str | None:
    """For the 400 a TLS server answers to plain HTTP: the sentence saying to use https://."""
    if response.status_code != 400 or not any(a in response.text for a in _TLS_PORT_ANSWERS):
        return None
    where = origin(response.url)
    return f"the server at {where} speaks HTTPS: use https:// in {setting}_URL"


def retry_after_note(headers: Mapping[str, str]) -> str:
    """`` (Retry-After: 3600)`` when the answer a request failed with asked to be retried
    later: the operator sees how long the server wanted, beyond the retry budget or not."""
    value = " ".join(headers.get("Retry-After", "").split())[:64]
    return f" (Retry-After: {value})" if value else ""


def _wrapped(exc: BaseException) -> list[BaseException]:
    """``exc`` and the errors it wraps, outermost first: urllib3's ``reason``, an exception
    among ``args`` (requests, urllib3), elastic-transport's ``errors``, and the context an
    error re-raised ``from None`` hides (elastic-transport's node does that to the requests
    error). A ``__cause__`` is not followed: urllib3's own message says more than the
    socket error beneath it."""
    chain = [exc]
    while len(chain) < _MAX_WRAPPING:
        current = chain[-1]
        from_none = current.__suppress_context__ and current.__cause__ is None
        hidden = current.__context__ if from_none else None
        candidates = (
            getattr(current, "reason", None),
            *current.args,
            *getattr(current, "errors", ()),
            hidden,
        )
        inner = next((c for c in candidates if isinstance(c, BaseException)), None)
        if inner is None or any(inner is seen for seen in chain):
            break
        chain.append(inner)
    return chain
