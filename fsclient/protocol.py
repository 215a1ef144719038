"""``ClientProtocol``: the IO side of a client connection.

It feeds received bytes to the sans-IO ``FSConnection`` and routes the events: file-session
events to that session's ``Mailbox``, responses to the future of their request, and download
payloads into the download's sink (straight from the socket when packets are large).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from enum import IntEnum
from typing import Any, cast

from common import messages as m
from common.codec import encode
from common.connection import DataChunk, FSConnection
from common.errors import (
    AuthError,
    Conflict,
    ErrorCode,
    FSError,
    HashMismatch,
    HistoryExpired,
    InvalidName,
    InvalidPath,
    NoSuchShare,
    NotFound,
    PermissionDenied,
    RemoteError,
    RemoteProtocolError,
    StoreFull,
)
from common.limits import NO_FILE
from common.rules import RESPONSES
from common.sockqueues import RecvWater, unsent
from common.state import Phase, Role
from fsclient.slots import Slots
from fsclient.transfer import DownloadTarget

log = logging.getLogger(__name__)

STAGING_BYTES = 256 * 1024
DIRECT_READ_MIN = 64 * 1024
WRITE_HIGH_WATER = 8 * 1024 * 1024
WRITE_LOW_WATER = 2 * 1024 * 1024
HEAD_BYTES = 8
WRITEV_MAX = 16
"""Up to this many queued packets leave in one writev; more are joined into one buffer."""


class ConnectionLost(FSError):
    code = ErrorCode.INTERNAL


_ERROR_TYPES: dict[ErrorCode, type[FSError]] = {
    ErrorCode.INVALID_PATH: InvalidPath,
    ErrorCode.NO_SPACE: StoreFull,
    ErrorCode.CONFLICT: Conflict,
    ErrorCode.HASH_MISMATCH: HashMismatch,
    ErrorCode.NOT_FOUND: NotFound,
    ErrorCode.AUTH_FAILED: AuthError,
    ErrorCode.PERMISSION_DENIED: PermissionDenied,
}


_REFUSALS: dict[tuple[type, int], type[FSError]] = {
    (type(status), status): kind
    for status, kind in [
        (m.InitStatus.NO_SPACE, StoreFull),
        (m.InitStatus.TOO_LARGE, StoreFull),
        (m.InitStatus.CONFLICT, Conflict),
        (m.LookupStatus.NOT_FOUND, NotFound),
        (m.LookupStatus.INVALID_PATH, InvalidPath),
        (m.LookupStatus.CONFLICT, Conflict),
        (m.LookupStatus.DENIED, PermissionDenied),
        (m.LookupStatus.EXPIRED, HistoryExpired),
        (m.LookupStatus.NO_SPACE, StoreFull),
        (m.HandshakeStatus.AUTH_FAILED, AuthError),
        (m.HandshakeStatus.INVALID_SHARE, InvalidName),
        (m.HandshakeStatus.NO_SUCH_SHARE, NoSuchShare),
        (m.FileStatus.NO_SPACE, StoreFull),
        (m.FileStatus.TOO_LARGE, StoreFull),
        (m.FileStatus.CONFLICT, Conflict),
        (m.FileStatus.INVALID_PATH, InvalidPath),
        (m.FileStatus.DENIED, PermissionDenied),
    ]
}  # keyed by type too: IntEnums of different types compare equal by value


def refusal(status: IntEnum, message: str) -> FSError:
    """The typed exception for a refusing status in a response."""
    return _REFUSALS.get((type(status), status), RemoteError)(message)


def error_from(msg: m.Error) -> FSError:
    """The typed exception for an Error packet from the server."""
    kind = _ERROR_TYPES.get(msg.code)
    if kind is not None:
        return kind(msg.message, msg.code)
    return RemoteError(f"server error {msg.code.name}: {msg.message}", msg.code)


class Mailbox:
    """Events of one file session, in order, for the coroutine that drives it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.events: deque[Any] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.failure: BaseException | None = None

    def deliver(self, event: Any) -> None:
        self.events.append(event)
        self._wake()

    def fail(self, exc: BaseException) -> None:
        self.failure = exc
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def next(self) -> Any:
        while not self.events:
            if self.failure is not None:
                raise self.failure
            self.waiter = self.loop.create_future()
            await self.waiter
        event = self.events.popleft()
        if isinstance(event, m.Error):
            raise error_from(event)
        return event


class Leftover:
    """A session its caller gave up while the server still owed it an answer. When the answer
    comes, the session is ended properly: an upload the server has just accepted (or asked to
    be sent again) is cancelled, so its reservation does not outlive the caller."""

    def __init__(self, proto: ClientProtocol, fid: int) -> None:
        self.proto = proto
        self.fid = fid

    def deliver(self, event: Any) -> None:
        phase = self.proto.conn.sessions.phase(self.fid)
        if phase is Phase.UPLOADING:
            self.proto.send(m.FileSyncCancel(self.fid))
            phase = None
        if phase is None:
            self.proto.mailboxes.pop(self.fid, None)

    def fail(self, exc: BaseException) -> None:
        self.proto.mailboxes.pop(self.fid, None)


class ClientProtocol(asyncio.BufferedProtocol):
    def __init__(self, max_packet_limit: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.conn = FSConnection(Role.CLIENT, max_packet_limit=max_packet_limit)
        self.staging = bytearray(STAGING_BYTES)
        self.view = memoryview(self.staging)
        self.fill = 0
        self.direct = False
        self.transport: asyncio.Transport | None = None
        self.mailboxes: dict[int, Mailbox] = {}
        self.downloads: dict[int, DownloadTarget] = {}
        self.requests: dict[int, asyncio.Future[Any]] = {}
        self.handshake: asyncio.Future[m.VersionHandshakeResponse] = self.loop.create_future()
        self.pings: dict[int, asyncio.Future[None]] = {}
        self.notifications: asyncio.Queue[m.ChangeNotification | BaseException] | None = None
        self.slots = Slots(self.conn, self.loop)
        self.failure: BaseException | None = None
        self.head = b""
        """The first bytes the server sent (what they look like says what it speaks)."""
        self.outbox: list[bytes | bytearray] = []
        self.written = 0
        """Bytes handed to the transport so far; minus ``buffered()``, the bytes sent."""
        self.closed = self.loop.create_future()
        self.writable = asyncio.Event()
        self.writable.set()
        self.sock_fd = -1
        self.water = RecvWater(None)

    # -- asyncio protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        sock = transport.get_extra_info("socket")
        self.sock_fd = sock.fileno() if sock is not None else -1
        self.water = RecvWater.of(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.fill == 0:
            target = self.conn.direct_target()
            if target is not None and len(target) >= DIRECT_READ_MIN:
                self.direct = True
                return target
        self.direct = False
        return self.view[self.fill :]

    def buffer_updated(self, nbytes: int) -> None:
        if self.direct:
            try:  # the sink writes to disk: a full disk ends the transfer, clearly
                self.conn.direct_received(nbytes)
            except OSError as exc:
                self.abort(exc, send_error=False)
                return
            self.water.after_read(self.conn, staged=False)
            return
        self.fill += nbytes
        if not self.head:
            self.head = bytes(self.view[: min(self.fill, HEAD_BYTES)])
        try:
            events, used = self.conn.receive(self.view[: self.fill])
            for event in events:
                self.dispatch(event)
        except RemoteProtocolError as exc:
            self.abort(exc, send_error=True)
            return
        except (FSError, OSError) as exc:
            self.abort(exc, send_error=True)
            return
        rest = self.fill - used
        self.staging[:rest] = self.view[used : self.fill]
        self.fill = rest
        self._grow_staging()
        self.water.after_read(self.conn, staged=self.fill > 0)
        if self.slots.waiters and events:
            self.slots.wake()

    def _grow_staging(self) -> None:
        """After the handshake a whole packet may be larger than the initial buffer."""
        want = self.conn.max_packet + DIRECT_READ_MIN
        if len(self.staging) < want:
            bigger = bytearray(want)
            bigger[: self.fill] = self.view[: self.fill]
            self.staging, self.view = bigger, memoryview(bigger)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.sock_fd = -1  # (the number may soon name another file)
        if self.failure is None:  # first, so that nothing started from here on waits
            self.failure = ConnectionLost(
                f"connection to server lost{': ' + str(exc) if exc else ''}"
            )
        self.fail_all(self.failure)
        self.writable.set()
        if not self.closed.done():
            self.closed.set_result(None)

    # -- sending -----------------------------------------------------------------------------

    def send(self, msg: m.Message) -> None:
        """Queue a packet; everything queued in one loop iteration leaves in one write."""
        if self.failure is not None:  # the server's reason, not the state machine's complaint
            raise self.failure
        self.queue(self.conn.send(msg))
        self.slots.sent(msg)

    def queue(self, packet: bytes | bytearray) -> None:
        """Queue bytes the caller will not touch again (they may leave later)."""
        if self.failure is not None:
            raise self.failure
        self.outbox.append(packet)
        if len(self.outbox) == 1:
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        outbox = self.outbox
        if outbox and self.transport is not None and not self.transport.is_closing():
            if len(outbox) <= WRITEV_MAX:  # a few packets (batches are big): no copy
                self.written += sum(map(len, outbox))
                self.transport.writelines(outbox)
            else:
                data = b"".join(outbox)  # one write: writev over many small packets is slow
                self.written += len(data)
                self.transport.write(data)
        self.outbox = []

    def write(self, chunks: list[bytes | bytearray | memoryview]) -> None:
        """Write data packets now, after whatever was queued before them."""
        if self.failure is not None:
            raise self.failure
        assert self.transport is not None
        self.flush()
        self.written += sum(len(chunk) for chunk in chunks)
        self.transport.writelines(chunks)

    async def ready_to_send(self) -> None:
        """Wait until the transport takes more; raise why the connection ended, if it has.
        A sender must stop there: a closed connection's state machine refuses to frame its
        data (with a complaint of its own, not the server's reason), and a transport that
        failed drops what it is given, with a warning per write.

        It always gives the loop a turn while the transport holds bytes: uvloop hands queued
        bytes to the socket only when the loop runs, and ``writable`` is set until 8 MiB are
        queued, so a sender that compresses between writes would otherwise queue all of them
        before the first leaves, and the link would idle (see ``docs/ARCHITECTURE.md``)."""
        if self.buffered():
            await asyncio.sleep(0)
        await self.writable.wait()
        if self.failure is None and self.transport is not None and self.transport.is_closing():
            await self.closed  # a failed write: connection_lost says why, at its turn
        if self.failure is not None:
            raise self.failure

    def buffered(self) -> int:
        return self.transport.get_write_buffer_size() if self.transport else 0

    def backlog(self) -> int:
        """Bytes written and not yet taken by the link: the transport's buffer and the
        socket's own queue (which holds a few batches before the transport holds any)."""
        return self.buffered() + unsent(self.sock_fd)

    # -- receiving ---------------------------------------------------------------------------

    def abandon_download(self, fid: int) -> None:
        """The download is over, or given up: its sink must never be written again."""
        self.conn.detach_sink(fid)
        target = self.downloads.pop(fid, None)
        if target is not None:
            target.discard()

    def dispatch(self, event: Any) -> None:
        if isinstance(event, DataChunk):
            target = self.downloads.get(event.file_id)
            if target is not None and target.sink is not None:
                target.sink.write(event.data)
        elif isinstance(event, m.DownloadResponse):
            self.on_download_response(event)
        elif isinstance(event, m.FileSyncCheckHash):
            self.on_download_hash(event)
        elif isinstance(event, m.Error):
            self.on_error(event)
        elif isinstance(event, m.ChangeNotification):
            assert self.notifications is not None
            self.notifications.put_nowait(event)
        elif type(event) in RESPONSES:
            fut = self.requests.pop(event.request_id)
            if not fut.done():
                fut.set_result(event)
        elif isinstance(event, m.VersionHandshakeResponse):
            if not self.handshake.done():
                self.handshake.set_result(event)
        elif isinstance(event, m.Ping):
            self.on_ping(event)
        else:
            self._deliver(event.file_id, event)

    def start_download(self, fid: int, target: DownloadTarget) -> None:
        """*target* (opened) receives the payload of download *fid*, once its response says
        where the payload starts: until then, payload bytes are events (in order)."""
        self.downloads[fid] = target

    def on_download_response(self, msg: m.DownloadResponse) -> None:
        target = self.downloads.get(msg.file_id)
        if target is not None:
            target.entry = msg.entry
            if msg.status is m.LookupStatus.OK:
                self.conn.attach_sink(msg.file_id, target.begin(msg.offset))
        self._deliver(msg.file_id, msg)

    def on_download_hash(self, msg: m.FileSyncCheckHash) -> None:
        """The last packet of a download: verify, answer, and wake the waiting ``get``."""
        target = self.downloads.pop(msg.file_id, None)
        if target is None or target.entry is None:  # given up: just end the session
            self.send(m.FileSyncCheckHashResponse(msg.file_id, m.HashStatus.MISMATCH, msg.digest))
            self.mailboxes.pop(msg.file_id, None)
            return
        actual = target.finish()
        ok = actual == msg.digest == target.entry.digest
        status = m.HashStatus.OK if ok else m.HashStatus.MISMATCH
        self.send(m.FileSyncCheckHashResponse(msg.file_id, status, actual))
        self._deliver(msg.file_id, (ok, actual))

    def on_error(self, msg: m.Error) -> None:
        if msg.file_id == NO_FILE:
            self.abort(error_from(msg), send_error=False)
        else:
            self._deliver(msg.file_id, msg)

    def _deliver(self, fid: int, event: Any) -> None:
        """Hand an event to its session; a session given up by its caller drops it."""
        box = self.mailboxes.get(fid)
        if box is not None:
            box.deliver(event)

    def on_ping(self, msg: m.Ping) -> None:
        if not msg.reply:
            self.send(m.Ping(msg.nonce, reply=True))
        elif msg.nonce in self.pings:
            fut = self.pings.pop(msg.nonce)
            if not fut.done():
                fut.set_result(None)

    # -- failure -----------------------------------------------------------------------------

    def abort(self, exc: BaseException, send_error: bool) -> None:
        """Fail every pending operation with *exc* and close the connection."""
        if self.failure is None:
            self.failure = exc
        if self.transport is not None and not self.transport.is_closing():
            self.flush()
            if send_error and isinstance(exc, FSError):
                self.transport.write(encode(m.Error(exc.code, NO_FILE, exc.message)))
            self.transport.close()
        self.fail_all(exc)

    def fail_all(self, exc: BaseException) -> None:
        for box in list(self.mailboxes.values()):  # failing one may end or start others
            box.fail(exc)
        for fut in [*self.requests.values(), *self.pings.values(), self.handshake]:
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # retrieved: nobody may be waiting for a ping
        self.requests.clear()
        self.pings.clear()
        for target in self.downloads.values():
            target.cut()  # kept (to be resumed) or discarded by its ``get``
        self.downloads.clear()
        if self.notifications is not None:
            self.notifications.put_nowait(exc)
        self.slots.fail()
