"""``ClientConnection``: the IO side of one client connection inside a worker.

The protocol rules live in ``common.FSConnection``; this class moves bytes and runs the store
operations. Upload payloads are copied (or read directly, for large packets) into the reserved
extent of the shared-memory arena; downloads are written from the arena without copies when the
packets are large, and batched into large writes when they are small. Store calls and hash jobs
complete through callbacks, so many small files are in flight at once on one connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, cast

from common import messages as m
from common.codec import encode
from common.connection import ConnPhase, DataChunk, FSConnection
from common.errors import ErrorCode, InvalidName, LocalProtocolError, RemoteProtocolError
from common.limits import MAX_CLIENT_CONTROL_PACKET, NO_FILE, PROTOCOL_VERSION
from common.paths import check_name
from common.sockqueues import RecvWater
from common.state import Role
from fsserver import telemetry
from fsserver.connlog import ConnectionLog
from fsserver.context import WorkerContext
from fsserver.downloads import DownloadHandlers, DownloadStream
from fsserver.feed import Subscription
from fsserver.handshake import HandshakeHandlers
from fsserver.requests import RequestHandlers
from fsserver.smallfiles import BatchHandlers, PendingBatch
from fsserver.uploads import Upload, UploadHandlers
from fsserver.versionrequests import VersionHandlers

log = logging.getLogger(__name__)

FIRST_STAGING_BYTES = MAX_CLIENT_CONTROL_PACKET + 4096
"""Before the handshake: enough for any packet a client may send; idle connections stay cheap."""
STAGING_BYTES = 256 * 1024
DIRECT_READ_MIN = 64 * 1024
"""A payload with at least this much left is read straight into its extent."""
WRITE_HIGH_WATER = 8 * 1024 * 1024
WRITE_LOW_WATER = 2 * 1024 * 1024
ABORT_AFTER = 2.0
"""A connection that failed is torn down this long after its Error, read or not."""
MAX_LAG_BYTES = 64 * 1024 * 1024
"""A subscriber that lets this much pile up unread is disconnected (it resubscribes)."""


class ClientConnection(
    asyncio.BufferedProtocol,
    UploadHandlers,
    BatchHandlers,
    DownloadHandlers,
    RequestHandlers,
    HandshakeHandlers,
    VersionHandlers,
):
    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx
        self.loop = asyncio.get_running_loop()
        self.conn = FSConnection(Role.SERVER, max_packet_limit=ctx.config.max_packet,
                                 max_in_flight=ctx.config.max_in_flight)  # fmt: skip
        self.staging = bytearray(FIRST_STAGING_BYTES)
        self.view = memoryview(self.staging)
        self.fill = 0
        self.direct = False
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.activity = ConnectionLog()
        self.share = ""
        self.closing = False
        self.uploads: dict[int, Upload] = {}
        self.batches: dict[int, PendingBatch] = {}
        self.batch_order: deque[PendingBatch] = deque()
        self.downloads: dict[int, DownloadStream] = {}
        self.draining: list[DownloadStream] = []
        self.written = 0
        """Bytes handed to the transport; minus its buffer, the bytes on the wire."""
        self.taken_seen = 0
        self.last_taken = 0.0
        """When the client last took bytes off the transport's buffer (see check_deadlines)."""
        self.traffic = telemetry.TrafficCounts()
        self.outbox: list[bytes] = []
        self.outbox_bytes = 0
        self.flush_scheduled = False
        self.writable = asyncio.Event()
        self.writable.set()
        self.opened_at = self.last_heard = 0.0
        self.read_only = False
        self.writer = ""
        """The name of this connection's token: who wrote a version (empty: no tokens)."""
        self.token: tuple[bytes, int] | None = None
        """The hash of the token this connection shook hands with, and the tokens file
        generation it was last checked against."""
        self.partial_since: float | None = None
        self.partial_done = 0
        """Packets whole when the one arriving since ``partial_since`` began."""
        self.subscription: Subscription | None = None
        self.opening: dict[int, m.FileSyncInit | m.DownloadRequest] = {}
        """Sessions whose first store call is under way, by file id."""
        self.requests_busy = 0
        self.origin = ctx.new_origin()
        """Names this connection in the changes it makes (see ``feed.Subscription``)."""
        self.requests_waiting: deque[tuple[Callable[[Any], None], str, tuple[Any, ...]]] = deque()
        self.handlers: dict[type, Callable[[Any], None]] = {
            m.VersionHandshake: self.on_handshake,
            m.FileSyncInit: self.on_init,
            m.FileSyncCheckHash: self.on_check_hash,
            m.FileSyncCancel: self.on_cancel,
            m.SmallFileBatch: self.on_batch,
            m.FileSyncCheckHashResponse: self.on_download_verdict,
            m.DownloadRequest: self.on_download,
            m.DownloadVersionRequest: self.on_download,
            m.VersionsRequest: self.on_versions,
            m.RestoreRequest: self.on_restore,
            m.DeletedListRequest: self.on_deleted_list,
            m.ListRequest: self.on_list,
            m.StatRequest: self.on_stat,
            m.DeleteRequest: self.on_delete,
            m.SubscribeRequest: self.on_subscribe,
            m.ShareListRequest: self.on_share_list,
            m.Ping: self.on_ping,
            m.Error: self.on_error,
        }

    # -- asyncio protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        self.water = RecvWater.of(self.transport)
        peer = self.transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self.activity.accepted(self.peer)
        self.opened_at = self.last_heard = self.loop.time()
        self.ctx.connections.add(self)
        telemetry.CONNECTIONS_ACTIVE.labels("worker", str(self.ctx.worker_id)).inc()
        cfg = self.ctx.config
        if len(self.ctx.connections) > -(-cfg.max_connections // cfg.workers):
            telemetry.refused("too_many_connections")
            self.fail(ErrorCode.LIMIT_EXCEEDED, "server busy: too many connections, retry later")

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.closing:  # lingering (see ``linger``): what still arrives is dropped
            self.direct = False
            self.fill = 0
            return self.view
        if self.fill == 0:
            target = self.conn.direct_target()
            if target is not None and len(target) >= DIRECT_READ_MIN:
                self.direct = True
                return target
        self.direct = False
        return self.view[self.fill :]

    def buffer_updated(self, nbytes: int) -> None:
        if self.closing:
            return
        self.last_heard = self.loop.time()
        if self.direct:
            self.conn.direct_received(nbytes)
            # Only payload bytes arrived (the staging buffer is empty): no packet became whole,
            # so the packet clock that ``mark_partial`` started before this read still runs,
            # unless the payload just ended. (No sum over the receive counters per read.)
            if not self.conn.mid_packet:
                self.partial_since = None
            elif self.partial_since is None:
                self.mark_partial()
            self.water.after_read(self.conn, staged=False)
            return
        self.fill += nbytes
        try:
            events, used = self.conn.receive(self.view[: self.fill])
            if used:
                rest = self.fill - used
                self.staging[:rest] = self.view[used : self.fill]
                self.fill = rest
            for event in events:
                if self.closing:  # after a refused handshake or a fatal error nothing counts
                    break
                self.dispatch(event)
            self.mark_partial()
            self.water.after_read(self.conn, staged=self.fill > 0 or self.closing)
        except RemoteProtocolError as exc:
            telemetry.refused(exc.code.name.lower())  # limit_exceeded, packet_too_large...
            self.fail(exc.code, exc.message)
        except Exception:
            log.exception("internal error on connection from %s", self.peer)
            self.fail(ErrorCode.INTERNAL, "internal server error")

    def mark_partial(self) -> None:
        """Remember since when the packet now partly here has been arriving (see
        ``check_deadlines``). It is told from the next by the count of whole packets, so a
        client whose reads keep ending mid-packet is timed per packet, not per stream."""
        if self.fill or self.conn.mid_packet:
            # a data packet is counted from its header on: the one still arriving is not whole
            done = sum(self.conn.rx_packets) - self.conn.mid_packet
            if self.partial_since is None or done != self.partial_done:
                self.partial_since = self.last_heard
                self.partial_done = done
        else:
            self.partial_since = None

    def check_deadlines(self, now: float) -> None:
        """Called every second: close connections that hold resources without making use
        of them. A slow client must finish each packet in time (it may pick small packets).
        A client that reads what it is sent (a long download) is not idle."""
        cfg = self.ctx.config
        taken = self.sent()
        if taken != self.taken_seen:
            self.taken_seen, self.last_taken = taken, now
        if not self.share and now - self.opened_at > cfg.handshake_timeout:
            self.fail(ErrorCode.TIMEOUT, f"no handshake within {cfg.handshake_timeout:g} s")
        elif now - max(self.last_heard, self.last_taken) > cfg.idle_timeout:
            self.fail(ErrorCode.TIMEOUT, f"idle for {cfg.idle_timeout:g} s (clients ping)")
        elif (self.partial_since is not None and self.writable.is_set()
              and now - self.partial_since > cfg.packet_timeout):  # fmt: skip
            # not while this side has stopped reading (the client is slow to take replies)
            self.fail(ErrorCode.TIMEOUT, f"a packet took over {cfg.packet_timeout:g} s")

    def grow_staging(self) -> None:
        """After the handshake, read in larger slices: many small packets per read."""
        bigger = bytearray(STAGING_BYTES)
        bigger[: self.fill] = self.view[: self.fill]
        self.staging, self.view = bigger, memoryview(bigger)

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        """A client that does not read gets no more work done: its requests wait unread."""
        self.writable.clear()
        if self.transport is not None and not self.closing:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writable.set()
        if self.partial_since is not None:  # the packet's clock ran while reading was paused
            self.partial_since = self.loop.time()
        if self.transport is not None and not self.closing:
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.writable.set()
        self.ctx.connections.discard(self)
        self.publish_traffic()  # (first: once no connection is active, all its bytes count)
        telemetry.CONNECTIONS_ACTIVE.labels("worker", str(self.ctx.worker_id)).dec()
        for direction, sessions in (("upload", self.uploads), ("download", self.downloads)):
            if sessions:  # cut short by the connection's end
                telemetry.SESSIONS.labels(direction, "error").inc(len(sessions))
        self.activity.closed(len(self.uploads) + len(self.downloads) + len(self.batches))
        for upload in self.uploads.values():
            self.drop(upload, park=True)
        self.uploads.clear()
        self.drop_batches()
        self.release_all_downloads()
        if self.subscription is not None:
            self.subscription.stop()

    # -- sending -----------------------------------------------------------------------------

    def send(self, msg: m.Message, *, may_not_fit: bool = False) -> bool:
        """Queue *msg*. With *may_not_fit*, a message over the packet size is no bug: it is
        not sent (nothing changes) and the result is False; otherwise the result is True."""
        if self.closing or self.conn.phase is ConnPhase.CLOSED:
            # CLOSED: a client's Error for the whole connection was parsed in the same read as
            # packets before it; their replies are dropped, not refused as a bug
            return True
        try:
            packet = self.conn.send(msg)
        except LocalProtocolError as exc:
            if may_not_fit and exc.code == ErrorCode.PACKET_TOO_LARGE:
                return False
            log.error("bug: refused to send %s to %s: %s", type(msg).__name__, self.peer, exc)
            self.fail(ErrorCode.INTERNAL, "internal server error")
            return True
        self.queue(packet)
        return True

    def queue(self, packet: bytes) -> None:
        """Send an encoded packet with the next flush (one write for all queued by then)."""
        self.outbox.append(packet)
        self.outbox_bytes += len(packet)
        if not self.flush_scheduled:
            self.flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.outbox and not self.closing and self.transport is not None:
            # one joined write: writev over thousands of small packets costs far more
            self.transport.write(b"".join(self.outbox))
            self.written += self.outbox_bytes
        self.outbox = []
        self.outbox_bytes = 0

    def write_now(self, chunks: list[bytes | memoryview]) -> None:
        """Write packets built outside ``send`` (data) after everything queued before them."""
        self.flush()
        if not self.closing and self.transport is not None:
            self.transport.writelines(chunks)
            self.written += sum(len(chunk) for chunk in chunks)

    def publish_traffic(self) -> None:
        self.traffic.publish(self.conn)

    def sent(self) -> int:
        """Bytes that have left the transport (its buffer no longer references them)."""
        return self.written - (self.transport.get_write_buffer_size() if self.transport else 0)

    def when_writable(self, callback: Callable[[], None]) -> None:
        """Run *callback* once the transport is below its high-water mark."""
        if self.writable.is_set():
            callback()
            return

        async def later() -> None:
            await self.writable.wait()
            if not self.closing:
                callback()

        self.loop.create_task(later())

    def lagging(self) -> bool:
        """The client lets more than MAX_LAG_BYTES pile up unread."""
        buffered = self.transport.get_write_buffer_size() if self.transport else 0
        return buffered + self.outbox_bytes > MAX_LAG_BYTES

    def fail(self, code: ErrorCode, message: str, *, linger: bool = False) -> None:
        """End the connection with a connection-level Error; other clients are unaffected.
        With *linger*, the client is given the time to read it (see ``linger``)."""
        if self.closing or self.transport is None:
            return
        log.info("closing connection from %s: %s", self.peer, message)
        self.flush()
        self.transport.write(encode(m.Error(code, NO_FILE, message)))
        if linger and self.transport.can_write_eof():
            self.linger()
        else:
            self.close()

    def linger(self) -> None:
        """Send a FIN after what is buffered, then read and drop what the client still sends
        until it closes too (or ABORT_AFTER has passed). A socket closed with bytes unread
        resets the connection, and a client busy sending (an upload) would lose our last
        packet, the Error that says why, to the reset."""
        assert self.transport is not None
        self.closing = True
        transport = self.transport
        transport.write_eof()
        transport.resume_reading()
        self.loop.call_later(ABORT_AFTER, transport.abort)

    def close(self) -> None:
        """Close after the buffered bytes are sent, or abort if the client will not take them
        (a graceful close waits for ever on a peer that does not read)."""
        if self.transport is None or self.transport.is_closing():
            self.closing = True
            return
        self.closing = True
        self.transport.close()
        transport = self.transport
        self.loop.call_later(ABORT_AFTER, transport.abort)

    def shutdown(self) -> None:
        self.fail(ErrorCode.SHUTTING_DOWN, "server is shutting down", linger=True)

    # -- dispatch ----------------------------------------------------------------------------

    def dispatch(self, event: m.Message | DataChunk) -> None:
        handler = self.handlers.get(type(event))
        if handler is None:
            # The connection layer only lets through what a client may send; payloads always
            # go to a sink. Anything else is a bug here, not the client's fault.
            raise RuntimeError(f"no handler for {type(event).__name__}")
        handler(event)

    def call_store(self, on_result: Callable[[Any], None], op: str, *args: Any) -> None:
        """Run a store call; *on_result* also runs when the connection closed meanwhile, so
        it can give back what it was handed (handlers check ``self.closing``)."""

        def deliver(fut: asyncio.Future[Any]) -> None:
            if fut.cancelled():
                return
            exc = fut.exception()
            if exc is not None:
                log.error("store call %s failed: %s", op, exc)
                self.fail(ErrorCode.INTERNAL, "store unavailable")
                return
            on_result(fut.result())

        self.ctx.rpc.call(op, *args).add_done_callback(deliver)

    # -- handshake, ping, errors -------------------------------------------------------------

    def on_handshake(self, msg: m.VersionHandshake) -> None:
        status, text = m.HandshakeStatus.OK, ""
        try:
            if msg.version != PROTOCOL_VERSION:
                status = m.HandshakeStatus.UNSUPPORTED_VERSION
                text = f"protocol version {msg.version} not supported (server speaks 1)"
            else:
                check_name(msg.share)
                check_name(msg.client_id, "client id")
                status, text = self.authenticate(msg)
        except InvalidName as exc:
            status, text = m.HandshakeStatus.INVALID_SHARE, exc.message
        if status is m.HandshakeStatus.OK:  # the store says if the share exists, then answer
            self.attach(msg, self.answer_handshake)
            return
        self.answer_handshake(msg, status, text)

    def answer_handshake(self, msg: m.VersionHandshake, status: m.HandshakeStatus,
                         text: str) -> None:  # fmt: skip
        agreed = self.conn.negotiate(msg.max_packet)
        in_flight = self.conn.sessions.max_in_flight
        flags = msg.flags & m.HandshakeFlags.ZSTD if self.ctx.compress else 0
        self.send(m.VersionHandshakeResponse(status, PROTOCOL_VERSION, agreed,
                                             self.ctx.worker_id, self.ctx.store_id, in_flight,
                                             text, flags))  # fmt: skip
        if status is not m.HandshakeStatus.OK:
            telemetry.refused(status.name.lower())
            self.flush()
            self.close()
            return
        self.share = msg.share
        self.grow_staging()
        self.activity.opened(msg.share, msg.client_id, agreed)

    def on_subscribe(self, msg: m.SubscribeRequest) -> None:
        self.subscription = Subscription(self, self.ctx.feed, msg.request_id, msg.since)
        self.subscription.start()

    def check_token(self) -> None:
        """After the tokens file changed: a revoked token ends the connection at once, and a
        token made read-only (or writable) is that from now on."""
        tokens = self.ctx.tokens
        if tokens is None or self.token is None or self.token[1] == tokens.generation:
            return
        grant = tokens.grant_of(self.token[0], self.share)
        if grant is None:
            self.fail(ErrorCode.AUTH_FAILED, "the token was revoked")
            return
        self.read_only = grant.read_only
        self.token = (self.token[0], tokens.generation)

    def on_ping(self, msg: m.Ping) -> None:
        if not msg.reply:
            self.send(m.Ping(msg.nonce, reply=True))

    def on_error(self, msg: m.Error) -> None:
        """A client's Error ends its connection, or one session (whose resources go back)."""
        log.info("client %s reported error %s: %s", self.peer, msg.code.name, msg.message)
        if msg.file_id == NO_FILE:
            self.close()
            return
        self.opening.pop(msg.file_id, None)
        upload = self.uploads.pop(msg.file_id, None)
        if upload is not None:
            self.drop(upload)
            telemetry.SESSIONS.labels("upload", "error").inc()
        stream = self.downloads.pop(msg.file_id, None)
        if stream is not None:
            self.end_download(stream)
            telemetry.SESSIONS.labels("download", "error").inc()
