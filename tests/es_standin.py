"""An Elasticsearch 8 stand-in, and the fixtures giving each test an Elasticsearch to sweep.

The stand-in is an HTTP server on a free loopback port, in a thread. It answers the calls
the janitor makes, the calls the fixtures seed with, and the few Curator needs in the
benchmark, the way Elasticsearch 8.x does (checked against the rest-api-spec JSON and the
server sources of elastic/elasticsearch, cited where a behaviour is not obvious):

- Every answer carries ``X-Elastic-Product: Elasticsearch`` (the client's product check),
  unless built with ``product_header=False`` to play a fork.
- Media types (``RestCompatibleVersionHelper``): ``Accept``/``Content-Type`` may ask for
  ``application/vnd.elasticsearch+json; compatible-with=N`` with N the server's major or the
  one before; otherwise, or when a body's Content-Type version differs from Accept's, 400
  ``media_type_header_exception``. Answers come in the requested media type.
- Request line (``http.max_initial_line_length``, 4 KB): a line longer than 4096 bytes
  (method, target, protocol; CRLF not counted, as Netty >= 4.1.100 counts) gets 400
  ``too_long_http_line_exception`` "An HTTP line is larger than 4096 bytes." and a close.
- Unknown query parameters: 400 ``illegal_argument_exception`` "request [...] contains
  unrecognized parameter: [...]".
- Expressions (``IndexNameExpressionResolver``): comma lists of names and ``*`` wildcards
  over indices, aliases and data streams (a stream expands to its backing indices);
  ``expand_wildcards`` open/closed/hidden/all/none; a wildcard matches hidden indices and
  streams only with ``hidden`` or when it starts with ``.``; ``ignore_unavailable`` for
  missing explicit names; ``allow_no_indices``; ``-pattern`` exclusions after a wildcard.
  A missing name: 404 ``index_not_found_exception`` naming it (``index``, ``resource.id``).
- ``GET /``, ``GET [/<targets>]/_settings[/<names>]`` (``flat_settings``, default
  ``expand_wildcards=all`` per the spec), ``GET /<targets>`` (get index: ``features``
  aliases/settings/mappings, default ``expand_wildcards=open``; every index answers
  ``aliases``, ``mappings`` and ``settings`` objects, a backing index also ``data_stream``,
  as ``GetIndexResponse`` writes them), ``GET /_alias[/<names>]`` (every index holding a
  named alias, default ``expand_wildcards=all``; a missing explicit name answers 404 with
  ``"error": "alias [..] missing"`` beside the indices found, as ``RestGetAliasesAction``
  does), ``filter_path`` on every answer (``*`` inside a segment, ``**`` for any depth; no
  ``-`` exclusions; empty objects and arrays dropped).
- Aliases carry ``is_write_index`` per index (true, false, or unset, as
  ``AliasMetadata`` prints it: the key only when set); index settings may hold
  ``index.lifecycle.name`` (ILM does not run: the setting is only shown).
- ``DELETE /<indices>``: ``action.destructive_requires_name`` (true, the 8.0+ default) refuses
  ``_all`` and wildcards with 400 "Wildcard expressions or all indices are not allowed";
  an alias or data stream name is refused; a data stream's write index is refused with
  400 "index [..] is the write index for data stream [..] and cannot be deleted"; an index
  being snapshotted (``start_snapshot``) with 400 ``snapshot_in_progress_exception``
  "Cannot delete indices that are being snapshotted: [[name/uuid]]. ..." (``SnapshotsService``);
  the write index of an alias is deleted like any other index, as Elasticsearch does; a missing
  name fails the whole request (404) unless ``ignore_unavailable``; nothing is deleted
  when any check fails.
- ``PUT /<index>`` (settings ``index.creation_date``, ``index.hidden``,
  ``index.lifecycle.name``, shards, replicas; ``aliases``), ``POST /<index>/_close``,
  ``PUT /<index>/_alias/<name>`` (body ``is_write_index``), ``HEAD /_alias/<name>``,
  ``PUT|DELETE /_index_template/<name>`` with ``data_stream`` (``hidden``),
  ``PUT|GET|DELETE /_data_stream/<names>``, ``POST /<stream>/_rollover`` (backing indices
  ``.ds-<stream>-<yyyy.MM.dd>-<generation>``, hidden; the last one is the write index),
  ``GET /_cat/indices`` (``format=json``, ``h``), ``GET /_xpack``.
- Security, when users or API keys are given: basic and ``ApiKey`` authentication (401
  ``security_exception`` otherwise) and ``_security/user/_has_privileges`` computed from
  the user's grants (a granted pattern covers a requested one when it matches it as a
  string: an approximation of Elasticsearch's automata). Without security that API answers
  500 "Security is not enabled but a security rest handler is registered". The stand-in
  authenticates but does not authorize the other calls.

Not covered: documents, mappings, searches, date math in names, remote clusters, the
failure store, ILM itself, cluster settings, hidden aliases, data stream aliases, and the
refusal of a second write index for one alias. System data streams cannot be made through
the API; ``mark_system`` plays one.

For the benchmark and fault tests the stand-in counts requests, can add a latency to each,
can answer a given number of requests with an injected status (e.g. 429), and can show a
mangled ``index.creation_date``.
"""

from __future__ import annotations

import base64
import functools
import http.client
import json
import os
import re
import ssl
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from elasticsearch import BadRequestError, Elasticsearch, NotFoundError

from janitor.clients.elasticsearch import connect_elasticsearch
from tests.loopback import Tls, make_tls

REAL_URL_ENV = "JANITOR_TEST_ELASTICSEARCH_URL"
MAX_INITIAL_LINE = 4096
JSON = "application/json"
COMPAT = re.compile(r"application/vnd\.elasticsearch\+(\w[\w-]*)\s*;\s*compatible-with=(\d+)")
COMMON_PARAMS = frozenset({"pretty", "human", "error_trace", "filter_path"})
INDEX_PRIVILEGE_IMPLIED = {
    "all": {"all", "manage", "delete_index", "view_index_metadata", "monitor", "read"},
    "manage": {"manage", "delete_index", "view_index_metadata", "monitor"},
}
CLUSTER_PRIVILEGE_IMPLIED = {"all": {"all", "manage", "monitor"}, "manage": {"manage", "monitor"}}
INVALID_NAME_CHARS = set('\\/*?"<>| ,#:')


class EsError(Exception):
    """An error answer, shaped as Elasticsearch shapes them."""

    def __init__(
        self,
        status: int,
        kind: str,
        reason: str,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.kind = kind
        self.reason = reason
        self.headers = dict(headers or {})
        self.extra = extra

    def body(self) -> dict[str, Any]:
        cause = {"type": self.kind, "reason": self.reason, **self.extra}
        root = {k: v for k, v in cause.items() if k != "caused_by"}
        return {"error": {"root_cause": [root], **cause}, "status": self.status}


def not_found(name: str) -> EsError:
    return EsError(
        404,
        "index_not_found_exception",
        f"no such index [{name}]",
        **{"resource.type": "index_or_alias", "resource.id": name},
        index_uuid="_na_",
        index=name,
    )


def illegal(reason: str) -> EsError:
    return EsError(400, "illegal_argument_exception", reason)


@dataclass
class Index:
    name: str
    created_ms: int
    hidden: bool = False
    # What the settings answer shows instead of created_ms (see mangle_creation_date).
    shown_creation_date: str | None = None
    closed: bool = False
    lifecycle: str | None = None
    uuid: str = field(default_factory=lambda: uuid.uuid4().hex[:22])
    shards: str = "1"
    replicas: str = "1"


@dataclass
class DataStream:
    name: str
    template: str
    hidden: bool
    indices: list[str] = field(default_factory=list)
    generation: int = 0
    system: bool = False


@dataclass(frozen=True)
class Template:
    patterns: tuple[str, ...]
    priority: int
    data_stream: bool
    hidden: bool


@dataclass(frozen=True)
class Grants:
    """What a stand-in user may do: cluster privileges, and index privileges per patterns."""

    cluster: frozenset[str] = frozenset()
    indices: tuple[tuple[tuple[str, ...], frozenset[str]], ...] = ()


@dataclass(frozen=True)
class Fault:
    method: str
    status: int
    remaining: int
    retry_after: str | None = None


@dataclass
class Request:
    method: str
    target: str

    @property
    def line(self) -> str:
        return f"{self.method} {self.target} HTTP/1.1"


class ElasticsearchStandin:
    """The cluster state and the HTTP server answering for it (see the module docstring)."""

    def __init__(
        self,
        *,
        version: str = "8.19.0",
        latency_s: float = 0.0,
        product_header: bool = True,
        users: Mapping[str, tuple[str, Grants]] | None = None,
        api_keys: Mapping[str, tuple[str, Grants]] | None = None,
        tls: Tls | None = None,
    ) -> None:
        self.version = version
        self.major = int(version.split(".", maxsplit=1)[0])
        self.latency_s = latency_s
        self.product_header = product_header
        self.users = dict(users or {})
        self.api_keys = dict(api_keys or {})
        self.indices: dict[str, Index] = {}
        # alias -> index -> is_write_index (None: not set)
        self.aliases: dict[str, dict[str, bool | None]] = {}
        self.snapshotting: set[str] = set()
        self.templates: dict[str, Template] = {}
        self.data_streams: dict[str, DataStream] = {}
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self.lock = threading.RLock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.standin = self  # type: ignore[attr-defined]
        scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls.cert, tls.key)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        # A short poll keeps stop() quick: each test starts and stops its own stand-in.
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def security(self) -> bool:
        return bool(self.users or self.api_keys)

    # -- seeding and inspection from Python (the benchmark seeds thousands at once) --

    def add_index(self, name: str, created: datetime, *, hidden: bool = False) -> None:
        with self.lock:
            self.indices[name] = Index(name, int(created.timestamp() * 1000), hidden=hidden)

    def mangle_creation_date(self, name: str, shown: str) -> None:
        """Answer ``shown`` as the index's ``index.creation_date``, as a rewriting proxy or a
        fork might (Elasticsearch itself only ever sends epoch milliseconds)."""
        with self.lock:
            self.indices[name].shown_creation_date = shown

    def start_snapshot(self, *names: str) -> None:
        """Hold ``names`` in a running snapshot: deleting them is refused until it ends."""
        with self.lock:
            self.snapshotting.update(names)

    def mark_system(self, stream: str) -> None:
        """Make ``stream`` a system data stream, as Elasticsearch's own plugins create them."""
        with self.lock:
            self.data_streams[stream].system = True

    def clear(self) -> None:
        """Forget every index, alias, template and data stream."""
        with self.lock:
            self.indices.clear()
            self.aliases.clear()
            self.snapshotting.clear()
            self.templates.clear()
            self.data_streams.clear()

    def index_names(self) -> set[str]:
        with self.lock:
            return set(self.indices)

    def fail_next(
        self, method: str, status: int, times: int = 1, retry_after: str | None = None
    ) -> None:
        """Answer the next ``times`` requests with ``method`` by ``status`` (429, 503, ...),
        with a ``Retry-After`` header when given."""
        with self.lock:
            self.faults.append(Fault(method, status, times, retry_after))

    # -- request handling --

    def handle(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, Any]:
        """Status and JSON-able answer (None for no body)."""
        parts = urlsplit(target)
        path = parts.path
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        with self.lock:
            for i, fault in enumerate(self.faults):
                if fault.method == method:
                    left = fault.remaining - 1
                    self.faults[i] = Fault(fault.method, fault.status, left, fault.retry_after)
                    if left <= 0:
                        del self.faults[i]
                    reason = "rejected by the stand-in's fault injection"
                    kind = (
                        "es_rejected_execution_exception"
                        if fault.status == 429
                        else "unavailable_shards_exception"
                    )
                    retry_after = {"Retry-After": fault.retry_after} if fault.retry_after else {}
                    raise EsError(fault.status, kind, reason, headers=retry_after)
        self._check_media_types(headers, bool(body))
        principal = self._authenticate(path, headers)
        payload = json.loads(body) if body else None
        with self.lock:
            status, answer = self._route(method, path, query, payload, principal)
        if "filter_path" in query and answer is not None:
            answer = filter_path(answer, query["filter_path"])
        return status, answer

    def _check_media_types(self, headers: Mapping[str, str], has_body: bool) -> None:
        accept = _compat_version(headers.get("accept"))
        content = _compat_version(headers.get("content-type")) if has_body else None
        accept_v = accept if accept is not None else self.major
        content_v = content if content is not None else self.major
        problem = None
        if not self.major - 1 <= accept_v <= self.major:
            problem = (
                f"Accept version must be either version {self.major} or {self.major - 1}, "
                f"but found {accept_v}. Accept={headers.get('accept')}"
            )
        elif has_body and not self.major - 1 <= content_v <= self.major:
            problem = (
                f"Content-Type version must be either version {self.major} or "
                f"{self.major - 1}, but found {content_v}. "
                f"Content-Type={headers.get('content-type')}"
            )
        elif has_body and (content_v != accept_v or (accept is None) != (content is None)):
            problem = (
                "A compatible version is required on both Content-Type and Accept headers if "
                "either one has requested a compatible version and the compatible versions "
                f"must match. Accept={headers.get('accept')}, "
                f"Content-Type={headers.get('content-type')}"
            )
        if problem:
            raise EsError(
                400,
                "media_type_header_exception",
                "Invalid media-type value on headers [Accept, Content-Type]",
                caused_by={"type": "status_exception", "reason": problem},
            )

    def _authenticate(self, path: str, headers: Mapping[str, str]) -> tuple[str, Grants] | None:
        """The caller and its grants; None without security. 401 for anyone else."""
        if not self.security:
            return None
        authorization = headers.get("authorization", "")
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "basic":
            user, _, password = base64.b64decode(credentials).decode().partition(":")
            known = self.users.get(user)
            if known is not None and known[0] == password:
                return user, known[1]
            raise EsError(
                401,
                "security_exception",
                f"unable to authenticate user [{user}] for REST request [{path}]",
                header={"WWW-Authenticate": ['Basic realm="security" charset="UTF-8"', "ApiKey"]},
            )
        if scheme == "ApiKey" and credentials in self.api_keys:
            return self.api_keys[credentials]
        if authorization:
            raise EsError(
                401,
                "security_exception",
                "unable to authenticate with provided credentials and anonymous access is "
                "not allowed for this request",
                header={"WWW-Authenticate": ['Basic realm="security" charset="UTF-8"', "ApiKey"]},
            )
        raise EsError(
            401,
            "security_exception",
            f"missing authentication credentials for REST request [{path}]",
            header={"WWW-Authenticate": ['Basic realm="security" charset="UTF-8"', "ApiKey"]},
        )

    def _route(  # noqa: PLR0911, PLR0912 - one dispatch table, read top to bottom
        self,
        method: str,
        path: str,
        query: dict[str, str],
        body: Any,
        principal: tuple[str, Grants] | None,
    ) -> tuple[int, Any]:
        segments = [unquote(s) for s in path.strip("/").split("/")] if path != "/" else []
        first = segments[0] if segments else ""
        if not segments:
            if method in ("GET", "HEAD"):
                _params(path, query)
                return 200, None if method == "HEAD" else self._info()
        elif first == "_xpack" and method == "GET" and len(segments) == 1:
            _params(path, query, "categories", "accept_enterprise")
            return 200, self._xpack(query)
        elif segments[:3] == ["_security", "user", "_has_privileges"] and len(segments) == 3:
            _params(path, query)
            if method in ("GET", "POST"):
                return 200, self._has_privileges(body, principal)
        elif first == "_cat" and segments[1:2] == ["indices"] and method == "GET":
            _params(path, query, "format", "h", "expand_wildcards", "bytes", "health", "s")
            return 200, self._cat_indices(segments[2] if len(segments) > 2 else "*", query)
        elif first == "_alias" and len(segments) == 2 and method == "HEAD":
            _params(path, query)
            return (200 if segments[1] in self.aliases else 404), None
        elif first == "_alias" and len(segments) <= 2 and method == "GET":
            _params(path, query, "expand_wildcards", "ignore_unavailable", "allow_no_indices")
            return self._get_aliases(segments[1] if len(segments) == 2 else None, query)
        elif first == "_index_template" and len(segments) == 2:
            if method == "PUT":
                _params(path, query, "create", "master_timeout", "cause")
                return 200, self._put_template(segments[1], body)
            if method == "DELETE":
                _params(path, query, "master_timeout", "timeout")
                return 200, self._delete_template(segments[1])
        elif first == "_data_stream":
            names = segments[1] if len(segments) > 1 else "*"
            if method == "GET" and len(segments) <= 2:
                _params(path, query, "expand_wildcards", "include_defaults", "master_timeout")
                return 200, self._get_data_streams(names, query)
            if method == "PUT" and len(segments) == 2:
                _params(path, query, "master_timeout", "timeout")
                return 200, self._create_data_stream(segments[1])
            if method == "DELETE" and len(segments) == 2:
                _params(path, query, "expand_wildcards", "master_timeout")
                return 200, self._delete_data_streams(names, query)
        elif first == "_settings" or segments[1:2] == ["_settings"]:
            targets = "_all" if first == "_settings" else first
            names = segments[-1] if segments[-1] != "_settings" else None
            if method == "GET" and len(segments) <= 3:
                _params(
                    path,
                    query,
                    "expand_wildcards",
                    "ignore_unavailable",
                    "allow_no_indices",
                    "flat_settings",
                    "include_defaults",
                    "local",
                    "master_timeout",
                )
                return 200, self._get_settings(targets, names, query)
        elif len(segments) == 2 and segments[1] == "_rollover" and method == "POST":
            _params(path, query, "dry_run", "master_timeout", "timeout", "wait_for_active_shards")
            return 200, self._rollover(first)
        elif len(segments) == 2 and segments[1] == "_close" and method == "POST":
            _params(
                path,
                query,
                "expand_wildcards",
                "ignore_unavailable",
                "allow_no_indices",
                "master_timeout",
                "timeout",
                "wait_for_active_shards",
            )
            return 200, self._close(first, query)
        elif len(segments) == 3 and segments[1] == "_alias" and method == "PUT":
            _params(path, query, "master_timeout", "timeout")
            return 200, self._put_alias(first, segments[2], body or {})
        elif len(segments) == 1 and not first.startswith("_"):
            if method == "GET":
                _params(
                    path,
                    query,
                    "allow_no_indices",
                    "expand_wildcards",
                    "features",
                    "flat_settings",
                    "ignore_unavailable",
                    "include_defaults",
                    "local",
                    "master_timeout",
                )
                return 200, self._get_indices(first, query)
            if method == "PUT":
                _params(path, query, "master_timeout", "timeout", "wait_for_active_shards")
                return 200, self._create_index(first, body or {})
            if method == "DELETE":
                _params(
                    path,
                    query,
                    "expand_wildcards",
                    "ignore_unavailable",
                    "allow_no_indices",
                    "master_timeout",
                    "timeout",
                )
                return 200, self._delete_indices(first, query)
        raise EsError(
            400,
            "illegal_argument_exception",
            f"no handler found for uri [{path}] and method [{method}]",
        )

    # -- APIs --

    def _info(self) -> dict[str, Any]:
        return {
            "name": "standin",
            "cluster_name": "standin",
            "cluster_uuid": "standin-cluster-uuid",
            "version": {
                "number": self.version,
                "build_flavor": "default",
                "build_type": "docker",
                "build_hash": "0" * 40,
                "build_date": "2025-01-01T00:00:00.000Z",
                "build_snapshot": False,
                "lucene_version": "9.12.0",
                "minimum_wire_compatibility_version": f"{self.major - 1}.17.0",
                "minimum_index_compatibility_version": f"{self.major - 1}.0.0",
            },
            "tagline": "You Know, for Search",
        }

    def _xpack(self, query: Mapping[str, str]) -> dict[str, Any]:
        answer = {
            "build": {"hash": "0" * 40, "date": "2025-01-01T00:00:00.000Z"},
            "license": {"uid": "standin", "type": "basic", "mode": "basic", "status": "active"},
            "features": {
                "security": {"available": True, "enabled": self.security},
                "ilm": {"available": True, "enabled": True},
            },
        }
        categories = query.get("categories")
        if categories:
            return {k: v for k, v in answer.items() if k in categories.split(",")}
        return answer

    def _has_privileges(self, body: Any, principal: tuple[str, Grants] | None) -> dict[str, Any]:
        if principal is None:
            raise EsError(
                500,
                "illegal_state_exception",
                "Security is not enabled but a security rest handler is registered",
            )
        user, grants = principal
        cluster = {
            name: any(name in CLUSTER_PRIVILEGE_IMPLIED.get(g, {g}) for g in grants.cluster)
            for name in body.get("cluster", [])
        }
        index: dict[str, dict[str, bool]] = {}
        for request in body.get("index", []):
            for name in request["names"]:
                index[name] = {
                    privilege: any(
                        any(_glob(name, p) for p in patterns)
                        and any(privilege in INDEX_PRIVILEGE_IMPLIED.get(g, {g}) for g in granted)
                        for patterns, granted in grants.indices
                    )
                    for privilege in request["privileges"]
                }
        every = all(cluster.values()) and all(all(v.values()) for v in index.values())
        return {
            "username": user,
            "has_all_requested": every,
            "cluster": cluster,
            "index": index,
            "application": {},
        }

    def _cat_indices(self, targets: str, query: Mapping[str, str]) -> Any:
        if query.get("format") != "json":
            raise illegal("the stand-in answers _cat/indices with format=json only")
        names = self._resolve(
            targets,
            _expand(query.get("expand_wildcards", "all")),
            ignore_unavailable=False,
            allow_no_indices=True,
        )
        columns = query.get("h", "health,status,index,uuid").split(",")
        rows = []
        for name in names:
            index = self.indices[name]
            row = {
                "health": "green",
                "status": "close" if index.closed else "open",
                "index": name,
                "uuid": index.uuid,
                "creation.date": str(index.created_ms),
            }
            rows.append({c: row.get(c) for c in columns})
        return rows

    def _put_template(self, name: str, body: Any) -> dict[str, Any]:
        patterns = body.get("index_patterns", [])
        patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns)
        priority = int(body.get("priority", 0))
        for other_name, other in self.templates.items():
            overlap = [p for p in patterns for q in other.patterns if _overlaps(p, q)]
            if other_name != name and other.priority == priority and overlap:
                raise illegal(
                    f"index template [{name}] has index patterns {list(patterns)} matching "
                    f"patterns from existing templates [{other_name}] with patterns "
                    f"({other_name} => {list(other.patterns)}) that have the same priority "
                    f"[{priority}], multiple index templates may not match during index "
                    "creation, please use a different priority"
                )
        stream = body.get("data_stream")
        self.templates[name] = Template(
            patterns,
            priority,
            data_stream=stream is not None,
            hidden=bool((stream or {}).get("hidden", False)),
        )
        return {"acknowledged": True}

    def _delete_template(self, name: str) -> dict[str, Any]:
        if name not in self.templates:
            raise EsError(404, "resource_not_found_exception", f"index_template [{name}] missing")
        users = sorted(s.name for s in self.data_streams.values() if s.template == name)
        if users:
            raise illegal(
                f"unable to remove composable templates [{name}] as they are in use by a "
                f"data streams [{', '.join(users)}]"
            )
        del self.templates[name]
        return {"acknowledged": True}

    def _template_for(self, name: str) -> tuple[str, Template] | None:
        found = [
            (t.priority, n, t)
            for n, t in self.templates.items()
            if any(_glob(name, p) for p in t.patterns)
        ]
        if not found:
            return None
        _, chosen, template = max(found)
        return chosen, template

    def _create_data_stream(self, name: str) -> dict[str, Any]:
        _validate_name(name)
        if name in self.data_streams or name in self.indices or name in self.aliases:
            raise EsError(
                400, "resource_already_exists_exception", f"data_stream [{name}] already exists"
            )
        match = self._template_for(name)
        if match is None or not match[1].data_stream:
            raise illegal(f"no matching index template found for data stream [{name}]")
        self.data_streams[name] = DataStream(name, match[0], hidden=match[1].hidden)
        self._roll(self.data_streams[name])
        return {"acknowledged": True}

    def _roll(self, stream: DataStream) -> str:
        stream.generation += 1
        now = datetime.now(UTC)
        backing = f".ds-{stream.name}-{now:%Y.%m.%d}-{stream.generation:06d}"
        self.indices[backing] = Index(backing, int(now.timestamp() * 1000), hidden=True)
        stream.indices.append(backing)
        return backing

    def _rollover(self, target: str) -> dict[str, Any]:
        stream = self.data_streams.get(target)
        if stream is None:
            raise illegal(f"rollover target [{target}] does not exist or is not a data stream")
        old = stream.indices[-1]
        new = self._roll(stream)
        return {
            "acknowledged": True,
            "shards_acknowledged": True,
            "old_index": old,
            "new_index": new,
            "rolled_over": True,
            "dry_run": False,
            "lazy": False,
            "conditions": {},
        }

    def _matching_streams(self, expression: str, expand: set[str]) -> list[DataStream]:
        if "*" not in expression:
            stream = self.data_streams.get(expression)
            if stream is None:
                raise not_found(expression)
            return [stream]
        hidden_ok = "hidden" in expand or expression.startswith(".")
        return [
            s
            for n, s in sorted(self.data_streams.items())
            if _glob(n, expression)
            and (hidden_ok or not s.hidden)
            and ("open" in expand or "closed" in expand)
        ]

    def _get_data_streams(self, names: str, query: Mapping[str, str]) -> dict[str, Any]:
        expand = _expand(query.get("expand_wildcards", "open"))
        found: dict[str, DataStream] = {}
        for expression in _split(names):
            for stream in self._matching_streams(expression, expand):
                found[stream.name] = stream
        return {
            "data_streams": [
                {
                    "name": s.name,
                    "timestamp_field": {"name": "@timestamp"},
                    "indices": [
                        {"index_name": i, "index_uuid": self.indices[i].uuid} for i in s.indices
                    ],
                    "generation": s.generation,
                    "status": "GREEN",
                    "template": s.template,
                    "hidden": s.hidden,
                    "system": s.system,
                    "allow_custom_routing": False,
                    "replicated": False,
                }
                for _, s in sorted(found.items())
            ]
        }

    def _delete_data_streams(self, names: str, query: Mapping[str, str]) -> dict[str, Any]:
        expand = _expand(query.get("expand_wildcards", "open"))
        doomed = [s for e in _split(names) for s in self._matching_streams(e, expand)]
        for stream in doomed:
            for index in stream.indices:
                self.indices.pop(index, None)
            self.data_streams.pop(stream.name, None)
        return {"acknowledged": True}

    def _create_index(self, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        _validate_name(name)
        if name in self.indices or name in self.aliases or name in self.data_streams:
            existing = self.indices.get(name)
            raise EsError(
                400,
                "resource_already_exists_exception",
                f"index [{name}/{existing.uuid if existing else '_na_'}] already exists",
                index=name,
            )
        settings = _flatten(body.get("settings", {}))
        settings = {k if k.startswith("index.") else f"index.{k}": v for k, v in settings.items()}
        created = settings.get("index.creation_date")
        index = Index(
            name,
            int(created) if created is not None else int(datetime.now(UTC).timestamp() * 1000),
            hidden=str(settings.get("index.hidden", "false")).lower() == "true",
            shards=str(settings.get("index.number_of_shards", "1")),
            replicas=str(settings.get("index.number_of_replicas", "1")),
            lifecycle=settings.get("index.lifecycle.name"),
        )
        self.indices[name] = index
        for alias, options in body.get("aliases", {}).items():
            self.aliases.setdefault(alias, {})[name] = (options or {}).get("is_write_index")
        return {"acknowledged": True, "shards_acknowledged": True, "index": name}

    def _close(self, targets: str, query: Mapping[str, str]) -> dict[str, Any]:
        self._refuse_wildcards(targets)
        names = self._resolve(
            targets,
            _expand(query.get("expand_wildcards", "open")),
            ignore_unavailable=_bool(query.get("ignore_unavailable"), default=False),
            allow_no_indices=_bool(query.get("allow_no_indices"), default=True),
        )
        for name in names:
            self.indices[name].closed = True
        return {
            "acknowledged": True,
            "shards_acknowledged": True,
            "indices": {n: {"closed": True} for n in names},
        }

    def _put_alias(self, index: str, alias: str, body: Mapping[str, Any]) -> dict[str, Any]:
        if index not in self.indices:
            raise not_found(index)
        if alias in self.indices or alias in self.data_streams:
            raise EsError(
                400,
                "invalid_alias_name_exception",
                f"Invalid alias name [{alias}]: an index or data stream exists with the same "
                "name as the alias",
            )
        self.aliases.setdefault(alias, {})[index] = body.get("is_write_index")
        return {"acknowledged": True}

    def _settings(self, index: Index) -> dict[str, str]:
        flat = {
            "index.creation_date": index.shown_creation_date or str(index.created_ms),
            "index.number_of_shards": index.shards,
            "index.number_of_replicas": index.replicas,
            "index.uuid": index.uuid,
            "index.provided_name": index.name,
            "index.version.created": "8521000",
        }
        if index.hidden:
            flat["index.hidden"] = "true"
        if index.lifecycle is not None:
            flat["index.lifecycle.name"] = index.lifecycle
        if index.closed:
            flat["index.verified_before_close"] = "true"
        return flat

    def _get_settings(
        self, targets: str, names: str | None, query: Mapping[str, str]
    ) -> dict[str, Any]:
        # rest-api-spec indices.get_settings: expand_wildcards defaults to "all".
        found = self._resolve(
            targets,
            _expand(query.get("expand_wildcards", "all")),
            ignore_unavailable=_bool(query.get("ignore_unavailable"), default=False),
            allow_no_indices=_bool(query.get("allow_no_indices"), default=True),
        )
        flat = _bool(query.get("flat_settings"), default=False)
        answer: dict[str, Any] = {}
        for name in found:
            settings = self._settings(self.indices[name])
            if names is not None:
                wanted = _split(names)
                settings = {k: v for k, v in settings.items() if any(_glob(k, w) for w in wanted)}
            answer[name] = {"settings": settings if flat else _nest(settings)}
        return answer

    def _get_indices(self, targets: str, query: Mapping[str, str]) -> dict[str, Any]:
        # rest-api-spec indices.get: expand_wildcards defaults to "open".
        found = self._resolve(
            targets,
            _expand(query.get("expand_wildcards", "open")),
            ignore_unavailable=_bool(query.get("ignore_unavailable"), default=False),
            allow_no_indices=_bool(query.get("allow_no_indices"), default=True),
        )
        features = _split(query.get("features", "aliases,mappings,settings"))
        flat = _bool(query.get("flat_settings"), default=False)
        answer: dict[str, Any] = {}
        for name in sorted(found):
            settings = self._settings(self.indices[name]) if "settings" in features else {}
            entry: dict[str, Any] = {
                "aliases": self._aliases_of(name) if "aliases" in features else {},
                "mappings": {},
                "settings": settings if flat else _nest(settings),
            }
            stream = next((s.name for s in self.data_streams.values() if name in s.indices), None)
            if stream is not None:
                entry["data_stream"] = stream
            answer[name] = entry
        return answer

    def _aliases_of(self, index: str, names: list[str] | None = None) -> dict[str, Any]:
        """An index's aliases as AliasMetadata prints them: is_write_index only when set."""
        return {
            alias: {} if members[index] is None else {"is_write_index": members[index]}
            for alias, members in sorted(self.aliases.items())
            if index in members and (names is None or any(_glob(alias, n) for n in names))
        }

    def _get_aliases(self, names: str | None, query: Mapping[str, str]) -> tuple[int, Any]:
        wanted = _split(names) if names is not None else None
        indices = self._resolve(
            "*",
            _expand(query.get("expand_wildcards", "all")),
            ignore_unavailable=True,
            allow_no_indices=True,
        )
        answer: dict[str, Any] = {}
        for index in sorted(indices):
            aliases = self._aliases_of(index, wanted)
            if aliases or wanted is None:
                answer[index] = {"aliases": aliases}
        missing = [n for n in wanted or [] if "*" not in n and n not in self.aliases]
        if missing:
            # RestGetAliasesAction: the indices found, plus an error naming the missing ones.
            noun = "alias" if len(missing) == 1 else "aliases"
            return 404, {"error": f"{noun} [{','.join(missing)}] missing", "status": 404, **answer}
        return 200, answer

    def _refuse_wildcards(self, targets: str) -> None:
        # DestructiveOperations.failDestructive with action.destructive_requires_name, true by
        # default since 8.0: _all, * and any wildcard are refused.
        expressions = _split(targets)
        if not expressions or any(e == "_all" or "*" in e for e in expressions):
            raise illegal("Wildcard expressions or all indices are not allowed")

    def _delete_indices(self, targets: str, query: Mapping[str, str]) -> dict[str, Any]:
        self._refuse_wildcards(targets)
        for expression in _split(targets):
            if "*" in expression:
                continue
            if expression in self.aliases:
                raise illegal(
                    f"The provided expression [{expression}] matches an alias, specify the "
                    "corresponding concrete indices instead."
                )
            if expression in self.data_streams:
                raise illegal(
                    f"The provided expression [{expression}] matches a data stream, specify "
                    "the corresponding concrete indices instead."
                )
        names = self._resolve(
            targets,
            _expand(query.get("expand_wildcards", "open,closed")),
            ignore_unavailable=_bool(query.get("ignore_unavailable"), default=False),
            allow_no_indices=_bool(query.get("allow_no_indices"), default=True),
        )
        # MetadataDeleteIndexService: the whole request fails on a write index, or on an
        # index a running snapshot holds.
        for name in names:
            for stream in self.data_streams.values():
                if stream.indices and stream.indices[-1] == name:
                    raise illegal(
                        f"index [{name}] is the write index for data stream [{stream.name}] "
                        "and cannot be deleted"
                    )
        held = [f"[{n}/{self.indices[n].uuid}]" for n in names if n in self.snapshotting]
        if held:
            raise EsError(
                400,
                "snapshot_in_progress_exception",
                f"Cannot delete indices that are being snapshotted: [{', '.join(held)}]. Try "
                "again after snapshot finishes or cancel the currently running snapshot.",
            )
        for name in names:
            del self.indices[name]
            for members in self.aliases.values():
                members.pop(name, None)
            for stream in self.data_streams.values():
                if name in stream.indices:
                    stream.indices.remove(name)
        self.aliases = {a: m for a, m in self.aliases.items() if m}
        return {"acknowledged": True}

    def _resolve(
        self, targets: str, expand: set[str], *, ignore_unavailable: bool, allow_no_indices: bool
    ) -> list[str]:
        """Concrete index names for a comma list of expressions (IndexNameExpressionResolver)."""
        found: dict[str, None] = {}
        saw_wildcard = False
        for raw in _split(targets):
            if raw.startswith("-") and saw_wildcard:
                for name in [n for n in found if _glob(n, raw[1:])]:
                    del found[name]
                continue
            expression = "*" if raw == "_all" else raw
            if "*" in expression:
                saw_wildcard = True
                matched = self._expand_wildcard(expression, expand)
                if not matched and not allow_no_indices:
                    raise not_found(expression)
                found.update(dict.fromkeys(matched))
            elif expression in self.indices:
                found[expression] = None
            elif expression in self.aliases:
                found.update(dict.fromkeys(sorted(self.aliases[expression])))
            elif expression in self.data_streams:
                found.update(dict.fromkeys(self.data_streams[expression].indices))
            elif not ignore_unavailable:
                raise not_found(expression)
        return list(found)

    def _expand_wildcard(self, expression: str, expand: set[str]) -> list[str]:
        hidden_ok = "hidden" in expand or expression.startswith(".")

        def state_ok(name: str) -> bool:
            closed = self.indices[name].closed
            return ("closed" in expand) if closed else ("open" in expand)

        matched = [
            n
            for n, i in sorted(self.indices.items())
            if _glob(n, expression) and (hidden_ok or not i.hidden) and state_ok(n)
        ]
        for alias, members in sorted(self.aliases.items()):
            if _glob(alias, expression):
                matched += [m for m in sorted(members) if state_ok(m)]
        for name, stream in sorted(self.data_streams.items()):
            if _glob(name, expression) and (hidden_ok or not stream.hidden):
                matched += [i for i in stream.indices if state_ok(i)]
        return list(dict.fromkeys(matched))

    # -- lifecycle --

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "standin"

    @property
    def standin(self) -> ElasticsearchStandin:
        standin: ElasticsearchStandin = self.server.standin  # type: ignore[attr-defined]
        return standin

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read the request log instead."""

    def parse_request(self) -> bool:
        line = self.raw_requestline.rstrip(b"\r\n")
        if len(line) <= MAX_INITIAL_LINE:
            return super().parse_request()
        # Netty's HttpObjectDecoder (TooLongHttpLineException), answered by Elasticsearch's
        # RestController as a bad request; the rest of the request is read and dropped.
        method, _, rest = line.decode("latin-1").partition(" ")
        self.standin.requests.append(Request(method, rest.rsplit(" ", 1)[0]))
        self.headers = http.client.parse_headers(self.rfile)
        self.rfile.read(int(self.headers.get("content-length", 0) or 0))
        self.request_version = "HTTP/1.1"
        self.requestline = line.decode("latin-1")
        self.command = method
        self.close_connection = True
        error = EsError(
            400,
            "too_long_http_line_exception",
            f"An HTTP line is larger than {MAX_INITIAL_LINE} bytes.",
        )
        self._reply(400, error.body(), JSON, {"Connection": "close"})
        return False

    def _serve(self) -> None:
        standin = self.standin
        with standin.lock:
            standin.requests.append(Request(self.command, self.path))
        if standin.latency_s:
            time.sleep(standin.latency_s)
        body = self.rfile.read(int(self.headers.get("content-length", 0) or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        match = COMPAT.search(headers.get("accept", ""))
        media = f"application/vnd.elasticsearch+json;compatible-with={match[2]}" if match else JSON
        extra: dict[str, str] = {}
        try:
            status, answer = standin.handle(self.command, self.path, headers, body)
        except EsError as error:
            status, answer, extra = error.status, error.body(), error.headers
            if error.status == 401:
                extra = {"WWW-Authenticate": 'Basic realm="security" charset="UTF-8"'}
        except (ValueError, TypeError) as problem:
            error = EsError(400, "parse_exception", str(problem))
            status, answer = 400, error.body()
        self._reply(status, None if self.command == "HEAD" else answer, media, extra)

    def _reply(self, status: int, answer: Any, media: str, extra: Mapping[str, str]) -> None:
        payload = b"" if answer is None else json.dumps(answer).encode()
        self.send_response(status)
        if self.standin.product_header:
            self.send_header("X-Elastic-Product", "Elasticsearch")
        if payload:
            self.send_header("Content-Type", media)
        self.send_header("Content-Length", str(len(payload)))
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        if payload:
            self.wfile.write(payload)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _serve


# -- helpers shared by the APIs --


def _params(path: str, query: Mapping[str, str], *allowed: str) -> None:
    for name in query:
        if name not in allowed and name not in COMMON_PARAMS:
            raise illegal(f"request [{path}] contains unrecognized parameter: [{name}]")


def _split(expressions: str) -> list[str]:
    return [e for e in expressions.split(",") if e]


def _bool(value: str | None, *, default: bool) -> bool:
    if value is None:
        return default
    if value in ("", "true"):
        return True
    if value == "false":
        return False
    raise illegal(f"Failed to parse value [{value}] as only [true] or [false] are allowed.")


def _expand(value: str) -> set[str]:
    states: set[str] = set()
    for word in _split(value):
        if word == "all":
            states |= {"open", "closed", "hidden"}
        elif word in ("open", "closed", "hidden"):
            states.add(word)
        elif word != "none":
            raise illegal(
                "No enum constant org.elasticsearch.action.support.IndicesOptions."
                f"WildcardStates.{word.upper()}"
            )
    return states


def _compat_version(header: str | None) -> int | None:
    match = COMPAT.search(header or "")
    return int(match[2]) if match else None


def _validate_name(name: str) -> None:
    # MetadataCreateIndexService.validateIndexOrAliasName
    problem = None
    if name != name.lower():
        problem = "must be lowercase"
    elif name.startswith(("_", "-", "+")):
        problem = "must not start with '_', '-', or '+'"
    elif set(name) & INVALID_NAME_CHARS:
        problem = 'must not contain the following characters [ , ", *, \\, <, |, ,, >, /, ?, #, :]'
    elif name in (".", ".."):
        problem = "must not be '.' or '..'"
    elif len(name.encode()) > 255:
        problem = "index name is too long, (must be <= 255)"
    if problem:
        raise EsError(
            400,
            "invalid_index_name_exception",
            f"Invalid index name [{name}], {problem}",
            index=name,
            index_uuid="_na_",
        )


@functools.lru_cache(maxsize=4096)
def _wildcard(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def _glob(name: str, pattern: str) -> bool:
    """Elasticsearch's Regex.simpleMatch: ``*`` is the only wildcard."""
    return _wildcard(pattern).fullmatch(name) is not None


def _overlaps(left: str, right: str) -> bool:
    return _glob(left, right) or _glob(right, left)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _nest(flat: Mapping[str, str]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


_NOTHING = object()


def filter_path(document: Any, expression: str) -> Any:
    """Elasticsearch's response filtering: ``*`` within a segment, ``**`` for any depth."""
    filters = [f.split(".") for f in _split(expression)]
    kept = _walk(document, filters)
    return {} if kept is _NOTHING else kept


def _walk(node: Any, filters: list[list[str]]) -> Any:
    if any(not f for f in filters):
        return node
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            rest: list[list[str]] = []
            for f in filters:
                if f[0] == "**":
                    rest.append(f)
                    if len(f) > 1 and _glob(key, f[1]):
                        rest.append(f[2:])
                elif _glob(key, f[0]):
                    rest.append(f[1:])
            if rest:
                kept = _walk(value, rest)
                if kept is not _NOTHING:
                    out[key] = kept
        return out or _NOTHING
    if isinstance(node, list):
        items = [k for k in (_walk(v, filters) for v in node) if k is not _NOTHING]
        return items or _NOTHING
    return _NOTHING


@contextmanager
def running_standin(**options: Any) -> Iterator[ElasticsearchStandin]:
    """A started stand-in (options as :class:`ElasticsearchStandin`), stopped on exit."""
    standin = ElasticsearchStandin(**options)
    standin.start()
    try:
        yield standin
    finally:
        standin.stop()


# -- the fixtures: one Elasticsearch per test, the stand-in or a real cluster --


@dataclass
class Cluster:
    """An Elasticsearch for one test, seeded and inspected through its REST API only.

    Against a real cluster (``JANITOR_TEST_ELASTICSEARCH_URL``, optionally with
    ``JANITOR_TEST_ELASTICSEARCH_API_KEY`` / ``_CA_BUNDLE``) every name carries a prefix
    unique to the test, and everything created is deleted at teardown.
    """

    url: str
    admin: Elasticsearch
    prefix: str
    standin: ElasticsearchStandin | None
    api_key: str | None = None
    ca_bundle: Path | None = None
    streams: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)

    @property
    def patterns(self) -> tuple[str, ...]:
        """The shippers' patterns (fluentd.*, vector.*), narrowed to this test's names."""
        return (f"fluentd.{self.prefix}-*", f"vector.{self.prefix}-*")

    def name(self, shipper: str, rest: str) -> str:
        """e.g. ``name("fluentd", "quasar-1234.2026.11.01")``: a shipper's index name."""
        return f"{shipper}.{self.prefix}-{rest}"

    def connect(self, retries: int = 4) -> Elasticsearch:
        """The janitor's own client to this cluster."""
        return connect_elasticsearch(
            self.url,
            username=None,
            password=None,
            api_key=self.api_key,
            ca_bundle=self.ca_bundle,
            retries=retries,
        )

    def create_index(
        self,
        name: str,
        created: datetime | None = None,
        *,
        hidden: bool = False,
        closed: bool = False,
        lifecycle: str | None = None,
    ) -> str:
        settings: dict[str, Any] = {"number_of_shards": 1, "number_of_replicas": 0}
        if created is not None:
            # Settable at creation only (elastic/elasticsearch#7218): backdates an index.
            settings["creation_date"] = int(created.timestamp() * 1000)
        if hidden:
            settings["hidden"] = True
        if lifecycle is not None:
            # ILM accepts a policy name it does not know yet (the index waits for it).
            settings["lifecycle"] = {"name": lifecycle}
        self.created.append(name)
        self.admin.indices.create(index=name, settings={"index": settings})
        if closed:
            self.admin.indices.close(index=name)
        return name

    def create_data_stream(
        self, name: str, generations: int = 1, *, hidden: bool = False
    ) -> list[str]:
        """A data stream with ``generations`` backing indices; returns them, write index last.
        A ``hidden`` one is matched by a wildcard only when it starts with a dot."""
        template = f"{self.prefix}-{len(self.templates)}-template"
        self.admin.indices.put_index_template(
            name=template,
            index_patterns=[f"{name}*"],
            data_stream={"hidden": True} if hidden else {},
            priority=500,
        )
        self.templates.append(template)
        self.admin.indices.create_data_stream(name=name)
        self.streams.append(name)
        for _ in range(generations - 1):
            self.admin.indices.rollover(alias=name)
        return self.backing_indices(name)

    def backing_indices(self, stream: str) -> list[str]:
        answer = self.admin.indices.get_data_stream(name=stream).body
        return [i["index_name"] for i in answer["data_streams"][0]["indices"]]

    def add_alias(self, index: str, alias: str, *, is_write_index: bool | None = None) -> None:
        self.admin.indices.put_alias(index=index, name=alias, is_write_index=is_write_index)

    def existing(self) -> set[str]:
        """Every index of this test still on the server, hidden and closed ones included."""
        answer = self.admin.indices.get_settings(
            index=[f"*{self.prefix}*"],
            expand_wildcards="all",
            filter_path=["*.settings.index.uuid"],
        ).body
        return set(answer)

    def cleanup(self) -> None:
        for stream in self.streams:
            with suppress(NotFoundError):
                self.admin.indices.delete_data_stream(name=stream)
        for template in self.templates:
            with suppress(NotFoundError):
                self.admin.indices.delete_index_template(name=template)
        for name in self.created:
            # 400: a test turned the name into an alias; it goes with its index.
            with suppress(NotFoundError, BadRequestError):
                self.admin.indices.delete(index=name)


def real_cluster_url() -> str | None:
    return os.environ.get(REAL_URL_ENV) or None


def standin_only() -> None:
    """Skip the calling test against a real cluster: it needs a configured stand-in."""
    if real_cluster_url():
        pytest.skip(f"stand-in only: needs a server configured for the case ({REAL_URL_ENV} set)")


@pytest.fixture
def es_cluster() -> Iterator[Cluster]:
    """The real cluster named by JANITOR_TEST_ELASTICSEARCH_URL, else a fresh stand-in."""
    prefix = f"jt{uuid.uuid4().hex[:8]}"
    url = real_cluster_url()
    if url is None:
        with running_standin() as standin:
            admin = Elasticsearch(standin.url)
            cluster = Cluster(standin.url, admin, prefix, standin)
            yield cluster
            admin.close()
        return
    api_key = os.environ.get("JANITOR_TEST_ELASTICSEARCH_API_KEY") or None
    ca = os.environ.get("JANITOR_TEST_ELASTICSEARCH_CA_BUNDLE") or None
    admin = Elasticsearch(url, api_key=api_key, ca_certs=ca)
    cluster = Cluster(url, admin, prefix, None, api_key, Path(ca) if ca else None)
    try:
        yield cluster
    finally:
        cluster.cleanup()
        admin.close()


@pytest.fixture
def tls(tmp_path: Path) -> Tls:
    """A throwaway CA and a certificate for 127.0.0.1."""
    return make_tls(tmp_path / "tls")


def request_lines(standin: ElasticsearchStandin, method: str | None = None) -> list[str]:
    with standin.lock:
        return [r.line for r in standin.requests if method is None or r.method == method]
