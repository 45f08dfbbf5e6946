"""A small Docker Registry HTTP API v2 client: list tags, resolve a tag's digest, delete a
manifest, and a preflight for ``janitor check``.

Protocol references: the distribution spec (docs/spec/api.md, docs/spec/auth/token.md) and
the OCI distribution spec. Auth is learned from the ``/v2/`` ping: anonymous, HTTP basic,
the Bearer token-service flow (one token per scope, cached until shortly before it expires,
fetched again on a 401, for the scope the registry's 401 challenge names) or a static
bearer token. Answers are read as real registries and proxies give them (README "Registry
answers"): a digest from the ``Docker-Content-Digest`` header or, where a proxy drops it, the
sha256 of the manifest bytes; a DELETE accepted with 202 or 200.

Every name that goes into a URL (repository, tag, digest) is checked against the spec's
grammar first, so an odd answer from a registry can never steer a request elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
import re
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urljoin, urlsplit

import requests

from janitor.clients.http import (
    HttpOptions,
    describe_transport_error,
    make_session,
    origin,
    retry_after_note,
    tls_port_hint,
)
from janitor.errors import ConfigurationError
from janitor.naming import valid_digest, valid_repository, valid_tag

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
# Without the list/index types a registry answers a multi-arch tag with one platform's
# child manifest (distribution rewrites the tag to linux/amd64), or 404 for an OCI index;
# deleting that digest would leave the tag in place.
MANIFEST_TYPES = (DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_MANIFEST, OCI_INDEX)
MANIFEST_ACCEPT = ", ".join(MANIFEST_TYPES)
DIGEST_HEADER = "Docker-Content-Digest"
# The distribution spec names 202 for an accepted manifest DELETE; some registries and
# front-ends answer 200 (README "Registry answers").
DELETED = frozenset({200, 202})

# A digest no content can have: deleting it proves delete permission and that deletion is
# enabled, and changes nothing.
PROBE_DIGEST = "sha256:" + "0" * 64

DELETE_DISABLED = (
    "the registry has deletion disabled (405 UNSUPPORTED): enable storage.delete.enabled "
    "in its config (REGISTRY_STORAGE_DELETE_ENABLED=true)"
)
# The token spec's default lifetime when the token service names none.
DEFAULT_TOKEN_SECONDS = 60.0
# Fetch a new token this long before the old one expires, so no request carries a token
# that dies in flight.
TOKEN_MARGIN_SECONDS = 10.0
DEFAULT_PAGE_SIZE = 100
# The catalog is read in pages of distribution's default `catalog.maxentries` (1000): a
# bigger `n` is refused (400 PAGINATION_NUMBER_INVALID), a smaller one costs a catalog walk
# of the registry's storage per page.
CATALOG_PAGE_SIZE = 1000
# The most pages read for one listing (a repository's tags, or the catalog): 1,000,000 tags
# at the page size the janitor asks for, and still 100,000 from a registry that caps its
# pages at 10. A listing that has not ended by then is a registry or proxy going round in
# circles.
MAX_TAG_PAGES = 10_000
CATALOG_SCOPE = "registry:catalog:*"
# What a registry that keeps its catalog from the janitor's account answers (distribution:
# 401 without the registry:catalog:* scope; front-ends and hosted registries 403 or 404).
CATALOG_REFUSALS = frozenset({401, 403, 404})
DEFAULT_OPTIONS = HttpOptions()


class RegistryError(Exception):
    """A registry request that did not succeed; the message is for the operator and never
    contains a password or token."""


@dataclass(frozen=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` header."""

    scheme: str
    params: Mapping[str, str]


@dataclass(frozen=True)
class Credentials:
    username: str | None
    password: str | None
    token: str | None


@dataclass(frozen=True)
class _Token:
    value: str
    expires_at: float


_CHALLENGE_PARAM = re.compile(r'([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))')


def parse_challenge(header: str) -> Challenge:
    """``Bearer realm="https://auth/token",service="reg",scope="repository:a:pull"``."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _CHALLENGE_PARAM.finditer(rest)
    }
    return Challenge(scheme.lower(), params)


def _action(method: str) -> str:
    # distribution asks for "delete" on DELETE and "pull" on reads (registry/handlers/app.go).
    return "delete" if method == "DELETE" else "pull"


def _error_detail(response: requests.Response) -> str:
    """The registry's own error codes and messages, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("errors"), list):
        parts = [
            f"{e.get('code')}: {e.get('message')}" for e in body["errors"] if isinstance(e, dict)
        ]
        if parts:
            return "; ".join(parts)
    text = " ".join(response.text.split())[:200]
    return text or "(empty body)"


def _header_digest(response: requests.Response, repository: str, tag: str) -> str:
    digest = response.headers[DIGEST_HEADER]
    if not valid_digest(digest):
        raise RegistryError(
            f"registry answered {repository}:{tag} with an invalid {DIGEST_HEADER} header "
            f"({digest[:80]!r})"
        )
    return digest


def _error_codes(response: requests.Response) -> set[str]:
    try:
        body = response.json()
    except ValueError:
        return set()
    if not isinstance(body, dict) or not isinstance(body.get("errors"), list):
        return set()
    return {str(e.get("code")) for e in body["errors"] if isinstance(e, dict)}


@dataclass(frozen=True)
class _Listing:
    """One paginated listing: a repository's tags, or the registry's catalog. Both page
    with ``n``/``last`` and a ``Link: <…>; rel="next"`` header (distribution spec)."""

    path: str
    """Of the first page, e.g. ``/v2/<repository>/tags/list`` or ``/v2/_catalog``."""
    key: str
    """The answer's field holding the names (``tags``, ``repositories``)."""
    name: str
    """How errors name it: ``the tag listing of <repository>``, ``the catalog``."""
    unit: str
    """What no page link may leave and what the page bound is counted for."""
    repository: str
    """Whose token scope reads it; empty for the catalog, read with ``scope``."""
    page_size: int
    scope: str | None = None


class RegistryClient:
    """One registry: one pooled session, the auth learned from ``/v2/``, a token per scope.

    Thread-safe: the sweeper calls it from many worker threads at once.
    """

    def __init__(
        self,
        base_url: str,
        session: requests.Session,
        credentials: Credentials,
        *,
        clock: Callable[[], float] = time.monotonic,
        page_size: int = DEFAULT_PAGE_SIZE,
        max_pages: int = MAX_TAG_PAGES,
        max_in_flight: int = DEFAULT_OPTIONS.pool_size,
        catalog_page_size: int = CATALOG_PAGE_SIZE,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._credentials = credentials
        self._clock = clock
        self._page_size = page_size
        self._catalog_page_size = catalog_page_size
        self._max_pages = max_pages
        self._ping_lock = threading.Lock()
        self._challenge: Challenge | None = None
        self._pinged = False
        self._tokens: dict[str, _Token] = {}
        self._token_locks: dict[str, threading.Lock] = {}
        self._tokens_lock = threading.Lock()
        # What the registry's 401 challenges named for an action ("delete" -> "*" on older
        # registries and some front-ends), asked for directly from then on.
        self._challenged_actions: dict[str, str] = {}
        # Set once a manifest HEAD came back without a digest header (a proxy dropping it):
        # from then on one GET gives both the bytes and any header, instead of HEAD + GET.
        self._digest_header_dropped = False
        # JANITOR_CONCURRENCY bounds the requests in flight whichever threads send them
        # (executor workers, or a step's own thread helping while it waits), and matches
        # the connection pool so no connection is opened only to be discarded.
        self._in_flight = threading.BoundedSemaphore(max_in_flight)

    def close(self) -> None:
        self._session.close()

    # --- the API the sweeper uses -------------------------------------------------------

    def ping(self) -> None:
        """``GET /v2/``: proves the URL is a registry, learns its auth, checks credentials.

        Raises ConfigurationError when the URL answers but is not a registry, RegistryError
        when it cannot be reached or refuses the credentials.
        """
        with self._ping_lock:
            if self._pinged:
                return
            url = f"{self.base_url}/v2/"
            response = self._send("GET", url, headers=self._static_auth())
            self._expect_registry(response)
            if response.status_code == 401:
                challenge = self._learn_challenge(response)
                # Credentials are only proven by a request that uses them; the empty scope
                # is what docker's own login asks for.
                auth = self._auth_for(challenge, "")
                response = self._send("GET", url, headers=auth)
                self._expect_registry(response)
                if response.status_code == 401:
                    raise RegistryError(self._rejected())
                self._challenge = challenge
            if response.status_code != 200:
                raise RegistryError(
                    f"registry {self.base_url} answered {response.status_code} on /v2/: "
                    f"{_error_detail(response)}"
                )
            self._pinged = True

    def list_tags(self, repository: str) -> list[str] | None:
        """Every tag of ``repository`` (all pages), or None when the registry does not know
        the repository (404 NAME_UNKNOWN).

        Pages are followed by their ``Link: <…>; rel="next"`` header, within the registry's
        origin and this repository's tags/list path only. A page linking back to one already
        read, a page repeating tags of an earlier one (a registry or proxy ignoring
        ``last=``), or more than ``max_pages`` pages fail this repository's listing.
        """
        self._check_repository(repository)
        listing = _Listing(
            f"/v2/{repository}/tags/list",
            "tags",
            f"the tag listing of {repository}",
            "repository",
            repository,
            self._page_size,
        )

        def unknown(response: requests.Response) -> bool:
            if response.status_code == 404 and "NAME_UNKNOWN" in _error_codes(response):
                return True
            self._expect(response, {200}, f"listing the tags of {repository}")
            return False

        return self._read_listing(listing, unknown)

    def list_repositories(self) -> list[str]:
        """Every repository the catalog lists (``/v2/_catalog``, all pages, followed as
        :meth:`list_tags` follows its pages). A registry that refuses its catalog to the
        janitor's account (401, 403, 404) raises RegistryError saying so."""
        listing = _Listing(
            "/v2/_catalog",
            "repositories",
            "the catalog",
            "catalog",
            "",
            self._catalog_page_size,
            CATALOG_SCOPE,
        )

        def refused(response: requests.Response) -> bool:
            if response.status_code in CATALOG_REFUSALS:
                raise RegistryError(
                    f"registry {self.base_url} refuses its catalog to {self._who()} "
                    f"(/v2/_catalog answered {response.status_code}: "
                    f"{_error_detail(response)}): the audit needs catalog access (token scope "
                    f"{CATALOG_SCOPE})"
                )
            self._expect(response, {200}, "listing the catalog")
            return False

        return self._read_listing(listing, refused) or []

    def _read_listing(
        self, listing: _Listing, unknown: Callable[[requests.Response], bool]
    ) -> list[str] | None:
        """Every name of ``listing``, all pages; None when ``unknown`` says the first answer
        means there is nothing to list (it raises for an answer that is an error)."""
        first = f"{self.base_url}{listing.path}"
        url = f"{first}?{urlencode({'n': listing.page_size})}"
        cursors = {_cursor(url)}
        names: list[str] = []
        listed: set[str] = set()
        for page in range(1, self._max_pages + 1):
            response = self._request("GET", url, listing.repository, scope=listing.scope)
            if unknown(response):
                return None
            for name in self._parse_names(response, listing):
                if name in listed:
                    raise RegistryError(
                        f"{listing.name} goes round in circles: page {page} "
                        f"repeats {name!r} from an earlier page (does the registry or a proxy "
                        "in front of it ignore last=?)"
                    )
                listed.add(name)
                names.append(name)
            link = response.links.get("next", {}).get("url")
            if not link:
                return names
            url = _next_page(urljoin(url, link), first, listing)
            if _cursor(url) in cursors:
                raise RegistryError(
                    f"{listing.name} goes round in circles: page {page} "
                    f"links back to a page already read ({_path_and_query(url)})"
                )
            cursors.add(_cursor(url))
        raise RegistryError(
            f"{listing.name} did not end after {self._max_pages} pages "
            f"(the most the janitor reads for one {listing.unit})"
        )

    def resolve_digest(self, repository: str, tag: str) -> str | None:
        """The digest stored for ``tag`` (the index itself for a multi-arch image), or None
        when the registry has no manifest for it (404: the tag or repository is gone, or the
        tag is dangling).

        The digest is the ``Docker-Content-Digest`` header of a ``HEAD``; when a registry or
        proxy leaves it out, the sha256 of the exact manifest bytes of a ``GET`` with the
        same ``Accept`` list (README "Registry answers").
        """
        self._check_repository(repository)
        if not valid_tag(tag):
            raise RegistryError(f"{tag!r} is not a valid tag name; not touched")
        url = f"{self.base_url}/v2/{repository}/manifests/{quote(tag, safe='')}"
        headers = {"Accept": MANIFEST_ACCEPT}
        for method in ("GET",) if self._digest_header_dropped else ("HEAD", "GET"):
            response = self._request(method, url, repository, headers=headers)
            if response.status_code == 404:
                return None
            self._expect(response, {200}, f"resolving {repository}:{tag}")
            if DIGEST_HEADER in response.headers:
                return _header_digest(response, repository, tag)
            self._digest_header_dropped = True
        media_type = response.headers.get("Content-Type", "").partition(";")[0].strip()
        if media_type not in MANIFEST_TYPES:
            # A schema1 signed manifest's digest is not that of its bytes, and anything else
            # is not a manifest: no digest the janitor could prove.
            raise RegistryError(
                f"registry answered {repository}:{tag} as {media_type or 'no media type'!r} "
                f"without a {DIGEST_HEADER} header: its digest cannot be derived"
            )
        return "sha256:" + hashlib.sha256(response.content).hexdigest()

    def delete_manifest(self, repository: str, digest: str) -> bool:
        """Deletes the manifest ``digest`` and with it every tag pointing to it. False when it
        was already gone (404)."""
        self._check_repository(repository)
        if not valid_digest(digest):
            raise RegistryError(f"{digest!r} is not a valid digest; not touched")
        url = f"{self.base_url}/v2/{repository}/manifests/{digest}"
        response = self._request("DELETE", url, repository)
        if response.status_code == 404:
            return False
        if response.status_code == 405:
            raise RegistryError(DELETE_DISABLED)
        self._expect(response, DELETED, f"deleting {repository}@{digest}")
        return True

    def check(self, repository_hint: str | None = None) -> list[str]:
        """Preflight for ``janitor check``: what is wrong, in operator words; empty when all
        is well. With a hint, also proves pull and delete permission on that repository by
        listing it and deleting a digest no manifest can have."""
        try:
            self.ping()
        except (ConfigurationError, RegistryError) as exc:
            return [str(exc)]
        if repository_hint is None:
            return []
        problems: list[str] = []
        try:
            self.list_tags(repository_hint)
        except RegistryError as exc:
            problems.append(f"cannot list {repository_hint}: {exc}")
        try:
            self.delete_manifest(repository_hint, PROBE_DIGEST)
        except RegistryError as exc:
            problems.append(f"cannot delete in {repository_hint}: {exc}")
        return problems

    # --- requests and auth ---------------------------------------------------------------

    def _send(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        try:
            with self._in_flight:
                return self._session.request(method, url, allow_redirects=False, **kwargs)
        except requests.RequestException as exc:
            raise RegistryError(describe_transport_error(exc, "JANITOR_REGISTRY")) from None

    def _request(
        self,
        method: str,
        url: str,
        repository: str,
        headers: Mapping[str, str] | None = None,
        *,
        scope: str | None = None,
    ) -> requests.Response:
        """``method`` on ``url`` with the token for ``repository`` (or, for what is not a
        repository's, the token ``scope`` names)."""
        self.ping()
        action = _action(method)
        if scope is None:
            with self._tokens_lock:
                scope = f"repository:{repository}:{self._challenged_actions.get(action, action)}"
        challenge = self._challenge
        auth = self._auth_for(challenge, scope) if challenge else self._static_auth()
        response = self._send(method, url, headers={**(headers or {}), **auth})
        if response.status_code != 401:
            return response
        challenge = self._learn_challenge(response)
        if challenge.scheme != "bearer":
            raise RegistryError(self._rejected(f" for {method} on {repository}"))
        if self._challenge is None:
            # /v2/ let anonymous in but this repository wants a token: use one from now on.
            self._challenge = challenge
        # The registry may want another scope than the one asked for (e.g. "*" for DELETE on
        # older registries and some front-ends), or the cached token is no longer accepted:
        # fetch what the challenge names, and ask for those actions directly from now on.
        asked = challenge.params.get("scope") or scope
        token = self._fetch_token(challenge, asked)
        kind, _, rest = asked.partition(":")
        named, _, actions = rest.rpartition(":")
        with self._tokens_lock:
            self._tokens[scope] = self._tokens[asked] = token
            if kind == "repository" and named == repository and actions and " " not in asked:
                self._challenged_actions[action] = actions
        auth = {"Authorization": f"Bearer {token.value}"}
        response = self._send(method, url, headers={**(headers or {}), **auth})
        if response.status_code == 401:
            needs = f"pull and delete on {repository}" if repository else f"the scope {scope}"
            raise RegistryError(
                f"the token service did not grant {asked!r}: {self._who()} needs {needs}"
            )
        return response

    def _static_auth(self) -> dict[str, str]:
        if self._credentials.token is not None:
            return {"Authorization": f"Bearer {self._credentials.token}"}
        return {}

    def _auth_for(self, challenge: Challenge, scope: str) -> dict[str, str]:
        if challenge.scheme == "basic":
            return {"Authorization": self._basic_header()}
        return {"Authorization": f"Bearer {self._token(challenge, scope)}"}

    def _basic_header(self) -> str:
        user, password = self._credentials.username, self._credentials.password
        if user is None or password is None:
            raise RegistryError(
                f"registry {self.base_url} requires authentication: set "
                "JANITOR_REGISTRY_USERNAME and JANITOR_REGISTRY_PASSWORD"
            )
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def _token(self, challenge: Challenge, scope: str) -> str:
        with self._tokens_lock:
            lock = self._token_locks.setdefault(scope, threading.Lock())
        # One fetch per scope at a time: the other workers wait for it instead of each
        # asking the token service.
        with lock:
            with self._tokens_lock:
                cached = self._tokens.get(scope)
            if cached is not None and cached.expires_at > self._clock():
                return cached.value
            token = self._fetch_token(challenge, scope)
            with self._tokens_lock:
                self._tokens[scope] = token
            return token.value

    def _fetch_token(self, challenge: Challenge, scope: str) -> _Token:
        realm = challenge.params.get("realm")
        if not realm or urlsplit(realm).scheme not in ("http", "https"):
            raise RegistryError(
                f"registry {self.base_url} asks for a bearer token without a usable realm"
            )
        params = {"service": challenge.params.get("service", ""), "scope": scope}
        params = {k: v for k, v in params.items() if v}
        headers: dict[str, str] = {}
        if self._credentials.username is not None:
            params["account"] = self._credentials.username
            headers["Authorization"] = self._basic_header()
        started = self._clock()
        response = self._send("GET", realm, params=params, headers=headers)
        where = urlsplit(realm).netloc
        if response.status_code in (401, 403):
            raise RegistryError(
                f"the token service at {where} rejected {self._who()} ({response.status_code})"
            )
        if response.status_code != 200:
            raise RegistryError(
                f"the token service at {where} answered {response.status_code}: "
                f"{_error_detail(response)}{retry_after_note(response.headers)}"
            )
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise RegistryError(f"the token service at {where} answered without a token")
        value = body.get("token") or body.get("access_token")
        if not isinstance(value, str) or not value:
            raise RegistryError(f"the token service at {where} answered without a token")
        lifetime = body.get("expires_in")
        seconds = float(lifetime) if isinstance(lifetime, int | float) else DEFAULT_TOKEN_SECONDS
        expires_at = started + max(seconds - TOKEN_MARGIN_SECONDS, seconds / 2)
        return _Token(value, expires_at)

    def _learn_challenge(self, response: requests.Response) -> Challenge:
        if self._credentials.token is not None:
            raise RegistryError(f"registry {self.base_url} rejected JANITOR_REGISTRY_TOKEN (401)")
        header = response.headers.get("WWW-Authenticate")
        if not header:
            raise RegistryError(
                f"registry {self.base_url} answered 401 without a WWW-Authenticate header"
            )
        challenge = parse_challenge(header)
        if challenge.scheme not in ("basic", "bearer"):
            raise RegistryError(
                f"registry {self.base_url} asks for unsupported auth scheme {challenge.scheme!r}"
            )
        return challenge

    def _who(self) -> str:
        user = self._credentials.username
        return f"JANITOR_REGISTRY_USERNAME={user}" if user else "anonymous access"

    def _rejected(self, what: str = "") -> str:
        return f"registry {self.base_url} rejected the credentials of {self._who()}{what} (401)"

    def _expect_registry(self, response: requests.Response) -> None:
        if response.status_code >= 500 or response.status_code == 429:
            raise RegistryError(
                f"registry {self.base_url} answered {response.status_code} on /v2/: "
                f"{_error_detail(response)}{retry_after_note(response.headers)}"
            )
        wrong_scheme = tls_port_hint(response, "JANITOR_REGISTRY")
        if wrong_scheme is not None:
            raise ConfigurationError(wrong_scheme)
        if "Docker-Distribution-API-Version" not in response.headers:
            raise ConfigurationError(
                f"JANITOR_REGISTRY_URL: {self.base_url} is not a Docker registry (/v2/ "
                f"answered {response.status_code} without a Docker-Distribution-API-Version "
                "header)"
            )

    def _check_repository(self, repository: str) -> None:
        if not valid_repository(repository):
            raise RegistryError(f"{repository!r} is not a valid repository name; not touched")

    def _expect(self, response: requests.Response, statuses: Collection[int], doing: str) -> None:
        if response.status_code in statuses:
            return
        if response.status_code == 403:
            raise RegistryError(
                f"registry denied {doing} (403) to {self._who()}: it needs pull and delete "
                "on the deployments' repositories"
            )
        raise RegistryError(
            f"registry answered {response.status_code} {doing}: {_error_detail(response)}"
            f"{retry_after_note(response.headers)}"
        )

    def _parse_names(self, response: requests.Response, listing: _Listing) -> Iterator[str]:
        try:
            body = response.json()
        except ValueError:
            raise RegistryError(f"registry answered invalid JSON in {listing.name}") from None
        names = body.get(listing.key) if isinstance(body, dict) else ()
        # distribution answers "tags": null for a repository whose tags were all deleted.
        if names is None:
            return iter(())
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise RegistryError(f"registry answered a malformed page of {listing.name}")
        return iter(names)


def _next_page(url: str, first: str, listing: _Listing) -> str:
    """``url`` when it is a next page of ``first``: a Link header must not lead the
    janitor (and its credentials) to another server, another repository or another listing."""
    refused = f"{listing.name} links to"
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise RegistryError(f"{refused} a URL with user info in it: not followed")
    if origin(url) != origin(first):
        raise RegistryError(
            f"{refused} another server: expected {origin(first)}, got {origin(url)}; not followed"
        )
    if parts.path != urlsplit(first).path:
        raise RegistryError(
            f"{refused} {parts.path}, which leaves the {listing.unit}: not followed"
        )
    return url


def _cursor(url: str) -> str:
    """What names a page: its ``last`` (distribution resumes after it whatever else the
    query holds), else the whole URL."""
    last = parse_qs(urlsplit(url).query).get("last")
    return f"last={last[-1]}" if last else url


def _path_and_query(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


def connect_registry(
    url: str,
    *,
    username: str | None,
    password: str | None,
    token: str | None,
    ca_bundle: Path | None,
    options: HttpOptions = DEFAULT_OPTIONS,
    clock: Callable[[], float] = time.monotonic,
    page_size: int = DEFAULT_PAGE_SIZE,
    max_pages: int = MAX_TAG_PAGES,
    catalog_page_size: int = CATALOG_PAGE_SIZE,
) -> RegistryClient:
    """A client for the registry at ``url``; no request is sent until first use. The
    credentials are one of: ``username`` and ``password``, ``token``, or user info in
    ``url`` (config.Settings checks that only one is given)."""
    parts = urlsplit(url)
    if parts.username is not None:
        # Credentials in the URL would otherwise be sent by requests in place of the token
        # flow, and shown in every error message naming the registry; the settings loader
        # made sure they are the only ones configured.
        username, password = unquote(parts.username or ""), unquote(parts.password or "")
        url = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    if ca_bundle is not None:
        options = replace(options, ca_bundle=ca_bundle)
    session = make_session(options)
    return RegistryClient(
        url,
        session,
        Credentials(username, password, token),
        clock=clock,
        page_size=page_size,
        max_pages=max_pages,
        max_in_flight=options.pool_size,
        catalog_page_size=catalog_page_size,
    )
