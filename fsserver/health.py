"""The supervisor's small HTTP endpoint: ``/healthz``, ``/readyz`` and ``/metrics``.

It is a few lines on the supervisor's own event loop rather than a thread, so a probe sees the
loop that actually accepts connections: a stuck supervisor fails its health check.

With ``--metrics-token-file``, ``/metrics`` (which names the shares and tells the traffic) asks
for ``Authorization: Bearer SECRET``, what Prometheus' ``authorization`` setting sends; the
probes stay open, as Kubernetes and Docker send no credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass

from fsserver.config import is_loopback

log = logging.getLogger(__name__)

MAX_REQUEST = 8192
READ_TIMEOUT = 5.0


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: str = ""
    """Extra header lines, each ending with CRLF."""


Route = Callable[[], Response]
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 503: "Service Unavailable"}  # fmt: skip
UNAUTHORIZED = Response(
    401,
    b"unauthorized: send Authorization: Bearer <the token>\n",
    headers='WWW-Authenticate: Bearer realm="fsserver metrics"\r\n',
)


class MetricsTokenError(ValueError):
    """The metrics token file cannot be read, or holds no token."""


class BearerToken:
    """The secret of ``--metrics-token-file``. The file is read again when it changes, so a
    rotated secret (a Kubernetes Secret, say) applies without a restart."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.stamp: tuple[int, int, int] | None = None
        self.secret = b""

    def load(self) -> bytes:
        try:
            st = os.stat(self.path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            if stamp != self.stamp:
                with open(self.path, "rb") as f:
                    secret = f.read().strip()
                if not secret or len(secret.split()) != 1:
                    raise MetricsTokenError(f"--metrics-token-file {self.path} must hold one token")
                self.secret, self.stamp = secret, stamp
        except OSError as exc:
            raise MetricsTokenError(f"--metrics-token-file {self.path}: {exc.strerror}") from None
        return self.secret

    def allows(self, authorization: bytes | None) -> bool:
        """True for ``Bearer <secret>`` (the scheme in any case), compared in constant time."""
        try:
            secret = self.load()
        except MetricsTokenError as exc:
            log.error("refusing /metrics: %s", exc)
            return False
        scheme, _, given = (authorization or b"").strip().partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), secret)


class HealthServer:
    def __init__(self, routes: dict[str, Route], token: BearerToken | None = None,
                 guarded: Collection[str] = ("/metrics",)) -> None:  # fmt: skip
        self.routes = routes
        self.token = token
        """Without it every route is open; with it, the *guarded* ones ask for it."""
        self.guarded = guarded
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        """Listen; the token file must be readable (MetricsTokenError), and a /metrics open to
        the network is logged."""
        if self.token is not None:
            self.token.load()
        elif not is_loopback(host):
            log.warning("/metrics on %s is open to anyone who can reach it (it names the "
                        "shares): see --metrics-token-file, --metrics-host", host)  # fmt: skip
        self.server = await asyncio.start_server(self._serve, host, port, reuse_address=True)
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first = await asyncio.wait_for(reader.readexactly(1), READ_TIMEOUT)
            if first.isalpha():
                rest = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
                response = self._route((first + rest)[:MAX_REQUEST])
            else:  # no method name: not HTTP (an FS client at the wrong port); say so at once
                response = Response(400, b"not an HTTP request: this is the metrics port\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            writer.close()
            return
        reason = _REASONS.get(response.status, "")
        writer.write(
            f"HTTP/1.1 {response.status} {reason}\r\nContent-Type: {response.content_type}\r\n"
            f"{response.headers}Content-Length: {len(response.body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + response.body
        )
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    def _route(self, head: bytes) -> Response:
        request, *lines = head.split(b"\r\n")
        parts = request.split()
        if len(parts) < 2:
            return Response(405, b"bad request\n")
        method, target = parts[0], parts[1].decode("latin-1").split("?", 1)[0]
        if method not in (b"GET", b"HEAD"):
            return Response(405, b"only GET\n")
        route = self.routes.get(target)
        if route is None:
            return Response(404, b"not found\n")
        token = self.token if target in self.guarded else None
        if token is not None and not token.allows(header(lines, b"authorization")):
            return UNAUTHORIZED
        return route()


def header(lines: list[bytes], name: bytes) -> bytes | None:
    """The value of the header *name* (lowercase), or None."""
    for line in lines:
        key, colon, value = line.partition(b":")
        if colon and key.strip().lower() == name:
            return value.strip()
    return None
