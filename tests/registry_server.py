"""Real Docker registries for the registry tests and benchmark, and what they need.

- ``run_registry``: the Debian ``docker-registry`` binary (distribution 2.8.2) on a free
  loopback port, with a generated config in a temp dir: deletion enabled or disabled,
  htpasswd basic auth, or ``auth: token`` over TLS backed by ``TokenIssuer``.
- ``Pusher``: pushes images through the HTTP API (blobs, then manifests): single-arch,
  Docker manifest lists and OCI indexes, extra tags on one digest. Also reads the real
  state (tags, manifests) the tests assert on.
- ``Proxy``: a loopback HTTP proxy in front of a registry that counts requests, adds
  latency, injects faults (503s, invalid JSON, odd tag listings) and can paginate
  ``tags/list`` the way distribution 3 does (2.8.2 ignores ``n`` and answers every tag), or
  the way a broken proxy does that drops ``last=`` and serves the first page again. It can
  also play a front-end as found in the wild: drop answer headers (``Docker-Content-Digest``),
  rewrite statuses (202 to 200), or answer some requests itself (``gate``: e.g. a token
  auth front-end that wants ``*`` for DELETE).
- ``dangle``: makes a dangling tag in a registry's storage, as a manifest lost outside the
  API leaves it: ``tags/list`` still lists the tag, its manifest is unknown.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import re
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit

import bcrypt
import jwt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from janitor.clients.http import HttpOptions
from janitor.clients.registry import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    MANIFEST_ACCEPT,
    OCI_INDEX,
    OCI_MANIFEST,
    RegistryClient,
    connect_registry,
)
from tests.loopback import Tls, free_port, make_tls, stop

REGISTRY_BINARY = "/usr/bin/docker-registry"
LOOPBACK = "127.0.0.1"
SERVICE = "janitor-test-registry"
ISSUER = "janitor-test-issuer"
USERNAME = "janitor"
PASSWORD = "not-a-real-secret-9f2c"
READER = "reader"
STARTUP_TIMEOUT_S = 15.0


def unique_release(prefix: str = "rel") -> str:
    """A release name no other test uses, valid for Houston (SPEC.md)."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- certificates and the token issuer -------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def libtrust_key_id(public_key: rsa.RSAPublicKey) -> str:
    """distribution's ``kid``: SHA-256 of the DER public key, 240 bits, base32 in groups of 4
    (docker/libtrust util.go keyIDFromCryptoKey)."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    encoded = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode().rstrip("=")
    return ":".join(encoded[i : i + 4] for i in range(0, len(encoded), 4))


class TokenIssuer:
    """A tiny Docker token service (distribution docs/spec/auth/token.md) on loopback.

    ``users`` maps a name to its password and the actions it may be granted. ``issued``
    records (user, scope) per token; ``spoil_next`` makes the next tokens unusable (wrong
    audience) so a test can watch the client fetch a fresh one on 401.
    """

    def __init__(self, directory: Path, users: dict[str, tuple[str, frozenset[str]]]) -> None:
        self.users = users
        self.issued: list[tuple[str, str]] = []
        self.spoil_next = 0
        self.lifetime_s = 300
        self._lock = threading.Lock()
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = datetime.now(UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name("janitor test token signer"))
            .issuer_name(_name("janitor test token signer"))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .sign(self._key, hashes.SHA256())
        )
        self.certificate = directory / "token-signer.pem"
        self.certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        self._kid = libtrust_key_id(self._key.public_key())
        self._server = ThreadingHTTPServer((LOOPBACK, 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://{LOOPBACK}:{self._server.server_address[1]}/token"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def mint(self, scope: str, *, audience: str = SERVICE, subject: str = USERNAME) -> str:
        """A signed token granting ``scope`` (``repository:name:a,b``), as the service would."""
        access = []
        if scope:
            kind, rest = scope.split(":", 1)
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": audience,
            "exp": now + self.lifetime_s,
            "nbf": now - 10,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
        }
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self._kid})

    def _grant(self, user: str, password: str, scope: str) -> str | None:
        known = self.users.get(user)
        if known is None or known[0] != password:
            return None
        if not scope:
            return ""
        kind, rest = scope.split(":", 1)
        name, _, actions = rest.rpartition(":")
        granted = [a for a in actions.split(",") if a in known[1]]
        return f"{kind}:{name}:{','.join(granted)}" if granted else ""

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate writes: without TCP_NODELAY, Nagle and the
            # client's delayed ACK add ~40 ms to every answer.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                query = parse_qs(urlsplit(self.path).query)
                scope = (query.get("scope") or [""])[0]
                user, password = "", ""
                header = self.headers.get("Authorization", "")
                if header.startswith("Basic "):
                    user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                granted = issuer._grant(user, password, scope)
                if granted is None:
                    self._answer(401, {"details": "bad credentials"})
                    return
                with issuer._lock:
                    issuer.issued.append((user, scope))
                    spoil = issuer.spoil_next > 0
                    issuer.spoil_next -= 1 if spoil else 0
                token = issuer.mint(granted, audience="elsewhere" if spoil else SERVICE)
                self._answer(
                    200, {"token": token, "access_token": token, "expires_in": issuer.lifetime_s}
                )

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


# --- the registry process --------------------------------------------------------------


@dataclass
class Registry:
    """A running registry and how to talk to it."""

    url: str
    root: Path
    process: subprocess.Popen[bytes]
    ca_bundle: Path | None = None
    username: str | None = None
    password: str | None = None
    issuer: TokenIssuer | None = None

    def pusher(self) -> Pusher:
        return Pusher(self)


def _write_htpasswd(path: Path, users: dict[str, str]) -> None:
    # Cost 4: the registry checks the hash on every request; the tests need no real strength.
    lines = [
        f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()}"
        for user, password in users.items()
    ]
    path.write_text("\n".join(lines) + "\n")


@contextmanager
def run_registry(
    directory: Path,
    *,
    delete_enabled: bool = True,
    htpasswd: dict[str, str] | None = None,
    issuer: TokenIssuer | None = None,
    tls: Tls | None = None,
) -> Iterator[Registry]:
    """Starts ``docker-registry serve`` on a free loopback port and stops it afterwards."""
    directory.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "version": 0.1,
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(directory / "data")},
            "delete": {"enabled": delete_enabled},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"secret": uuid.uuid4().hex},
    }
    if tls is not None:
        config["http"]["tls"] = {"certificate": str(tls.cert), "key": str(tls.key)}
    if htpasswd is not None:
        _write_htpasswd(directory / "htpasswd", htpasswd)
        config["auth"] = {
            "htpasswd": {"realm": "janitor-test", "path": str(directory / "htpasswd")}
        }
    if issuer is not None:
        config["auth"] = {
            "token": {
                "realm": issuer.url,
                "service": SERVICE,
                "issuer": ISSUER,
                "rootcertbundle": str(issuer.certificate),
            }
        }
    scheme = "https" if tls is not None else "http"
    with (directory / "registry.log").open("wb") as log:
        # The free port may be taken between probing and binding: try another one.
        for attempt in range(3):
            port = free_port()
            config["http"]["addr"] = f"{LOOPBACK}:{port}"
            # JSON is YAML: no YAML writer needed for the registry's config file.
            (directory / "config.yml").write_text(json.dumps(config))
            process = subprocess.Popen(
                [REGISTRY_BINARY, "serve", str(directory / "config.yml")], stdout=log, stderr=log
            )
            registry = Registry(f"{scheme}://{LOOPBACK}:{port}", directory, process)
            registry.ca_bundle = tls.ca if tls is not None else None
            if htpasswd is not None:
                registry.username, registry.password = next(iter(htpasswd.items()))
            registry.issuer = issuer
            try:
                _wait_ready(registry, directory / "registry.log")
                break
            except RegistryExitedError:
                if attempt == 2:
                    raise
        try:
            yield registry
        finally:
            stop(process)


class RegistryExitedError(RuntimeError):
    """docker-registry stopped before answering (e.g. its port was taken)."""


def _wait_ready(registry: Registry, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    verify: str | bool = str(registry.ca_bundle) if registry.ca_bundle else True
    while True:
        if registry.process.poll() is not None:
            raise RegistryExitedError(f"docker-registry exited: {log.read_text()[-2000:]}")
        with suppress(requests.ConnectionError):
            response = requests.get(f"{registry.url}/v2/", timeout=2, verify=verify)
            if "Docker-Distribution-API-Version" in response.headers:
                return
        if time.monotonic() > deadline:
            registry.process.kill()
            registry.process.wait()
            raise RuntimeError(f"docker-registry did not answer: {log.read_text()[-2000:]}")
        time.sleep(0.05)


# --- pushing images through the API ----------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    digest: str
    media_type: str
    body: bytes


@dataclass
class Pusher:
    """Pushes images the way ``docker push`` does: blobs first, then manifests."""

    registry: Registry
    session: requests.Session = field(default_factory=requests.Session)
    _blobs: dict[str, str] = field(default_factory=dict)  # digest -> a repository holding it
    _linked: set[tuple[str, str]] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        # requests lets REQUESTS_CA_BUNDLE from the environment override session.verify.
        self.session.trust_env = False
        if self.registry.ca_bundle is not None:
            self.session.verify = str(self.registry.ca_bundle)
        user, password = self.registry.username, self.registry.password
        if self.registry.issuer is None and user is not None and password is not None:
            self.session.auth = (user, password)

    def _headers(self, repository: str, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if self.registry.issuer is not None:
            scope = f"repository:{repository}:pull,push,delete"
            headers["Authorization"] = f"Bearer {self.registry.issuer.mint(scope)}"
        return headers

    def _url(self, repository: str, kind: str, reference: str = "") -> str:
        return f"{self.registry.url}/v2/{repository}/{kind}/{reference}"

    def blob(self, repository: str, data: bytes) -> tuple[str, int]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with self._lock:
            if (repository, digest) in self._linked:
                return digest, len(data)
            source = self._blobs.get(digest)
        url = self._url(repository, "blobs", "uploads/")
        params = {"mount": digest, "from": source} if source else None
        response = self.session.post(url, params=params, headers=self._headers(repository))
        if response.status_code != 201:  # no mount: upload the bytes monolithically
            assert response.status_code == 202, response.text
            location = response.headers["Location"]
            response = self.session.put(
                location,
                params={"digest": digest},
                data=data,
                headers=self._headers(repository, {"Content-Type": "application/octet-stream"}),
            )
            assert response.status_code == 201, response.text
        with self._lock:
            self._blobs.setdefault(digest, repository)
            self._linked.add((repository, digest))
        return digest, len(data)

    def put_manifest(self, repository: str, reference: str, manifest: Manifest) -> Manifest:
        response = self.session.put(
            self._url(repository, "manifests", quote(reference, safe=":")),
            data=manifest.body,
            headers=self._headers(repository, {"Content-Type": manifest.media_type}),
        )
        assert response.status_code == 201, response.text
        assert response.headers["Docker-Content-Digest"] == manifest.digest
        return manifest

    def image(
        self,
        repository: str,
        tag: str | None,
        *,
        arch: str = "amd64",
        label: str = "",
        oci: bool = False,
    ) -> Manifest:
        """A single-platform image; pushed under ``tag``, or by digest only (a child)."""
        config = json.dumps(
            {
                "architecture": arch,
                "os": "linux",
                "config": {"Labels": {"janitor.test": label}},
                "rootfs": {"type": "layers", "diff_ids": []},
            }
        ).encode()
        config_digest, config_size = self.blob(repository, config)
        layer_digest, layer_size = self.blob(repository, b"janitor test layer")
        media_type = OCI_MANIFEST if oci else DOCKER_MANIFEST
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": media_type,
                "config": {
                    "mediaType": "application/vnd.oci.image.config.v1+json"
                    if oci
                    else "application/vnd.docker.container.image.v1+json",
                    "digest": config_digest,
                    "size": config_size,
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip"
                        if oci
                        else "application/vnd.docker.image.rootfs.diff.tar.gzip",
                        "digest": layer_digest,
                        "size": layer_size,
                    }
                ],
            }
        ).encode()
        manifest = Manifest("sha256:" + hashlib.sha256(body).hexdigest(), media_type, body)
        return self.put_manifest(repository, tag or manifest.digest, manifest)

    def index(self, repository: str, tag: str, *, oci: bool, label: str = "") -> Manifest:
        """A multi-arch image: amd64 and arm64 children by digest, the index under ``tag``."""
        children = [
            (arch, self.image(repository, None, arch=arch, label=f"{label}-{arch}", oci=oci))
            for arch in ("amd64", "arm64")
        ]
        media_type = OCI_INDEX if oci else DOCKER_MANIFEST_LIST
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": media_type,
                "manifests": [
                    {
                        "mediaType": child.media_type,
                        "digest": child.digest,
                        "size": len(child.body),
                        "platform": {"architecture": arch, "os": "linux"},
                    }
                    for arch, child in children
                ],
            }
        ).encode()
        manifest = Manifest("sha256:" + hashlib.sha256(body).hexdigest(), media_type, body)
        return self.put_manifest(repository, tag, manifest)

    def tags(self, repository: str) -> list[str] | None:
        """The registry's real tag list, sorted; None when it does not know the repository."""
        response = self.session.get(
            self._url(repository, "tags", "list"), headers=self._headers(repository)
        )
        if response.status_code == 404:
            return None
        assert response.status_code == 200, response.text
        return sorted(response.json().get("tags") or [])

    def exists(self, repository: str, reference: str) -> bool:
        response = self.session.head(
            self._url(repository, "manifests", reference),
            headers=self._headers(repository, {"Accept": MANIFEST_ACCEPT}),
        )
        assert response.status_code in (200, 404), response.status_code
        return response.status_code == 200


# --- the proxy -------------------------------------------------------------------------


@dataclass
class Fault:
    """An answer the proxy gives instead of forwarding, ``times`` times (None: always)."""

    method: str
    path_contains: str
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    times: int | None = 1
    served: int = 0


def request_kind(path: str) -> str:
    """``tags``, ``manifests``, ``blobs``, ``ping`` or ``other``, from a request path."""
    route = urlsplit(path).path
    for kind in ("/tags/list", "/manifests/", "/blobs/"):
        if kind in route:
            return kind.strip("/").split("/")[0]
    return "ping" if route == "/v2/" else "other"


Exchange = tuple[int, dict[str, str], bytes]
"""An answer: status, headers, body."""
Gate = Callable[[str, str, dict[str, str]], Exchange | None]
"""Answers a request (method, path, headers) itself, or None to forward it."""


class Proxy:
    """A loopback HTTP proxy in front of ``upstream`` (plain HTTP).

    ``delay_s`` is added to every forwarded request (a registry across a network);
    ``page_size`` paginates tag listings, from the top every time with ``ignore_last``;
    ``drop_headers`` (lower case) are removed from forwarded answers and ``statuses`` maps an
    upstream status to the one answered; ``gate`` may answer a request before it is
    forwarded. ``counts`` holds ``"METHOD kind"`` totals and ``paths`` every request line, so
    tests and the benchmark count what actually reached the registry.
    """

    def __init__(
        self,
        upstream: str,
        *,
        delay_s: float = 0.0,
        page_size: int | None = None,
        ignore_last: bool = False,
        drop_headers: frozenset[str] = frozenset(),
        statuses: dict[int, int] | None = None,
        gate: Gate | None = None,
    ):
        target = urlsplit(upstream)
        self.upstream = (target.hostname or LOOPBACK, target.port or 80)
        self.delay_s = delay_s
        self.page_size = page_size
        self.ignore_last = ignore_last
        self.drop_headers = drop_headers
        self.statuses = statuses or {}
        self.gate = gate
        self.faults: list[Fault] = []
        self.counts: Counter[str] = Counter()
        self.paths: list[tuple[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer((LOOPBACK, 0), self._handler())
        self._server.daemon_threads = True
        self._server.request_queue_size = 128
        self.url = f"http://{LOOPBACK}:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def inject(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def reset_counts(self) -> None:
        with self._lock:
            self.counts.clear()
            self.paths.clear()
            self.max_in_flight = self.in_flight

    def _fault_for(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.method in (method, "*") and fault.path_contains in path:
                    if fault.times is not None and fault.served >= fault.times:
                        continue
                    fault.served += 1
                    return fault
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in separate writes: without TCP_NODELAY, Nagle and the
            # client's delayed ACK add ~40 ms to every answer.
            disable_nagle_algorithm = True
            upstream: http.client.HTTPConnection | None = None

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_GET(self) -> None:
                self._handle()

            do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = do_GET

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy._lock:
                    proxy.counts[f"{self.command} {request_kind(self.path)}"] += 1
                    proxy.paths.append((self.command, self.path))
                    proxy.in_flight += 1
                    proxy.max_in_flight = max(proxy.max_in_flight, proxy.in_flight)
                try:
                    self._serve(body)
                finally:
                    with proxy._lock:
                        proxy.in_flight -= 1

            def _serve(self, body: bytes) -> None:
                fault = proxy._fault_for(self.command, self.path)
                if fault is not None:
                    self._answer(fault.status, fault.headers, fault.body)
                    return
                gated = (
                    proxy.gate(self.command, self.path, dict(self.headers)) if proxy.gate else None
                )
                if gated is not None:
                    self._answer(*gated)
                    return
                if proxy.delay_s:
                    time.sleep(proxy.delay_s)
                if (
                    proxy.page_size is not None
                    and self.command == "GET"
                    and request_kind(self.path) == "tags"
                ):
                    self._paginate(body)
                    return
                status, headers, data = self._forward(self.command, self.path, body)
                headers = {k: v for k, v in headers.items() if k.lower() not in proxy.drop_headers}
                self._answer(proxy.statuses.get(status, status), headers, data)

            def _forward(
                self, method: str, path: str, body: bytes
            ) -> tuple[int, dict[str, str], bytes]:
                skip = {"host", "connection", "keep-alive", "transfer-encoding"}
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                for attempt in (1, 2):
                    if self.upstream is None:
                        self.upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                    try:
                        self.upstream.request(method, path, body=body or None, headers=headers)
                        response = self.upstream.getresponse()
                        data = response.read()
                        break
                    except (http.client.HTTPException, OSError):
                        # The registry closed an idle keep-alive connection: reconnect once.
                        self.upstream.close()
                        self.upstream = None
                        if attempt == 2:
                            raise
                answer = {
                    k: v
                    for k, v in response.getheaders()
                    if k.lower() not in skip and k.lower() != "content-length"
                }
                if method == "HEAD":
                    answer["Content-Length"] = response.getheader("Content-Length") or "0"
                return response.status, answer, data

            def _paginate(self, body: bytes) -> None:
                # distribution 3 semantics: sorted tags after ``last``, at most ``n``, and a
                # Link header to the next page (OCI distribution spec "Listing Tags").
                split = urlsplit(self.path)
                query = parse_qs(split.query)
                status, headers, data = self._forward("GET", split.path, body)
                if status != 200:
                    self._answer(status, headers, data)
                    return
                listing = json.loads(data)
                tags = sorted(listing.get("tags") or [])
                last = "" if proxy.ignore_last else (query.get("last") or [""])[0]
                limit = min(int((query.get("n") or ["1000"])[0]), proxy.page_size or 1000)
                after = [t for t in tags if t > last]
                page = after[:limit]
                if len(after) > limit:
                    link = f"{split.path}?{urlencode({'n': limit, 'last': page[-1]})}"
                    headers["Link"] = f'<{link}>; rel="next"'
                listing["tags"] = page
                self._answer(200, headers, json.dumps(listing).encode())

            def _answer(self, status: int, headers: dict[str, str], data: bytes) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                if self.command != "HEAD" or "Content-Length" not in headers:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

        return Handler


def scope_front_end(realm: str, delete_action: str = "*") -> Gate:
    """A token-auth front-end before an open registry, as older registries and some
    front-ends behave: a DELETE needs ``delete_action`` (``*``) in the token, a read needs
    ``pull``; anything short of it gets a 401 challenge naming the scope it wants."""

    def challenge(scope: str | None) -> Exchange:
        header = f'Bearer realm="{realm}",service="{SERVICE}"'
        if scope is not None:
            header += f',scope="{scope}",error="insufficient_scope"'
        body = json.dumps(
            {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]}
        )
        return (
            401,
            {"WWW-Authenticate": header, "Docker-Distribution-API-Version": "registry/2.0"},
            body.encode(),
        )

    def gate(method: str, path: str, headers: dict[str, str]) -> Exchange | None:
        scheme, _, token = headers.get("Authorization", "").partition(" ")
        claims = (
            jwt.decode(token, options={"verify_signature": False}) if scheme == "Bearer" else None
        )
        route = urlsplit(path).path
        if route == "/v2/":
            return None if claims is not None else challenge(None)
        named = re.fullmatch(r"/v2/(.+)/(?:manifests|tags|blobs)/.*", route)
        if named is None:
            return None
        repository = named[1]
        wanted = delete_action if method == "DELETE" else "pull"
        granted = {
            action
            for entry in (claims or {}).get("access", [])
            if entry.get("type") == "repository" and entry.get("name") == repository
            for action in entry.get("actions", [])
        }
        return None if wanted in granted else challenge(f"repository:{repository}:{wanted}")

    return gate


def dangle(registry: Registry, repository: str, manifest: Manifest) -> None:
    """Makes every tag on ``manifest`` dangling: its revision link goes from the storage (as a
    half-finished cleanup or a lost file leaves it), the tags' own links stay."""
    hex_digest = manifest.digest.removeprefix("sha256:")
    revisions = registry.root / "data/docker/registry/v2/repositories" / repository / "_manifests"
    (revisions / "revisions/sha256" / hex_digest / "link").unlink()


# --- pytest fixtures (import them by name into a test module) --------------------------


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry with deletion enabled and no auth."""
    with run_registry(tmp_path_factory.mktemp("registry")) as running:
        yield running


@pytest.fixture(scope="module")
def readonly_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry as shipped by default: deletion disabled."""
    with run_registry(tmp_path_factory.mktemp("readonly"), delete_enabled=False) as running:
        yield running


@pytest.fixture(scope="module")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry behind htpasswd basic auth."""
    directory = tmp_path_factory.mktemp("basic")
    with run_registry(directory, htpasswd={USERNAME: PASSWORD}) as running:
        yield running


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry on TLS (test CA) with ``auth: token`` and a loopback token issuer.

    ``janitor`` may pull, push and delete; ``reader`` may only pull.
    """
    directory = tmp_path_factory.mktemp("token")
    issuer = TokenIssuer(
        directory,
        {
            USERNAME: (PASSWORD, frozenset({"pull", "push", "delete"})),
            READER: (PASSWORD, frozenset({"pull"})),
        },
    )
    try:
        with run_registry(directory, issuer=issuer, tls=make_tls(directory)) as running:
            running.username, running.password = USERNAME, PASSWORD
            yield running
    finally:
        issuer.close()


@pytest.fixture
def make_proxy() -> Iterator[Callable[..., Proxy]]:
    """Starts proxies in front of registries; all are stopped after the test."""
    started: list[Proxy] = []

    def make(upstream: str, **options: Any) -> Proxy:
        proxy = Proxy(upstream, **options)
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.close()


# --- the client under test -------------------------------------------------------------

# Fast retries keep the fault tests short; the shapes are the production ones.
FAST = HttpOptions(retries=2, backoff_factor_s=0.01, connect_timeout_s=2.0, read_timeout_s=10.0)


def connect(registry: Registry, url: str | None = None, **overrides: Any) -> RegistryClient:
    """The janitor's client for ``registry`` (or a proxy ``url`` in front of it)."""
    settings: dict[str, Any] = {
        "username": registry.username,
        "password": registry.password,
        "token": None,
        "ca_bundle": registry.ca_bundle,
        "options": FAST,
    }
    settings.update(overrides)
    return connect_registry(url or registry.url, **settings)
