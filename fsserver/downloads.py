"""Downloads on the server: ``DownloadStream`` writes one stored file to a client (or the rest
of it, for a download resumed at an offset), and ``DownloadHandlers`` (a mixin of
``ClientConnection``) opens and ends them.

Large packets are written straight from the arena: the transport keeps views of shared memory
until the bytes are on the wire. So a download's lease, which stops its extent from being freed
and reused, is released only once the transport has sent everything written from it, not when
the session ends (a client can end it early, or answer before reading).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from common import compression
from common import messages as m
from common.connection import FSConnection
from fsserver import telemetry
from fsserver.connlog import ConnectionLog
from fsserver.context import WorkerContext
from fsserver.store import Opened, Refused

log = logging.getLogger(__name__)

ZERO_COPY_MIN = 64 * 1024
"""Payloads at least this big are written straight from the arena, without a copy."""
BATCH_BYTES = 256 * 1024
"""Smaller packets are joined into writes of about this size."""
DRAIN_POLL = 0.02


def resume_from(msg: m.DownloadRequest, entry: m.FileEntry) -> int:
    """Where the download starts: where the client asks, if what it holds is a prefix of the
    content stored now (it names that content's digest), else from the first byte."""
    if msg.offset and msg.digest == entry.digest and msg.offset <= entry.size:
        return msg.offset
    return 0


class DownloadStream:
    """Writes one stored file as FileSyncData packets, then its CheckHash."""

    def __init__(self, owner: DownloadHandlers, file_id: int, opened: Opened,
                 start: int = 0) -> None:  # fmt: skip
        self.owner = owner
        self.file_id = file_id
        self.entry = opened.entry
        self.offset = opened.offset
        self.lease = opened.lease
        self.first = start
        """The first byte sent: a download resumed from there."""
        self.last_byte = 0
        """The connection's ``written`` count after this stream's last write."""
        self.task: asyncio.Task[None] | None = None
        self.started = time.monotonic()

    def start(self) -> None:
        owner = self.owner
        if self.entry.size - self.first < ZERO_COPY_MIN and owner.writable.is_set():
            self.send_small()
        else:
            self.task = asyncio.get_running_loop().create_task(self.run())

    def send_small(self) -> None:
        """A small file goes out whole, at once, in the write that carries its response:
        no task, and one write instead of three (with many subscribers fetching each new
        file, the writes were most of a worker's time)."""
        owner, conn = self.owner, self.owner.conn
        start, size = self.offset, self.entry.size
        if owner.closing:
            return
        if self.first < size:
            owner.queue(conn.frame_data(self.file_id, owner.ctx.arena[start + self.first :
                                                                      start + size]))  # fmt: skip
        owner.send(m.FileSyncCheckHash(self.file_id, self.entry.digest))
        self.last_byte = owner.written + owner.outbox_bytes

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def run(self) -> None:
        owner, conn, fid = self.owner, self.owner.conn, self.file_id
        arena = owner.ctx.arena
        start, size = self.offset, self.entry.size
        payload = conn.max_payload
        compressed = conn.compressed(fid)
        pos = self.first
        while pos < size:
            await owner.writable.wait()
            if owner.closing:
                return
            if payload >= ZERO_COPY_MIN and not compressed:
                n = min(payload, size - pos)
                data = arena[start + pos : start + pos + n]
                owner.write_now([conn.data_header(fid, n), data])
            else:
                n = min(BATCH_BYTES, size - pos)
                owner.write_now([conn.frame_data(fid, arena[start + pos : start + pos + n])])
            pos += n
            self.last_byte = owner.written
            await asyncio.sleep(0)  # let the worker's other connections run
        owner.send(m.FileSyncCheckHash(fid, self.entry.digest))


class DownloadHandlers:
    ctx: WorkerContext
    conn: FSConnection
    share: str
    closing: bool
    written: int
    writable: asyncio.Event
    downloads: dict[int, DownloadStream]
    draining: list[DownloadStream]
    activity: ConnectionLog
    opening: dict[int, Any]
    peer: str
    send: Callable[[m.Message], None]
    write_now: Callable[[list[bytes | memoryview]], None]
    queue: Callable[[bytes], None]
    outbox_bytes: int
    call_store: Callable[..., None]
    session_path: Callable[[m.DownloadRequest], str | None]
    claim: Callable[[Any], bool]
    sent: Callable[[], int]

    def end_download(self, stream: DownloadStream) -> None:
        """The session is over; the lease goes once its bytes have left the transport."""
        stream.cancel()
        if self.sent() >= stream.last_byte:
            self.ctx.rpc.call("release", stream.lease)
            return
        if not self.draining:
            asyncio.get_running_loop().call_later(DRAIN_POLL, self.release_drained)
        self.draining.append(stream)

    def release_drained(self) -> None:
        if self.closing:
            return  # connection_lost releases the rest
        sent = self.sent()
        waiting = []
        for stream in self.draining:
            if sent >= stream.last_byte:
                self.ctx.rpc.call("release", stream.lease)
            else:
                waiting.append(stream)
        self.draining = waiting
        if waiting:
            asyncio.get_running_loop().call_later(DRAIN_POLL, self.release_drained)

    def release_all_downloads(self) -> None:
        """The connection is gone, and its transport with every view it held."""
        for stream in [*self.downloads.values(), *self.draining]:
            stream.cancel()
            self.ctx.rpc.call("release", stream.lease)
        self.downloads.clear()
        self.draining.clear()

    def on_download(self, msg: m.DownloadRequest | m.DownloadVersionRequest) -> None:
        fid = msg.file_id
        path = self.session_path(msg)
        if path is None:
            telemetry.SESSIONS.labels("download", "error").inc()
            self.activity.transfer_failed("download", msg.path, "invalid path")
        else:
            self.opening[fid] = msg
            if isinstance(msg, m.DownloadVersionRequest):
                self.call_store(lambda result: self.on_opened(msg, result), "open_version",
                                self.share, path, msg.version)  # fmt: skip
            else:
                self.call_store(lambda result: self.on_opened(msg, result), "open", self.share,
                                path)  # fmt: skip

    def on_opened(self, msg: m.DownloadRequest | m.DownloadVersionRequest, result: Any) -> None:
        fid = msg.file_id
        if not self.claim(msg):
            if not isinstance(result, Refused):
                self.ctx.rpc.call("release", result.lease)
            return
        if isinstance(result, Refused):
            status = m.LookupStatus(result.status)
            self.send(m.DownloadResponse(fid, status, 0, result.message, None))
            telemetry.SESSIONS.labels("download", "error").inc()
            self.activity.transfer_failed("download", msg.path, result.message or status.name)
            return
        start = resume_from(msg, result.entry)
        flags = self.download_flags(msg, result, start)
        self.send(m.DownloadResponse(fid, m.LookupStatus.OK, start, "", result.entry, flags))
        stream = DownloadStream(self, fid, result, start)
        self.downloads[fid] = stream
        stream.start()

    def download_flags(self, msg: m.DownloadRequest | m.DownloadVersionRequest, opened: Opened,
                       start: int) -> int:  # fmt: skip
        """ZSTD if the client may take the file compressed and its first bytes shrink."""
        entry, coding = opened.entry, self.conn.coding
        if not msg.flags & m.PayloadFlags.ZSTD or not coding.agreed:
            return 0
        first, left = opened.offset + start, entry.size - start

        def sample() -> memoryview:
            return self.ctx.arena[first : first + min(left, compression.PROBE_BYTES)]

        worth = compression.choose(entry.path, left, sample, coding.stats)
        return m.PayloadFlags.ZSTD if worth else 0

    def on_download_verdict(self, msg: m.FileSyncCheckHashResponse) -> None:
        stream = self.downloads.pop(msg.file_id)
        self.end_download(stream)
        ok = msg.status is m.HashStatus.OK
        telemetry.SESSIONS.labels("download", "ok" if ok else "mismatch").inc()
        path, size = stream.entry.path, stream.entry.size - stream.first
        if ok:
            telemetry.DOWNLOAD_SECONDS.observe(time.monotonic() - stream.started)
            self.activity.downloaded(path, size)
        else:
            self.activity.transfer_failed("download", path, "the client got a bad copy",
                                          logging.WARNING)  # fmt: skip
