"""Where upload bytes come from and where download bytes go, in bounded memory.

``UploadSource`` reads a file (or bytes) in chunks and knows its digest. ``FileSink`` receives a
download into a fixed-size buffer that it writes out and hashes as it fills. ``DownloadTarget``
puts the result in place atomically and durably: a temp file in the destination's folder, then,
once the digest checks out, an fsync, a rename, and an fsync of the folder. A download cut short
keeps its temp file (a ``Partial``), to go on from its end (see ``fsclient.resume``).
"""

from __future__ import annotations

import contextlib
import os
import stat
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

from common.digest import StreamingDigest, digest_of
from common.limits import wire_mtime
from common.messages import FileEntry
from fsclient.durable import FolderSync, WriteBehind
from fsclient.localfiles import CHUNK, SMALL_FILE, TEMP_MARK

FIRST_BUFFER = 4 << 10
"""A new download's first buffer: grown up to CHUNK once the reply says how much comes, before
any byte of it (a fresh 1 MiB buffer per 4 KiB file was half the CPU of a client fetching many
small files; a 64 KiB one still a twentieth of one fetching 8-byte files)."""
PREHASH_MAX = 64 << 20
"""Files up to this size are hashed before they are sent, so the server can skip content it
already holds. Bigger ones are hashed as they stream: one read of the file, not two."""

Known = tuple[int, int, bytes]
"""(size, mtime_ns, digest) of a file as last read."""

Progress = Callable[[int, int], None]
"""Called as a transfer advances with (bytes done, bytes in all)."""


def temp_name(dest: Path) -> Path:
    """A fresh temp file name beside *dest*; ``TEMP_MARK`` in it is how the sync scanner
    and ignore rules know a temp file (a leftover one is removed)."""
    return dest.with_name(f".{dest.name}{TEMP_MARK}{os.urandom(4).hex()}")


async def install(temp: Path, dest: Path, mode: int, mtime_ns: int,
                  before_replace: Callable[[], None] | None = None,
                  folders: FolderSync | None = None) -> int:  # fmt: skip
    """Give *temp* its mode and mtime, flush it to the disk, rename it to *dest*, and flush
    the folder: after a power cut *dest* is the old file or the whole new one, and once this
    returns, the new one for good (``fsclient.durable``). *before_replace* runs just before
    the rename and may raise to stop it. *folders*: folder flushes shared with other calls.
    Returns the permissions the file kept (``durable.settle``)."""
    folders = folders or FolderSync()
    kept = await folders.files.settle(temp, mode & 0o777, mtime_ns)
    if before_replace is not None:
        before_replace()
    os.replace(temp, dest)
    await folders.sync(dest.parent)
    return kept


def as_written(entry: FileEntry, kept: int) -> FileEntry:
    """*entry*, with the permissions its file kept here (``install``), which a file system
    that cannot hold the server's makes its own."""
    mode = entry.mode & ~0o7777 | kept
    return entry if mode == entry.mode else replace(entry, mode=mode)


class Partial(NamedTuple):
    """A download cut short: its temp file holds the first ``size`` bytes of the content
    whose digest is ``digest``."""

    temp: Path
    digest: bytes
    size: int


class FileChanged(OSError):
    """The local file changed while it was being uploaded."""


@dataclass
class SourceMeta:
    size: int
    mtime_ns: int
    mode: int
    digest: bytes | None
    """None until the bytes have been read once (large files are hashed as they stream)."""


class UploadSource(ABC):
    """The bytes of one upload."""

    meta: SourceMeta

    @abstractmethod
    def view(self, pos: int, n: int) -> memoryview | None:
        """*n* bytes at *pos* if they are in memory already, else None (use ``read_into``)."""

    def read_into(self, pos: int, into: memoryview) -> memoryview:
        """Fill *into* with the bytes at *pos*."""
        raise TypeError(f"{type(self).__name__} holds its bytes in memory")

    def refresh(self) -> None:
        """Look at the data again (after a digest mismatch it may have changed)."""

    def check_unchanged(self) -> None:
        """Raise FileChanged if the data changed since ``refresh``."""

    def add_digest(self) -> bool:
        """Hash the whole source now if its digest is not known yet (a big file is hashed
        while it streams); True if that gave a digest the upload did not have."""
        return False

    def close(self) -> None:
        """Release the file, if any."""


class BytesSource(UploadSource):
    def __init__(
        self, data: bytes, mtime_ns: int = 0, mode: int = 0o644, digest: bytes | None = None
    ) -> None:
        self.data = memoryview(data)
        self.meta = SourceMeta(len(data), mtime_ns, mode, digest or digest_of(data))

    def view(self, pos: int, n: int) -> memoryview | None:
        return self.data[pos : pos + n]


class FileSource(UploadSource):
    """A local file, read with ``preadv`` into buffers the caller lends, so memory stays
    bounded whatever the size. (Not mmap: a file truncated under a mapping raises SIGBUS.)"""

    def __init__(self, path: str | os.PathLike[str], known: Known | None = None) -> None:
        """*known*: (size, mtime_ns, digest) from an earlier read (the sync engine's state);
        if the file still has that size and mtime, the digest is trusted instead of read again
        (the server verifies it anyway), so even a big file can be matched to content the
        server holds: a renamed file is not sent again."""
        self.path = path
        self.known = known
        # O_NONBLOCK: opening a FIFO must not block; it is refused below as not a regular file
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        self.whole: bytes | None = None
        self.stamp: tuple[int, int] = (0, 0)
        try:
            self.refresh()
        except BaseException:
            self.close()
            raise

    def refresh(self) -> None:
        st = os.fstat(self.fd)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(f"{self.path} is not a regular file")
        size, digest = st.st_size, None
        self.whole = None
        if size <= SMALL_FILE:
            self.whole = os.pread(self.fd, size + 1, 0)
            if len(self.whole) != size:
                raise FileChanged(f"{self.path} changed size while it was read")
            digest = digest_of(self.whole)
        elif self.known is not None and self.known[:2] == (size, wire_mtime(st.st_mtime_ns)):
            digest = self.known[2]
        elif size <= PREHASH_MAX:
            digest = self._hash(size)
        self.known = None  # a refresh after a mismatch reads the file again
        self.stamp = (st.st_size, wire_mtime(st.st_mtime_ns))
        self.meta = SourceMeta(size, self.stamp[1], stat.S_IMODE(st.st_mode), digest)

    def add_digest(self) -> bool:
        if self.meta.digest is not None:
            return False
        digest = self._hash(self.meta.size)
        self.check_unchanged()
        self.meta = replace(self.meta, digest=digest)
        return True

    def _hash(self, size: int) -> bytes:
        hasher = StreamingDigest()
        buffer = memoryview(bytearray(CHUNK))
        for pos in range(0, size, CHUNK):
            hasher.update(self.read_into(pos, buffer[: min(CHUNK, size - pos)]))
        return hasher.digest()

    def view(self, pos: int, n: int) -> memoryview | None:
        return None if self.whole is None else memoryview(self.whole)[pos : pos + n]

    def read_into(self, pos: int, into: memoryview) -> memoryview:
        if os.preadv(self.fd, [into], pos) < len(into):
            raise FileChanged(f"{self.path} shrank while it was being uploaded")
        return into

    def check_unchanged(self) -> None:
        if self.whole is not None:  # sent from memory: what was hashed is what was sent
            return
        st = os.fstat(self.fd)
        if (st.st_size, wire_mtime(st.st_mtime_ns)) != self.stamp:
            raise FileChanged(f"{self.path} changed while it was being uploaded")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class BufferRing:
    """Read buffers for zero-copy sends: the transport keeps a view of each until the bytes
    are on the wire, so a buffer is reused only once everything written from it was sent."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.free: list[bytearray] = []
        self.busy: deque[tuple[int, bytearray]] = deque()

    def take(self, sent: int) -> bytearray:
        """A buffer; *sent* is how many bytes the transport has sent so far."""
        while self.busy and self.busy[0][0] <= sent:
            self.free.append(self.busy.popleft()[1])
        return self.free.pop() if self.free else bytearray(self.size)

    def lend(self, buffer: bytearray, written: int) -> None:
        """*buffer* is in use until the transport has sent *written* bytes in all."""
        self.busy.append((written, buffer))


class FileSink:
    """A download's bytes: filled in place by the connection, written and hashed per chunk."""

    def __init__(self, fd: int, on_flush: Callable[[int], None] | None = None,
                 size: int = CHUNK) -> None:  # fmt: skip
        self.fd = fd
        self.buffer = bytearray(size)
        self.view = memoryview(self.buffer)
        self.fill = 0
        self.written = 0
        self.on_flush = on_flush
        self.hasher = StreamingDigest()
        self.behind = WriteBehind(fd)

    def take_prefix(self, size: int) -> None:
        """The file holds *size* bytes already (a download cut short): hash them, and write
        after them."""
        for pos in range(0, size, CHUNK):
            n = min(CHUNK, size - pos)
            if os.preadv(self.fd, [self.view[:n]], pos) < n:
                raise FileChanged("a partly downloaded file shrank")
            self.hasher.update(self.view[:n])
        self.written = size
        os.lseek(self.fd, size, os.SEEK_SET)

    def expect(self, size: int) -> None:
        """*size* more bytes are coming: a buffer that fits them, up to CHUNK (made only while
        it holds nothing)."""
        want = min(CHUNK, size)
        if want > len(self.buffer) and self.fill == 0:
            self.buffer = bytearray(want)
            self.view = memoryview(self.buffer)

    def restart(self) -> None:
        """Forget what the file holds: the bytes come again from the first."""
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.written = self.fill = 0
        self.hasher = StreamingDigest()

    def target(self) -> memoryview:
        return self.view[self.fill :]

    def advance(self, nbytes: int) -> None:
        self.fill += nbytes
        if self.fill == len(self.buffer):
            self.flush()

    def write(self, data: memoryview | bytes) -> None:
        """Bytes that arrived before the sink was attached."""
        data = memoryview(data)
        while data:
            target = self.target()
            n = min(len(target), len(data))
            target[:n] = data[:n]
            self.advance(n)
            data = data[n:]

    def flush(self) -> None:
        data = self.view[: self.fill]
        self.hasher.update(data)
        self.written += len(data)
        self.behind.wrote(len(data))
        while data:
            written = os.write(self.fd, data)
            data = data[written:]
        self.fill = 0
        if self.on_flush is not None:
            self.on_flush(self.written)

    def finish(self) -> bytes:
        self.flush()
        return self.hasher.digest()


class DownloadTarget:
    """One download on its way to *dest*: nothing appears under the real name until the
    digest checks out, and a failed download leaves nothing behind."""

    def __init__(self, dest: Path, progress: Progress | None = None) -> None:
        self.dest = dest
        self.progress = progress
        self.temp: Path | None = None
        self.fd = -1
        self.sink: FileSink | None = None
        self.entry: FileEntry | None = None
        self.held = 0
        """Bytes the temp file held when the request went out (a download resumed)."""
        self.expect: bytes | None = None
        """The digest of the file those bytes belong to."""
        self.resumable = True

    def open(self, partial: Partial | None = None) -> tuple[int, bytes | None]:
        """Open the temp file before the request goes out: *partial*'s, whose bytes are
        hashed now, or a new one. Returns the offset and digest to ask for."""
        if partial is not None:
            self.temp, self.fd = partial.temp, os.open(partial.temp, os.O_RDWR | os.O_CLOEXEC)
        else:
            self.temp = temp_name(self.dest)
            self.fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        on_flush = self._flushed if self.progress else None
        self.sink = FileSink(self.fd, on_flush, CHUNK if partial else FIRST_BUFFER)
        if partial is None:
            return 0, None
        self.sink.take_prefix(partial.size)
        self.held, self.expect = partial.size, partial.digest
        return partial.size, partial.digest

    def begin(self, offset: int) -> FileSink:
        """The server's answer: the payload starts at *offset*, where the file ends, or at
        0 (the content changed since, or the server cannot resume)."""
        assert self.sink is not None
        if offset != self.held:
            self.sink.restart()
            self.held = 0
        if self.entry is not None:
            self.sink.expect(self.entry.size - offset)
        return self.sink

    def _flushed(self, written: int) -> None:
        if self.progress is not None and self.entry is not None:
            self.progress(written, self.entry.size)

    def finish(self) -> bytes:
        """Flush and close; returns the digest of what was received."""
        assert self.sink is not None
        try:
            return self.sink.finish()
        finally:
            os.close(self.fd)
            self.fd = -1

    async def commit(self, before_replace: Callable[[], None] | None = None,
                     folders: FolderSync | None = None) -> int:  # fmt: skip
        """Put the verified file in place, durably (``install``). *before_replace* runs just
        before the rename and may raise to stop it (the sync engine checks that nobody changed
        the file meanwhile). Returns the permissions the file kept."""
        assert self.temp is not None and self.entry is not None
        kept = await install(self.temp, self.dest, self.entry.mode, self.entry.mtime_ns,
                             before_replace, folders)  # fmt: skip
        self.temp = None
        return kept

    def cut(self) -> None:
        """The connection ended: write out what arrived, for ``keep``."""
        if self.fd < 0:
            return
        try:
            if self.sink is not None:
                self.sink.flush()
        except OSError:
            self.resumable = False
        os.close(self.fd)
        self.fd = -1

    def keep(self) -> Partial | None:
        """The temp file of a download cut short, left in place to be resumed (None if it
        holds nothing to resume from)."""
        self.cut()
        sink, entry, temp = self.sink, self.entry, self.temp
        digest, size = (entry.digest, entry.size) if entry is not None else (self.expect, self.held)
        if not self.resumable or sink is None or temp is None or digest is None:
            return None
        if not 0 < sink.written <= size:
            return None
        self.temp = None  # (``discard`` leaves it)
        return Partial(temp, digest, sink.written)

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.temp is not None:
            with contextlib.suppress(FileNotFoundError):
                self.temp.unlink()
            self.temp = None
