"""Server-side state of one upload (``Upload``) and the writer of one download
(``DownloadStream``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from common import messages as m
from common.sinks import ViewSink
from fsserver.hashing import HashStream
from fsserver.store import Opened

if TYPE_CHECKING:
    from fsserver.connection import ClientConnection

ZERO_COPY_MIN = 64 * 1024
"""Payloads at least this big are written straight from the arena, without a copy."""
BATCH_BYTES = 256 * 1024
"""Smaller packets are joined into writes of about this size."""


@dataclass(slots=True)
class Upload:
    file_id: int
    path: str
    size: int
    mtime_ns: int
    mode: int
    base_version: int
    ticket: int
    offset: int
    attempts: int = 0
    committing: bool = False
    stream: HashStream | None = None


class StreamingSink(ViewSink):
    """An extent whose filled part is reported to the hasher digesting it as it arrives."""

    __slots__ = ("stream",)

    def __init__(self, view: memoryview, stream: HashStream) -> None:
        super().__init__(view)
        self.stream = stream

    def advance(self, nbytes: int) -> None:
        self.pos += nbytes
        self.stream.advanced(self.pos)


class DownloadStream:
    """Writes one stored file as FileSyncData packets, then its CheckHash.

    The extent is pinned by a store lease until the client's verdict arrives, so the arena
    memory that the transport still references is never reused under it.
    """

    def __init__(self, owner: ClientConnection, file_id: int, opened: Opened) -> None:
        self.owner = owner
        self.file_id = file_id
        self.entry = opened.entry
        self.offset = opened.offset
        self.lease = opened.lease
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = self.owner.loop.create_task(self.run())

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def run(self) -> None:
        owner, conn, fid = self.owner, self.owner.conn, self.file_id
        arena = owner.ctx.arena
        start, size = self.offset, self.entry.size
        payload = conn.max_payload
        pos = 0
        while pos < size:
            await owner.writable.wait()
            if owner.closing:
                return
            if payload >= ZERO_COPY_MIN:
                n = min(payload, size - pos)
                data = arena[start + pos : start + pos + n]
                owner.write_now([conn.data_header(fid, n), data])
                pos += n
            else:
                n = min(BATCH_BYTES, size - pos)
                owner.write_now([conn.frame_data(fid, arena[start + pos : start + pos + n])])
                pos += n
            await asyncio.sleep(0)  # let the worker's other connections run
        owner.send(m.FileSyncCheckHash(fid, self.entry.digest))
