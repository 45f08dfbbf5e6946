"""Real Prometheus servers for the tests, plus the small loopback servers around them: a
bearer-token proxy, a page that is not Prometheus, and a Kubernetes API answering fixed GETs.

Everything listens on 127.0.0.1 on ports picked at runtime and is stopped and removed by
the context managers that start it.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import bcrypt

from tests.loopback import Tls, free_port, stop

PROMETHEUS = "/usr/bin/prometheus"
READY_LINE = "Server is ready to receive web requests."
# Generous for a loaded CI machine; a healthy server is ready in well under a second.
START_TIMEOUT_S = 60.0
PORT_ATTEMPTS = 3


@contextmanager
def running_prometheus(
    workdir: Path,
    *flags: str,
    web_config: Mapping[str, Any] | None = None,
    scrape_configs: Sequence[Mapping[str, Any]] = (),
) -> Iterator[str]:
    """A real Prometheus started with ``flags``, scraping ``scrape_configs`` (by default
    nothing: most tests read status endpoints only, and a quiet server starts fast);
    yields its base URL."""
    workdir.mkdir(parents=True)
    config = workdir / "prometheus.yml"
    settings = {"global": {"scrape_interval": "1h"}, "scrape_configs": list(scrape_configs)}
    config.write_text(json.dumps(settings))  # JSON is YAML
    command = [
        PROMETHEUS,
        f"--config.file={config}",
        "--log.level=info",
        *flags,
    ]
    if not any(f.startswith("--storage.") and ".path=" in f for f in flags):
        command.append(f"--storage.tsdb.path={workdir / 'data'}")
    scheme = "http"
    if web_config is not None:
        web_file = workdir / "web.yml"
        web_file.write_text(json.dumps(web_config))  # JSON is YAML
        command.append(f"--web.config.file={web_file}")
        scheme = "https" if "tls_server_config" in web_config else "http"
    log = workdir / "prometheus.log"
    # Another suite on this machine may bind the free port between the probe and Prometheus'
    # own bind: then try another one.
    for attempt in range(PORT_ATTEMPTS):
        port = free_port()
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [*command, f"--web.listen-address=127.0.0.1:{port}"],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_for_line(process, log, READY_LINE)
            break
        except RuntimeError as error:
            stop(process)
            if "address already in use" not in str(error) or attempt == PORT_ATTEMPTS - 1:
                raise
    try:
        yield f"{scheme}://127.0.0.1:{port}"
    finally:
        stop(process)


def wait_for_line(process: subprocess.Popen[bytes], log: Path, line: str) -> None:
    """Waits (bounded) for a server started by a test to write ``line`` to its ``log``."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while line not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            text = log.read_text(errors="replace")
            raise RuntimeError(f"{process.args[0]} did not start:\n{text}")
        time.sleep(0.02)


def web_config(*, tls: Tls, users: Mapping[str, str]) -> dict[str, Any]:
    """A Prometheus ``--web.config.file``: TLS with ``tls`` and basic auth for ``users``."""
    return {
        "tls_server_config": {"cert_file": str(tls.cert), "key_file": str(tls.key)},
        "basic_auth_users": hashed_users(users),
    }


def hashed_users(users: Mapping[str, str]) -> dict[str, str]:
    """``basic_auth_users`` of a Prometheus-style ``--web.config.file``."""
    # bcrypt's minimum cost: the server checks the hash on every request, and the tests
    # need the real check, not its cost.
    return {
        user: bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        for user, password in users.items()
    }


@dataclass(frozen=True)
class Request:
    """One request a loopback server received; header names in lower case."""

    method: str
    path: str
    headers: Mapping[str, str]


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass
class LoopbackServer:
    """A running loopback HTTP server and every request it received, in order."""

    url: str
    requests: list[Request] = field(default_factory=list)


@contextmanager
def serving(respond: Callable[[Request], Answer]) -> Iterator[LoopbackServer]:
    """A loopback HTTP server answering every request with ``respond(request)``."""
    server_state = LoopbackServer(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            headers = {name.lower(): value for name, value in self.headers.items()}
            request = Request("GET", self.path, headers)
            server_state.requests.append(request)
            answer = respond(request)
            self.send_response(answer.status)
            self.send_header("Content-Type", answer.content_type)
            self.send_header("Content-Length", str(len(answer.body)))
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(answer.body)

        def log_message(self, format: str, *args: Any) -> None:
            """Keep the test output clean; the requests are recorded instead."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server_state.url = f"http://127.0.0.1:{server.server_address[1]}"
    # A short poll interval: shutdown() waits for it, once per server.
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield server_state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def bearer_proxy(upstream: str, token: str) -> Callable[[Request], Answer]:
    """An auth proxy in front of Prometheus (Prometheus itself has no bearer auth): requests
    with ``Authorization: Bearer <token>`` are forwarded to ``upstream``, others get 401."""

    def respond(request: Request) -> Answer:
        if not _has_bearer(request, token):
            return Answer(401, b"unauthorized\n", "text/plain", {"WWW-Authenticate": "Bearer"})
        try:
            with urllib.request.urlopen(upstream + request.path) as upstream_answer:  # noqa: S310
                return Answer(
                    upstream_answer.status,
                    upstream_answer.read(),
                    upstream_answer.headers["Content-Type"],
                )
        except urllib.error.HTTPError as refused:
            return Answer(refused.code, refused.read(), refused.headers["Content-Type"])

    return respond


def _has_bearer(request: Request, token: str) -> bool:
    # The scheme is case-insensitive (RFC 9110); kubernetes' in-cluster config sends "bearer".
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and value == token


def login_page(_: Request) -> Answer:
    """What an ingress with single sign-on answers in place of the API: a 200 HTML page."""
    return Answer(200, b"<html><body>Please log in</body></html>", "text/html; charset=utf-8")


def kubernetes_api(
    objects: Mapping[str, Mapping[str, Any]], token: str
) -> Callable[[Request], Answer]:
    """The GETs of a Kubernetes API server for ``objects`` (by request path): 401 without the
    bearer token, 404 Status for anything else, like the real server."""

    def status(code: int, reason: str, message: str) -> Answer:
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason,
            "code": code,
        }
        return Answer(code, json.dumps(body).encode())

    def respond(request: Request) -> Answer:
        if not _has_bearer(request, token):
            return status(401, "Unauthorized", "Unauthorized")
        found = objects.get(request.path)
        if found is None:
            return status(404, "NotFound", f"{request.path} not found")
        if found.get("kind") == "Status":
            return status(found["code"], found["reason"], found["message"])
        return Answer(200, json.dumps(found).encode())

    return respond
