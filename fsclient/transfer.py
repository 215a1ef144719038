"""Where upload bytes come from and where download bytes go, in bounded memory.

``UploadSource`` reads a file (or bytes) in chunks and knows its digest. ``FileSink`` receives a
download into a fixed-size buffer that it writes out and hashes as it fills. ``DownloadTarget``
puts the result in place atomically: a temp file in the destination's folder, then a rename once
the digest checks out.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from common.digest import StreamingDigest, digest_of
from common.messages import FileEntry

CHUNK = 1 << 20
SMALL_FILE = 1 << 20
"""Files up to this size are read once into memory, hashed, and sent from there."""
TEMP_MARK = ".fs-tmp-"


class FileChanged(OSError):
    """The local file changed size while it was being uploaded."""


@dataclass
class SourceMeta:
    size: int
    mtime_ns: int
    mode: int
    digest: bytes


class UploadSource(ABC):
    """The bytes of one upload; ``read(pos, n)`` gives a view of up to *n* bytes at *pos*."""

    meta: SourceMeta

    @abstractmethod
    def read(self, pos: int, n: int) -> memoryview:
        """A view that stays valid until the next read (or ``fresh_buffer``)."""

    def fresh_buffer(self) -> None:
        """The transport still holds views of earlier reads: do not overwrite them."""

    def refresh(self) -> None:
        """Look at the data again (after a digest mismatch it may have changed)."""

    def close(self) -> None:
        """Release the file, if any."""


class BytesSource(UploadSource):
    def __init__(
        self, data: bytes, mtime_ns: int = 0, mode: int = 0o644, digest: bytes | None = None
    ) -> None:
        self.data = memoryview(data)
        self.meta = SourceMeta(len(data), mtime_ns, mode, digest or digest_of(data))

    def read(self, pos: int, n: int) -> memoryview:
        return self.data[pos : pos + n]


class FileSource(UploadSource):
    """A local file. Small ones are read whole; big ones are read chunk by chunk, once to
    hash and once to send, so memory stays bounded whatever the size."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.file = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        self.buffer = bytearray(CHUNK)
        self.whole: bytes | None = None
        self.refresh()

    def refresh(self) -> None:
        st = os.fstat(self.file.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(f"{self.path} is not a regular file")
        size = st.st_size
        if size <= SMALL_FILE:
            self.file.seek(0)
            self.whole = self.file.read()
            size = len(self.whole)
            digest = digest_of(self.whole)
        else:
            self.whole = None
            digest = self._hash_chunks(size)
        self.meta = SourceMeta(size, st.st_mtime_ns, stat.S_IMODE(st.st_mode), digest)

    def _hash_chunks(self, size: int) -> bytes:
        hasher = StreamingDigest()
        pos = 0
        while pos < size:
            view = self.read(pos, min(CHUNK, size - pos))
            hasher.update(view)
            pos += len(view)
        return hasher.digest()

    def fresh_buffer(self) -> None:
        self.buffer = bytearray(CHUNK)

    def read(self, pos: int, n: int) -> memoryview:
        if self.whole is not None:
            return memoryview(self.whole)[pos : pos + n]
        view = memoryview(self.buffer)[: min(n, CHUNK)]
        got = os.preadv(self.file.fileno(), [view], pos)
        if got < len(view):
            raise FileChanged(f"{self.path} shrank while it was being uploaded")
        return view

    def close(self) -> None:
        self.file.close()


class FileSink:
    """A download's bytes: filled in place by the connection, written and hashed per chunk."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.buffer = bytearray(max(1, min(CHUNK, size)))
        self.view = memoryview(self.buffer)
        self.fill = 0
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
        while data:
            written = os.write(self.fd, data)
            data = data[written:]
        self.fill = 0

    def finish(self) -> bytes:
        self.flush()
        return self.hasher.digest()


class DownloadTarget:
    """One download on its way to *dest*: nothing appears under the real name until the
    digest checks out, and a failed download leaves nothing behind."""

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.temp: Path | None = None
        self.fd = -1
        self.sink: FileSink | None = None
        self.entry: FileEntry | None = None

    def open(self) -> FileSink:
        """Create the temp file before the request goes out, so that every payload byte
        lands in the sink, in order, from the first packet on."""
        self.temp = self.dest.with_name(f".{self.dest.name}{TEMP_MARK}{secrets.token_hex(4)}")
        self.fd = os.open(self.temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self.sink = FileSink(self.fd, CHUNK)
        return self.sink

    def finish(self) -> bytes:
        """Flush and close; returns the digest of what was received."""
        assert self.sink is not None
        try:
            return self.sink.finish()
        finally:
            os.close(self.fd)
            self.fd = -1

    def commit(self) -> None:
        assert self.temp is not None and self.entry is not None
        os.chmod(self.temp, self.entry.mode & 0o777)
        os.utime(self.temp, ns=(self.entry.mtime_ns, self.entry.mtime_ns))
        os.replace(self.temp, self.dest)
        self.temp = None

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.temp is not None:
            with contextlib.suppress(FileNotFoundError):
                self.temp.unlink()
            self.temp = None
