"""Loopback fault proxies, and the points a test chooses from outside the janitor.

- ``HttpProxy``: in front of the real registry, the real Prometheus or the Elasticsearch
  stand-in. It reads each request whole, then forwards it (one upstream connection per
  request, ``Connection: close`` both ways) unless a :class:`Rule` matching the request's
  method and path plays a fault instead: latency, a connection reset (RST), a half-closed
  connection (FIN, no answer), an answer of its own (429 with ``Retry-After``, 500, 503,
  truncated or malformed JSON), an answer cut in the middle of its body, or a call back into
  the test (``Call``: e.g. SIGKILL the janitor) before the request is forwarded or after the
  upstream answered and before the janitor hears it.
- ``PgProxy``: a TCP proxy in front of PostgreSQL that reads the wire protocol (startup,
  then typed messages) so a :class:`StatementRule` can match the N-th statement whose text
  matches a pattern (simple ``Query`` or extended-protocol ``Parse``), and act before it
  reaches the server or after the server finished it (its ``ReadyForQuery``) and before the
  janitor hears the answer. It refuses TLS and GSS encryption itself ('N'), as a server
  without them does, so every DSN through it stays readable.

Both count what they saw (``requests``, ``statements``), so kill points are counts of
requests or statements, never hooks inside the product.
"""

from __future__ import annotations

import contextlib
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tests.loopback import HANG_GUARD_S

LOOPBACK = "127.0.0.1"
# Headers the proxy owns: every exchange is one request on one connection.
_HOP_HEADERS = frozenset({b"connection", b"keep-alive", b"proxy-connection"})
_MAX_LINE = 65536


# --- what a rule does -----------------------------------------------------------------------


@dataclass(frozen=True)
class Delay:
    """Forward after ``seconds`` (a slow network or a busy server)."""

    seconds: float


@dataclass(frozen=True)
class Reset:
    """Close the connection with a TCP reset, the request unanswered."""


@dataclass(frozen=True)
class HalfClose:
    """Close the sending side (FIN) without answering; the janitor's side stays open."""


@dataclass(frozen=True)
class Answer:
    """Answer ``status`` with ``body`` instead of forwarding."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Truncate:
    """Forward, then relay the upstream's answer with only the first half of its body, and
    close: the answer announces more bytes than it brings."""


@dataclass(frozen=True)
class Call:
    """Call ``action`` before forwarding (``after=False``) or once the upstream answered and
    before the janitor hears it (``after=True``); ``action`` returns whether to go on, else
    the connection is dropped unanswered."""

    action: Callable[[], bool]
    after: bool = False


Fault = Delay | Reset | HalfClose | Answer | Truncate | Call


@dataclass
class Rule:
    """Plays ``fault`` on requests whose method is ``method`` (``*``: any) and whose target
    matches ``path`` (a regex, searched): it lets the first ``skip`` of them through, then
    serves ``times`` of them (None: every one)."""

    method: str
    path: str
    fault: Fault
    times: int | None = 1
    skip: int = 0
    seen: int = 0
    served: int = 0

    def claims(self, method: str, target: str) -> bool:
        """Whether this request is one the rule plays its fault on (counts it)."""
        if self.method not in ("*", method) or re.search(self.path, target) is None:
            return False
        self.seen += 1
        if self.seen <= self.skip or (self.times is not None and self.served >= self.times):
            return False
        self.served += 1
        return True


def _reset(sock: socket.socket) -> None:
    # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _drain_and_close(sock: socket.socket) -> None:
    """Wait (bounded) for the peer to close its side, then close ours."""
    sock.settimeout(HANG_GUARD_S)
    with contextlib.suppress(OSError):
        while sock.recv(4096):
            pass
    sock.close()


class _Listener:
    """A loopback listening socket whose connections are served each in a daemon thread."""

    def __init__(self, serve: Callable[[socket.socket], None]) -> None:
        self._serve = serve
        self._socket = socket.create_server((LOOPBACK, 0))
        self.port: int = self._socket.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._socket.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._guarded, args=(conn,), daemon=True).start()

    def _guarded(self, conn: socket.socket) -> None:
        try:
            self._serve(conn)
        except OSError:
            conn.close()

    def close(self) -> None:
        self._closed = True
        self._socket.close()


# --- HTTP -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    method: str
    target: str
    raw: bytes
    """The request as the upstream gets it: ``Connection: close``, body included."""


def _read_request(conn: socket.socket) -> _Request | None:
    reader = conn.makefile("rb")
    try:
        line = reader.readline(_MAX_LINE)
        if not line.strip():
            return None
        headers: list[bytes] = []
        length = 0
        while True:
            header = reader.readline(_MAX_LINE)
            if header in (b"\r\n", b"\n", b""):
                break
            name, _, value = header.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
            if name.strip().lower() not in _HOP_HEADERS:
                headers.append(header)
        body = reader.read(length) if length else b""
    finally:
        reader.close()
    method, target, _ = line.decode("latin-1").split(" ", 2)
    head = line + b"".join(headers) + b"Connection: close\r\n\r\n"
    return _Request(method, target, head + body)


def _with_close(answer: bytes) -> tuple[bytes, bytes]:
    """The upstream's answer split into a head saying ``Connection: close`` and the body."""
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = [
        line
        for line in head.split(b"\r\n")
        if line.partition(b":")[0].strip().lower() not in _HOP_HEADERS
    ]
    return b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n", body


class HttpProxy:
    """A loopback HTTP proxy in front of ``upstream`` (``http://host:port``).

    ``answer_headers`` go on every answer the proxy makes itself, so a fault looks like the
    upstream's own (e.g. ``X-Elastic-Product`` for Elasticsearch). ``requests`` records
    ``(method, target)`` of every request received, faulted or not.
    """

    def __init__(self, upstream: str, answer_headers: tuple[tuple[str, str], ...] = ()) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or LOOPBACK, parts.port or 80)
        self.answer_headers = answer_headers
        self.rules: list[Rule] = []
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._listener = _Listener(self._serve)
        self.url = f"http://{LOOPBACK}:{self._listener.port}"

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        """Forget every rule and every request seen."""
        with self._lock:
            self.rules.clear()
            self.requests.clear()

    def close(self) -> None:
        self._listener.close()

    def count(self, method: str, path: str) -> int:
        with self._lock:
            return sum(1 for m, t in self.requests if m == method and re.search(path, t))

    def _fault_for(self, request: _Request) -> Fault | None:
        with self._lock:
            self.requests.append((request.method, request.target))
            for rule in self.rules:
                if rule.claims(request.method, request.target):
                    return rule.fault
        return None

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(HANG_GUARD_S)
        request = _read_request(conn)
        if request is None:
            conn.close()
            return
        fault = self._fault_for(request)
        if isinstance(fault, Reset):
            _reset(conn)
        elif isinstance(fault, HalfClose):
            conn.shutdown(socket.SHUT_WR)
            _drain_and_close(conn)
        elif isinstance(fault, Answer):
            conn.sendall(self._answer(fault))
            conn.close()
        elif isinstance(fault, Call) and not fault.after and not fault.action():
            _reset(conn)
        else:
            if isinstance(fault, Delay):
                time.sleep(fault.seconds)
            head, body = _with_close(self._forward(request))
            if isinstance(fault, Call) and fault.after and not fault.action():
                _reset(conn)
                return
            conn.sendall(head + (body[: len(body) // 2] if isinstance(fault, Truncate) else body))
            conn.close()

    def _answer(self, answer: Answer) -> bytes:
        headers = [*self.answer_headers, *answer.headers]
        if not any(name.lower() == "content-type" for name, _ in headers):
            headers.append(("Content-Type", "application/json"))
        lines = [f"HTTP/1.1 {answer.status} Fault", *(f"{k}: {v}" for k, v in headers)]
        lines += [f"Content-Length: {len(answer.body)}", "Connection: close"]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + answer.body

    def _forward(self, request: _Request) -> bytes:
        with socket.create_connection(self.upstream, timeout=HANG_GUARD_S) as upstream:
            upstream.sendall(request.raw)
            chunks = []
            while chunk := upstream.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


# --- PostgreSQL -----------------------------------------------------------------------------

# Untyped requests that may come before the startup message (protocol "Message Formats").
_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_CANCEL_REQUEST = 80877102


@dataclass
class StatementRule:
    """Acts on statements whose text matches ``pattern`` (a regex, searched): it lets the
    first ``skip`` through, then acts on ``times`` of them (None: every one).

    ``action`` returns whether the session goes on; else it is reset on both sides. It runs
    before the statement reaches the server, or with ``after`` once the server finished it
    (``ReadyForQuery``) and before the janitor hears the answer. ``delay_s`` holds the
    statement that long before it is forwarded.
    """

    pattern: str
    action: Callable[[], bool] = lambda: True
    after: bool = False
    skip: int = 0
    times: int | None = 1
    delay_s: float = 0.0
    seen: int = 0
    served: int = 0

    def claims(self, text: str) -> bool:
        if re.search(self.pattern, text) is None:
            return False
        self.seen += 1
        if self.seen <= self.skip or (self.times is not None and self.served >= self.times):
            return False
        self.served += 1
        return True


@dataclass
class _Session:
    client: socket.socket
    server: socket.socket
    port: int
    """The local port of the server connection: ``client_port`` in ``pg_stat_activity``."""
    pid: int | None = None
    """The server process of the session, from its BackendKeyData at startup."""
    held: StatementRule | None = None
    """A rule whose ``after`` action waits for the server's ReadyForQuery."""
    held_messages: list[bytes] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    closed: bool = False

    def reset(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
        for sock in (self.client, self.server):
            # The other pump thread may be blocked in recv() on the socket, which keeps it
            # open past close(): shutdown() wakes it and ends the connection.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("peer closed")
        data += chunk
    return data


def _statement_text(kind: bytes, payload: bytes) -> str | None:
    """The SQL of a simple ``Query`` (Q) or an extended-protocol ``Parse`` (P)."""
    if kind == b"Q":
        return payload.split(b"\0", 1)[0].decode(errors="replace")
    if kind == b"P":
        _, query, _ = payload.split(b"\0", 2)
        return query.decode(errors="replace")
    return None


class PgProxy:
    """A loopback TCP proxy in front of the PostgreSQL server at ``host:port``."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.rules: list[StatementRule] = []
        self.statements: list[str] = []
        self.sessions: list[_Session] = []
        self._lock = threading.Lock()
        self._listener = _Listener(self._serve)
        self.host, self.port = LOOPBACK, self._listener.port

    def add(self, rule: StatementRule) -> StatementRule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self.statements.clear()

    def close(self) -> None:
        self._listener.close()
        self.reset_all()

    def reset_all(self) -> None:
        """Reset every session: the janitor and the server each see the connection die."""
        with self._lock:
            sessions = list(self.sessions)
        for session in sessions:
            session.reset()

    def upstream_ports(self) -> set[int]:
        """The local ports of every server connection the proxy opened: ``client_port`` in
        ``pg_stat_activity`` of the backends that served the janitor through it."""
        with self._lock:
            return {session.port for session in self.sessions}

    def backends(self) -> list[tuple[int, int]]:
        """``(pid, client_port)`` of every server process that served a session through this
        proxy: in ``pg_stat_activity`` the pair names this test's janitor sessions and no
        other suite's, also once the pid or the port alone is reused by another session."""
        with self._lock:
            return [(s.pid, s.port) for s in self.sessions if s.pid is not None]

    def _serve(self, client: socket.socket) -> None:
        server = socket.create_connection(self.upstream, timeout=None)
        server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = _Session(client, server, server.getsockname()[1])
        with self._lock:
            self.sessions.append(session)
        threading.Thread(target=self._to_client, args=(session,), daemon=True).start()
        try:
            self._to_server(session)
        except (OSError, ConnectionError):
            session.reset()

    def _to_server(self, session: _Session) -> None:
        client, server = session.client, session.server
        while True:  # untyped requests: encryption requests, then startup (or a cancel)
            (length,) = struct.unpack("!i", _recv_exactly(client, 4))
            body = _recv_exactly(client, length - 4)
            (code,) = struct.unpack("!i", body[:4])
            if code in (_SSL_REQUEST, _GSSENC_REQUEST):
                client.sendall(b"N")
                continue
            server.sendall(struct.pack("!i", length) + body)
            if code == _CANCEL_REQUEST:
                return
            break
        while True:
            kind = _recv_exactly(client, 1)
            (length,) = struct.unpack("!i", _recv_exactly(client, 4))
            payload = _recv_exactly(client, length - 4)
            message = kind + struct.pack("!i", length) + payload
            text = _statement_text(kind, payload)
            rule = self._rule_for(text) if text is not None else None
            if rule is not None and rule.delay_s:
                time.sleep(rule.delay_s)
            if rule is not None and not rule.after and not rule.action():
                session.reset()
                return
            if rule is not None and rule.after:
                session.held = rule
            server.sendall(message)

    def _rule_for(self, text: str) -> StatementRule | None:
        with self._lock:
            self.statements.append(text)
            for rule in self.rules:
                if rule.claims(text):
                    return rule
        return None

    def _to_client(self, session: _Session) -> None:
        client, server = session.client, session.server
        try:
            while True:
                kind = _recv_exactly(server, 1)
                (length,) = struct.unpack("!i", _recv_exactly(server, 4))
                message = kind + struct.pack("!i", length) + _recv_exactly(server, length - 4)
                if kind == b"K":  # BackendKeyData: process ID, then the cancel key
                    (session.pid,) = struct.unpack("!i", message[5:9])
                rule = session.held
                if rule is None:
                    client.sendall(message)
                    continue
                session.held_messages.append(message)
                if kind != b"Z":
                    continue
                session.held = None
                if not rule.action():
                    session.reset()
                    return
                client.sendall(b"".join(session.held_messages))
                session.held_messages.clear()
        except (OSError, ConnectionError):
            session.reset()
