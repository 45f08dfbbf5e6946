"""The Elasticsearch connection: the official client 8.x, the shared retries, and preflights.

The client speaks REST API compatibility version 8 (``compatible-with=8`` media types), which
Elasticsearch 8 serves natively and Elasticsearch 9 serves through REST compatibility; 7.x
and 10.x refuse it. Retries with backoff on 429/5xx and connection errors come from the
shared HTTP adapter (:mod:`janitor.clients.http`): elastic-transport's own retry loop would
resend at once, with no pause, to the single node the janitor talks to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from requests.adapters import HTTPAdapter

from janitor.clients.http import (
    HttpOptions,
    describe_transport_error,
    make_retry,
    retry_after_note,
)
from janitor.errors import ConfigurationError
from janitor.imports import without
from janitor.redact import without_credentials

# The sweeper takes the library's names from here: this module loads it, without aiohttp.
with without("aiohttp"):
    from elastic_transport import ConnectionError as NoAnswerError
    from elastic_transport import (
        ConnectionTimeout,
        NodeConfig,
        RequestsHttpNode,
        TlsError,
        TransportError,
    )
    from elasticsearch import (
        ApiError,
        AuthenticationException,
        AuthorizationException,
        BadRequestError,
        Elasticsearch,
        NotFoundError,
        UnsupportedProductError,
    )

__all__ = [
    "ApiError",
    "BadRequestError",
    "Elasticsearch",
    "NotFoundError",
    "TransportError",
    "check_elasticsearch",
    "connect_elasticsearch",
    "describe",
    "verify_elasticsearch",
]

SUPPORTED_MAJORS = (8, 9)
# A DELETE of ~100 indices is one cluster-state update; Elasticsearch's own master and ack
# timeouts are 30 s each, so the client waits longer than that before calling it a timeout.
REQUEST_TIMEOUT_S = 90.0
CLUSTER_PRIVILEGES = ("monitor",)
INDEX_PRIVILEGES = ("view_index_metadata", "delete_index")


def _node_class(options: HttpOptions) -> type[RequestsHttpNode]:
    """elastic-transport's requests node, retrying as the shared session does."""

    class SharedRetryNode(RequestsHttpNode):
        def __init__(self, config: NodeConfig) -> None:
            super().__init__(config)
            # The client's default (urllib3) node ignores the environment; with requests,
            # REQUESTS_CA_BUNDLE would replace JANITOR_ELASTICSEARCH_CA_BUNDLE.
            self.session.trust_env = False
            for adapter in self.session.adapters.values():
                cast(HTTPAdapter, adapter).max_retries = make_retry(options)

    return SharedRetryNode


def connect_elasticsearch(
    url: str,
    *,
    username: str | None,
    password: str | None,
    api_key: str | None,
    ca_bundle: Path | None,
    retries: int = 4,
) -> Elasticsearch:
    """A client for ``url``; sends nothing until first used (see :func:`verify_elasticsearch`).

    ``api_key`` is the encoded form Kibana shows (base64 of ``id:key``). User info in the
    URL is basic auth (config.Settings makes sure it is the only credential given).
    """
    parts = urlsplit(url)
    if username is None and parts.username:
        username, password = parts.username, parts.password
    auth: dict[str, Any] = {}
    if api_key:
        auth["api_key"] = api_key
    elif username is not None:
        auth["basic_auth"] = (username, password or "")
    if ca_bundle is not None:
        auth["ca_certs"] = str(ca_bundle)
    options = HttpOptions(retries=retries, read_timeout_s=REQUEST_TIMEOUT_S)
    try:
        return Elasticsearch(
            without_credentials(url),
            node_class=_node_class(options),
            request_timeout=REQUEST_TIMEOUT_S,
            # Retries happen once, in the shared adapter, with backoff and Retry-After.
            max_retries=0,
            retry_on_timeout=False,
            **auth,
        )
    except ValueError as error:
        shown = without_credentials(url)
        raise ConfigurationError(f"JANITOR_ELASTICSEARCH_URL={shown}: {error}") from None


def verify_elasticsearch(es: Elasticsearch, url: str) -> str:
    """The server's version, once it proved to be a supported Elasticsearch (``GET /``).

    Raises ConfigurationError (README "Exit codes": 2, nothing deleted) for a server that is not
    Elasticsearch (no ``X-Elastic-Product`` header: OpenSearch and other forks), one that
    refuses the client's ``compatible-with=8`` headers (7.x, 10.x), a version outside 8.x and
    9.x, rejected credentials, a certificate the CA bundle does not vouch for, and an https
    URL for a server speaking plain HTTP. Connection errors and 5xx propagate as they are: an
    unreachable server is a failed run, not a bad configuration.
    """
    where = f"JANITOR_ELASTICSEARCH_URL={without_credentials(url)}"
    try:
        info = es.info().body
    except UnsupportedProductError:
        raise ConfigurationError(
            f"{where}: the server is not Elasticsearch (its answers lack the header "
            "'X-Elastic-Product: Elasticsearch'); OpenSearch and other forks are not supported"
        ) from None
    except AuthenticationException:
        raise ConfigurationError(
            f"{where}: the server rejected the credentials (HTTP 401); check "
            "JANITOR_ELASTICSEARCH_USERNAME/_PASSWORD or JANITOR_ELASTICSEARCH_API_KEY"
        ) from None
    except AuthorizationException:
        raise ConfigurationError(
            f"{where}: the user may not read the cluster info (HTTP 403); "
            "grant the cluster privilege 'monitor'"
        ) from None
    except TlsError as error:
        raise ConfigurationError(f"{where}: {describe(error)}") from None
    except BadRequestError as error:
        raise ConfigurationError(
            f"{where}: the server refused an Elasticsearch 8 client's request "
            f"({describe(error)}); supported are Elasticsearch 8.x and 9.x"
        ) from None
    number = str(info.get("version", {}).get("number", "unknown"))
    major = number.split(".", 1)[0]
    if not major.isdigit() or int(major) not in SUPPORTED_MAJORS:
        raise ConfigurationError(
            f"{where}: Elasticsearch {number} is not supported; supported are 8.x and 9.x"
        )
    return number


def check_elasticsearch(es: Elasticsearch, patterns: Sequence[str]) -> list[str]:
    """What keeps the janitor from sweeping ``patterns``, as sentences; empty when all is well.

    With security enabled, asks ``_security/user/_has_privileges`` for the cluster privilege
    ``monitor`` and ``view_index_metadata`` + ``delete_index`` on every pattern (privileges on
    a data stream's name cover its backing indices). Security is looked up first in
    ``GET /_xpack``: without it the privileges API answers 500, which would be retried.
    """
    try:
        features = es.xpack.info(categories="features", filter_path="features.security").body
    except (ApiError, TransportError) as error:
        return [f"cannot read the cluster's features (GET /_xpack): {describe(error)}"]
    security = features.get("features", {}).get("security", {})
    if not security.get("enabled", False):
        return []
    try:
        answer = es.security.has_privileges(
            cluster=list(CLUSTER_PRIVILEGES),
            index=[{"names": list(patterns), "privileges": list(INDEX_PRIVILEGES)}],
        ).body
    except (ApiError, TransportError) as error:
        return [f"cannot check privileges (_security/user/_has_privileges): {describe(error)}"]
    if answer.get("has_all_requested"):
        return []
    user = answer.get("username", "the janitor's user")
    problems = [
        f"{user} lacks the cluster privilege '{name}'"
        for name, granted in answer.get("cluster", {}).items()
        if not granted
    ]
    for pattern, granted in answer.get("index", {}).items():
        missing = [name for name, ok in granted.items() if not ok]
        if missing:
            problems.append(f"{user} lacks {', '.join(missing)} on indices '{pattern}'")
    return problems


def describe(error: Exception) -> str:
    """One line for an event's ``error``: status, Elasticsearch's error type and reason; for
    a request with no answer, the wording every remote uses (:mod:`janitor.clients.http`)."""
    if isinstance(error, ApiError):
        body = error.body if isinstance(error.body, Mapping) else {}
        cause = body.get("error")
        note = retry_after_note(error.meta.headers)
        if isinstance(cause, Mapping):
            return f"HTTP {error.status_code} {cause.get('type')}: {cause.get('reason')}{note}"
        return f"HTTP {error.status_code}: {error.message}{note}"
    if isinstance(error, NoAnswerError | ConnectionTimeout):
        return describe_transport_error(error, "JANITOR_ELASTICSEARCH")
    if isinstance(error, TransportError):
        # str() of a TransportError that exhausted no retries is just its class's summary.
        return f"{type(error).__name__}: {error.message}"
    return f"{type(error).__name__}: {error}"
