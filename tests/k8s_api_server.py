"""A loopback stand-in for the slice of the Kubernetes API the janitor calls.

It speaks what the official kubernetes client sends for the run lock and the run summary:
``coordination.k8s.io/v1`` Leases (get, create, replace), core ``v1`` Events (create) and
``batch/v1`` CronJobs (get). It keeps the API server's rules that the lock relies on:

- a create of an existing name answers 409 ``AlreadyExists``;
- a replace must carry ``metadata.resourceVersion`` (422 otherwise, as for every kind whose
  strategy forbids unconditional updates) and answers 409 ``Conflict`` when it is stale;
- ``MicroTime`` fields (``acquireTime``, ``renewTime``) are parsed with Go's
  ``2006-01-02T15:04:05.000000Z07:00`` layout: exactly six fractional digits, else 400;
- an Event's ``involvedObject.namespace`` must equal its own namespace (core validation).

``race_next_write`` lets a test play the other pod: its change lands between the client's
read and its write, exactly the window a real race hits.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import secrets
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes import client

LEASES = re.compile(r"^/apis/coordination\.k8s\.io/v1/namespaces/([^/]+)/leases(?:/([^/?]+))?$")
EVENTS = re.compile(r"^/api/v1/namespaces/([^/]+)/events$")
CRONJOBS = re.compile(r"^/apis/batch/v1/namespaces/([^/]+)/cronjobs/([^/?]+)$")
MICRO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})$")

Json = dict[str, Any]


class ApiError(Exception):
    def __init__(self, code: HTTPStatus, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message

    def status(self) -> Json:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": int(self.code),
        }


@dataclass
class ApiState:
    """What the stand-in API server holds; read it in assertions under ``lock``."""

    leases: dict[tuple[str, str], Json] = field(default_factory=dict)
    events: list[Json] = field(default_factory=list)
    cronjobs: dict[tuple[str, str], Json] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    forbidden: bool = False
    race: Callable[[ApiState], None] | None = None
    lock: threading.Condition = field(default_factory=threading.Condition)
    versions: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def next_version(self) -> str:
        return str(next(self.versions))

    def put_lease(self, namespace: str, name: str, spec: Json) -> Json:
        """Store a Lease as another writer would (a fresh resourceVersion)."""
        lease: Json = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "uid": secrets.token_hex(8),
                "resourceVersion": self.next_version(),
                "creationTimestamp": _now_rfc3339(),
            },
            "spec": spec,
        }
        old = self.leases.get((namespace, name))
        if old is not None:
            lease["metadata"]["uid"] = old["metadata"]["uid"]
            lease["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"]
        self.leases[(namespace, name)] = lease
        return lease

    def wait_for(self, predicate: Callable[[ApiState], bool], timeout_s: float = 30.0) -> bool:
        """Block until ``predicate`` holds after some write (a generous bound, not a timing)."""
        with self.lock:
            return self.lock.wait_for(lambda: predicate(self), timeout=timeout_s)


def _now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_micro_times(spec: Json) -> None:
    for key in ("acquireTime", "renewTime"):
        value = spec.get(key)
        if value is not None and not MICRO_TIME.match(str(value)):
            raise ApiError(
                HTTPStatus.BAD_REQUEST,
                "BadRequest",
                f'parsing time "{value}" as "2006-01-02T15:04:05.000000Z07:00": '
                f"cannot parse as MicroTime ({key})",
            )


def _not_found(resource: str, name: str) -> ApiError:
    return ApiError(HTTPStatus.NOT_FOUND, "NotFound", f'{resource} "{name}" not found')


def _handle(state: ApiState, method: str, path: str, body: Json | None) -> tuple[int, Json]:
    if state.forbidden:
        raise ApiError(
            HTTPStatus.FORBIDDEN,
            "Forbidden",
            f'{method} {path} is forbidden: User "system:serviceaccount:test:janitor" cannot',
        )
    if method in ("POST", "PUT") and state.race is not None:
        race, state.race = state.race, None
        race(state)
    if match := LEASES.match(path):
        return _leases(state, method, match[1], match[2], body)
    if (match := EVENTS.match(path)) and method == "POST":
        return _create_event(state, match[1], body or {})
    if (match := CRONJOBS.match(path)) and method == "GET":
        cronjob = state.cronjobs.get((match[1], match[2]))
        if cronjob is None:
            raise _not_found("cronjobs.batch", match[2])
        return HTTPStatus.OK, cronjob
    raise ApiError(HTTPStatus.NOT_FOUND, "NotFound", f"the server could not find {path}")


def _leases(
    state: ApiState, method: str, namespace: str, name: str | None, body: Json | None
) -> tuple[int, Json]:
    resource = "leases.coordination.k8s.io"
    if method == "GET" and name is not None:
        lease = state.leases.get((namespace, name))
        if lease is None:
            raise _not_found(resource, name)
        return HTTPStatus.OK, lease
    if method == "POST" and name is None and body is not None:
        name = body.get("metadata", {}).get("name")
        if not name:
            raise ApiError(HTTPStatus.UNPROCESSABLE_ENTITY, "Invalid", "metadata.name: Required")
        if (namespace, name) in state.leases:
            raise ApiError(
                HTTPStatus.CONFLICT, "AlreadyExists", f'{resource} "{name}" already exists'
            )
        spec = body.get("spec", {})
        _check_micro_times(spec)
        return HTTPStatus.CREATED, state.put_lease(namespace, name, spec)
    if method == "PUT" and name is not None and body is not None:
        current = state.leases.get((namespace, name))
        if current is None:
            raise _not_found(resource, name)
        version = body.get("metadata", {}).get("resourceVersion")
        if not version:
            raise ApiError(
                HTTPStatus.UNPROCESSABLE_ENTITY,
                "Invalid",
                "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update",
            )
        if version != current["metadata"]["resourceVersion"]:
            raise ApiError(
                HTTPStatus.CONFLICT,
                "Conflict",
                f'Operation cannot be fulfilled on {resource} "{name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
            )
        spec = body.get("spec", {})
        _check_micro_times(spec)
        return HTTPStatus.OK, state.put_lease(namespace, name, spec)
    raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED, "MethodNotAllowed", f"{method} not allowed")


def _create_event(state: ApiState, namespace: str, body: Json) -> tuple[int, Json]:
    event = copy.deepcopy(body)
    metadata = event.setdefault("metadata", {})
    involved = event.get("involvedObject", {})
    if involved.get("namespace") != namespace:
        raise ApiError(
            HTTPStatus.UNPROCESSABLE_ENTITY,
            "Invalid",
            f"involvedObject.namespace: Invalid value: {involved.get('namespace')!r}: "
            "does not match event.namespace",
        )
    if not metadata.get("name"):
        if not metadata.get("generateName"):
            raise ApiError(HTTPStatus.UNPROCESSABLE_ENTITY, "Invalid", "metadata.name: Required")
        metadata["name"] = metadata["generateName"] + secrets.token_hex(3)
    metadata.update(
        namespace=namespace, resourceVersion=state.next_version(), uid=secrets.token_hex(8)
    )
    state.events.append(event)
    return HTTPStatus.CREATED, event


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def _serve(self) -> None:
        state = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        with state.lock:
            state.requests.append((self.command, path))
            try:
                body = json.loads(raw) if raw else None
                code, answer = _handle(state, self.command, path, body)
            except ApiError as exc:
                code, answer = exc.code, exc.status()
            state.lock.notify_all()
        payload = json.dumps(answer).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = _serve

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests assert on recorded state, not on access logs."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: ApiState) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state


@contextmanager
def running_api_server() -> Iterator[tuple[str, ApiState]]:
    """Start the stand-in on a free loopback port; yields its base URL and state."""
    state = ApiState()
    server = _Server(state)
    thread = threading.Thread(
        target=server.serve_forever, args=(0.05,), name="k8s-api-stand-in", daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def api() -> Iterator[tuple[client.ApiClient, ApiState]]:
    """A real kubernetes ApiClient pointed at a fresh stand-in, and the stand-in's state."""
    with running_api_server() as (url, state):
        api_client = client.ApiClient(client.Configuration(host=url))
        try:
            yield api_client, state
        finally:
            api_client.close()  # type: ignore[no-untyped-call]
