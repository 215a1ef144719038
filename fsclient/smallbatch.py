"""Small-file batches on the client: ``Batcher`` packs whole small files into ``SmallFileBatch``
packets for ``BatchUpload`` (``Client.put_many``).

A file session costs three packets out and three back, each a codec and state-machine step on
both ends; a batch of about thirty 4 KiB files costs one packet each way. Each file is read once
(``read_small``) and hashed from the bytes that are sent. A file the server reports as a digest
mismatch is handed back to ``BatchUpload``, which sends it again through a file session.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from common import messages as m
from common.batches import batch_packet_limit
from common.codec import record_codec
from common.errors import FSError, RemoteError
from common.limits import (
    HEADER_SIZE,
    MAX_BATCH_FILE_BYTES,
    MAX_BATCH_FILES,
    MAX_BATCHES_IN_FLIGHT,
    wire_mtime,
)
from fsclient.protocol import refusal

if TYPE_CHECKING:
    from fsclient.batch import BatchUpload, Result

S = m.FileStatus
BATCH_WINDOW = min(16, MAX_BATCHES_IN_FLIGHT)
"""Batches in flight on one connection: enough to keep the server's worker busy."""


def read_small(local: str | os.PathLike[str], limit: int) -> tuple[bytes, int, int] | int:
    """(bytes, mtime_ns, mode) of a regular file of at most *limit* bytes, read in one call;
    else its size: it is bigger (or changed size while it was read: a file session copes)."""
    fd = os.open(local, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(f"{local} is not a regular file")
        if st.st_size > limit:
            return st.st_size
        data = os.pread(fd, st.st_size + 1, 0)
        if len(data) != st.st_size:
            return os.fstat(fd).st_size  # its size now, not the one it had
        return data, wire_mtime(st.st_mtime_ns), stat.S_IMODE(st.st_mode)
    finally:
        os.close(fd)


def result_of(f: m.SmallFile, result: m.FileResult) -> Result | None:
    """The entry or error for one file; None for a mismatch (to be sent again)."""
    if result.status in (S.STORED, S.ALREADY_HAVE_CONTENT):
        return m.FileEntry(len(f.data), result.version, f.mtime_ns, f.mode, f.digest, f.path)
    if result.status is S.MISMATCH:
        return None
    return refusal(result.status, result.message)


class Batcher:
    """Fills batches as ``BatchUpload`` reads files, and keeps up to BATCH_WINDOW in flight."""

    def __init__(self, upload: BatchUpload, max_packet: int) -> None:
        self.upload = upload
        self.proto = upload.proto
        # From the codec, here rather than at import (a CLI start that sends no batch does not
        # build it). A file's record: fixed fields, u16 path length, u32 data length (path and
        # bytes on top). A batch: packet header, fixed fields, u16 record count.
        self.record_bytes = record_codec(m.SmallFile).struct.size + 2 + 4
        head = HEADER_SIZE + record_codec(m.SmallFileBatch).struct.size + 2
        self.room = batch_packet_limit(max_packet) - head
        self.files: list[m.SmallFile] = []
        self.indices: list[int] = []
        self.size = 0
        self.full: deque[tuple[list[int], list[m.SmallFile]]] = deque()
        self.in_flight = 0
        self.sent = False
        """A batch went out since ``BatchUpload.refill`` last looked."""

    @property
    def blocked(self) -> bool:
        """A full batch waits for the window: read no more files for now."""
        return bool(self.full)

    @property
    def idle(self) -> bool:
        return not (self.in_flight or self.full or self.files)

    def add(self, index: int, f: m.SmallFile, path_bytes: int) -> None:
        """Add a file whose path is *path_bytes* long in UTF-8."""
        cost = self.record_bytes + path_bytes + len(f.data)
        if self.files and (self.size + cost > self.room or len(self.files) >= MAX_BATCH_FILES):
            self.full.append((self.indices, self.files))
            self.files, self.indices, self.size = [], [], 0
            self.pump()
        self.files.append(f)
        self.indices.append(index)
        self.size += cost

    def limit(self, path_bytes: int) -> int:
        """The largest file that fits a batch of its own under a path of *path_bytes* bytes;
        a bigger one goes through a file session (near MAX_BATCH_FILE_BYTES with the
        smallest packets)."""
        return min(MAX_BATCH_FILE_BYTES, self.room - self.record_bytes - path_bytes)

    def pump(self, final: bool = False) -> None:
        """Send the full batches the window allows (and the last, partial one if *final*).
        The connection's limits are shared by every call on it (a batch is a request, and at
        most MAX_BATCHES_IN_FLIGHT are outstanding): at a limit this batcher waits, and the
        next answer on the connection wakes it."""
        if final and self.files:
            self.full.append((self.indices, self.files))
            self.files, self.indices, self.size = [], [], 0
        proto = self.proto
        while self.full and self.in_flight < BATCH_WINDOW:
            if not proto.slots.batch_room() and proto.failure is None:
                proto.slots.when_room(self.pump)
                return
            self.send(*self.full.popleft())

    def send(self, indices: list[int], files: list[m.SmallFile]) -> None:
        proto = self.proto
        rid = self.upload.client.new_request_id()
        fut: asyncio.Future[m.SmallFileBatchResponse] = self.proto.loop.create_future()
        try:
            if proto.failure is not None:
                raise proto.failure
            proto.requests[rid] = fut
            written = proto.written
            proto.send(m.SmallFileBatch(rid, tuple(files)))
            proto.flush()  # at once: the server starts on it while the next batch is read
            self.upload.client.payloads.batch_sent(proto.backlog(), proto.written - written)
            self.sent = True
        except (FSError, OSError) as exc:
            proto.requests.pop(rid, None)
            self.upload.settle(indices, [exc] * len(indices), refill=False)
            return
        self.in_flight += 1
        fut.add_done_callback(self._answered(indices, files))

    def _answered(self, indices: list[int], files: list[m.SmallFile]
                  ) -> Callable[[asyncio.Future[m.SmallFileBatchResponse]], None]:  # fmt: skip
        def done(fut: asyncio.Future[m.SmallFileBatchResponse]) -> None:
            self.in_flight -= 1
            exc = fut.exception() if not fut.cancelled() else RemoteError("batch cancelled")
            if exc is not None:
                error = exc if isinstance(exc, (FSError, OSError)) else RemoteError(str(exc))
                self.upload.settle(indices, [error] * len(indices))
            else:
                results = fut.result().results
                self.upload.settle(indices, [result_of(f, r) for f, r in
                                             zip(files, results, strict=True)])  # fmt: skip

        return done


__all__ = ["Batcher", "read_small"]
