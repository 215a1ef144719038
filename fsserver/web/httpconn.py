"""``HttpConnection``: one HTTP/1.1 connection to the API or the web page, in a worker.

h11 parses and frames (sans-IO, like the FS protocol's core); this class only moves bytes and
runs one request at a time (``fsserver.web.api``). Reading pauses while a request is being
handled, so a client that uploads faster than the store takes its bytes is held back by TCP,
and a download writes from the arena while the transport has room (``write``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

import h11

from fsserver.web import httpmetrics
from fsserver.web.replies import HttpError, Reply, error_body

if TYPE_CHECKING:
    from fsserver.context import WorkerContext

log = logging.getLogger(__name__)

WRITE_HIGH = 1 << 20
WRITE_CHUNK = 1 << 20
DRAIN_POLL = 0.002
MAX_HEADER_BYTES = 16 << 10
LINGER_SECONDS = 2.0
LINGER_BYTES = 64 << 20
"""After an error answered before its body was read: how long, and how much of the body, to
read and drop before closing, so that the client reads the answer instead of a reset."""
_KNOWN = frozenset(s.value for s in HTTPStatus)


class Gone(Exception):
    """The client went away in the middle of a request."""


class Request:
    """One request: its method, path (decoded), query and headers (lower-case names)."""

    def __init__(self, event: h11.Request, conn: HttpConnection) -> None:
        self.method = event.method.decode()
        target = urlsplit(event.target.decode("latin-1"))
        self.raw_path = target.path
        self.path = unquote(target.path)
        self.query = dict(parse_qsl(target.query, keep_blank_values=True))
        self.headers = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
        self.conn = conn
        self.route = "other"
        """The route's name, for the metrics (never the raw path: that is unbounded)."""
        self.asset = ""
        """The web page's file a page route names (``""``: the page itself)."""

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    async def body(self) -> AsyncIterator[bytes]:
        """The request body's chunks as they arrive."""
        async for chunk in self.conn.body_chunks():
            yield chunk


class HttpConnection(asyncio.Protocol):
    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.closed = False
        self.arrived = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()
        self.task: asyncio.Task[None] | None = None
        self.stopping = False
        self.on_lost: Callable[[], None] | None = None
        self.origin = ctx.new_origin()
        """Names this connection in the changes it makes (as an FS connection's)."""
        self.pending: Any = None
        """An event of the request's body read while deciding to keep the connection."""

    # -- asyncio protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        assert self.transport is not None
        self.transport.set_write_buffer_limits(high=WRITE_HIGH)
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.ctx.http.add(self)
        self.task = asyncio.get_running_loop().create_task(self.serve())

    def data_received(self, data: bytes) -> None:
        self.h11.receive_data(data)
        httpmetrics.BYTES.labels("received").inc(len(data))
        assert self.transport is not None
        self.transport.pause_reading()  # until the handler asks for more (next_event)
        self.arrived.set()

    def eof_received(self) -> bool:
        self.h11.receive_data(b"")
        self.arrived.set()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.ctx.http.discard(self)
        self.arrived.set()
        self.writable.set()
        if self.on_lost is not None:
            self.on_lost()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def shutdown(self) -> None:
        """The worker stops: an idle connection closes now, a busy one after its request."""
        self.stopping = True
        if self.h11.our_state is h11.IDLE and self.transport is not None:
            self.transport.close()

    # -- reading -----------------------------------------------------------------------------

    async def next_event(self, timeout: float | None = None) -> Any:
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            if self.closed:
                raise Gone
            self.arrived.clear()
            assert self.transport is not None
            self.transport.resume_reading()
            try:
                await asyncio.wait_for(self.arrived.wait(), timeout)
            except TimeoutError:
                raise Gone from None

    async def body_chunks(self) -> AsyncIterator[bytes]:
        timeout = self.ctx.config.packet_timeout
        if self.h11.they_are_waiting_for_100_continue:  # (curl asks, for every PUT)
            self._send(h11.InformationalResponse(status_code=100, headers=[]))
        while True:
            event = await self.next_event(timeout)
            if isinstance(event, h11.Data):
                yield event.data
            elif isinstance(event, h11.EndOfMessage):
                return
            else:
                raise Gone

    # -- writing -----------------------------------------------------------------------------

    def start(self, status: int, headers: Iterable[tuple[str, str]]) -> None:
        reason = HTTPStatus(status).phrase if status in _KNOWN else ""
        self._send(h11.Response(status_code=status, headers=list(headers), reason=reason))

    async def write(self, view: memoryview | bytes) -> None:
        """Body bytes, straight from the arena: h11 frames them without a copy. A client
        that takes nothing for ``--idle-timeout`` is cut off (its lease must not stay)."""
        for at in range(0, len(view), WRITE_CHUNK):
            if self.closed:
                raise Gone
            await self._writable()
            part = view[at : at + WRITE_CHUNK]
            assert self.transport is not None
            self.transport.writelines(self.h11.send_with_data_passthrough(h11.Data(data=part)))
            httpmetrics.BYTES.labels("sent").inc(len(part))

    def end(self) -> None:
        self._send(h11.EndOfMessage())

    async def drained(self) -> None:
        """Every byte written has left the transport (its views of the arena are let go);
        Gone after ``--idle-timeout`` (the caller's lease must not stay for ever)."""
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + self.ctx.config.idle_timeout, DRAIN_POLL
        while not self.closed and self.transport is not None:
            if not self.transport.get_write_buffer_size():
                return
            if loop.time() > deadline:
                self.transport.abort()
                raise Gone
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)  # (a client that stalls is not polled 500 times a s)

    async def _writable(self) -> None:
        """Room in the transport; Gone after ``--idle-timeout`` without any."""
        if self.writable.is_set():
            return
        try:
            await asyncio.wait_for(self.writable.wait(), self.ctx.config.idle_timeout)
        except TimeoutError:
            assert self.transport is not None
            self.transport.abort()
            raise Gone from None

    def send_data(self, raw: bytes) -> None:
        """Body bytes that fit in memory (a JSON answer, an event), sent at once."""
        if raw and not self.closed and self.transport is not None:
            self.transport.writelines(self.h11.send_with_data_passthrough(h11.Data(data=raw)))
            httpmetrics.BYTES.labels("sent").inc(len(raw))

    def reply(self, reply: Reply) -> None:
        self.start(reply.status, reply.headers)
        self.send_data(reply.body)
        self.end()

    def _send(self, event: Any) -> None:
        data = self.h11.send(event)
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    # -- the request loop --------------------------------------------------------------------

    async def serve(self) -> None:
        from fsserver.web.api import handle

        try:
            while not self.stopping:
                event = await self.next_event(self.ctx.config.idle_timeout)
                if not isinstance(event, h11.Request):
                    break
                request = Request(event, self)
                self.pending = None
                started = time.monotonic()
                status = await self._run(handle, request)
                httpmetrics.observe(request.route, request.method, status, started)
                if not self._next_cycle():
                    await self._linger()
                    break
        except (Gone, h11.RemoteProtocolError, ConnectionError) as exc:
            log.debug("http connection from %s ended: %s", self.peer, type(exc).__name__)
        except Exception:
            log.exception("http connection from %s failed", self.peer)
        finally:
            if self.transport is not None:
                self.transport.close()

    async def _run(self, handle: Any, request: Request) -> int:
        """Run the handler; an error before the response began becomes a JSON reply."""
        try:
            return await handle(request)
        except HttpError as exc:
            if self.h11.our_state is not h11.SEND_RESPONSE:
                raise Gone from None  # the response had begun: all we can do is cut it
            self.reply(error_body(exc, keep_open=self._request_read()))
            return exc.status
        except (Gone, ConnectionError):
            raise
        except Exception:
            log.exception("http request %s %s from %s failed", request.method, request.path,
                          self.peer)  # fmt: skip
            if self.h11.our_state is not h11.SEND_RESPONSE:
                raise Gone from None
            failed = HttpError(500, "INTERNAL", "the server failed; see its log")
            self.reply(error_body(failed, keep_open=False))
            return 500
        except h11.RemoteProtocolError as exc:
            if self.h11.our_state is h11.SEND_RESPONSE:
                self.reply(error_body(HttpError(400, "MALFORMED", str(exc)), keep_open=False))
            raise Gone from None

    def _request_read(self) -> bool:
        """Whether the request has been read to its end (a GET's end is read here: h11 has
        it already), so that the connection can take the next one."""
        if self.h11.their_state is h11.SEND_BODY:
            event = self.h11.next_event()
            if not isinstance(event, h11.EndOfMessage):
                self.pending = event
                return False
        return self.h11.their_state is h11.DONE

    async def _linger(self) -> None:
        """The rest of a body the handler refused, read and dropped for a moment."""
        if self.closed or self.h11.their_state is not h11.SEND_BODY:
            return
        deadline, dropped = time.monotonic() + LINGER_SECONDS, 0
        try:
            while dropped < LINGER_BYTES:
                left = deadline - time.monotonic()
                event = await self.next_event(max(left, 0.001))
                if not isinstance(event, h11.Data):
                    return
                dropped += len(event.data)
        except (Gone, h11.RemoteProtocolError):
            return

    def _next_cycle(self) -> bool:
        """Whether the connection can take another request."""
        if self.closed or self.h11.our_state is not h11.DONE:
            return False
        if self.pending is not None or not self._request_read():
            return False  # a body the handler did not read: see _linger
        try:
            self.h11.start_next_cycle()
        except h11.LocalProtocolError:
            return False
        return True
