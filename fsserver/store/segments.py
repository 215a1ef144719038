"""Blob bytes on disk: append-only segment files of checksummed records.

A record is a 48-byte header (magic, blob id, size, the content's XXH3-128 digest, and an
XXH3-64 of those fields) followed by the content. The catalog (``catalog.py``) says where each
live blob's record is; a record is only ever appended, and a segment is only ever removed whole
(by compaction, once its live records were copied on). The header's own check tells a torn or
overwritten header; the digest tells torn or damaged content.

Files are named ``NNNNNNNN.seg`` in the ``segments`` folder of the data dir. One is open for
appending at a time; a new one is started when it passes ``SEGMENT_BYTES``.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import xxhash

MAGIC = b"FSB1"
HEADER = struct.Struct("<4s4xQQ16s")
"""magic, (pad), blob id, size, digest; then the XXH3-64 of these 40 bytes."""
CHECK = struct.Struct("<Q")
HEADER_SIZE = HEADER.size + CHECK.size
SEGMENT_BYTES = 256 << 20
WRITE_CHUNK = 8 << 20
IOV_RUN = 512
"""Records gathered into one ``writev`` (two buffers each, under the kernel's 1024)."""


class SegmentDamage(ValueError):
    """A record that does not check out: the message names the file and the offset."""


def segment_name(number: int) -> str:
    return f"{number:08d}.seg"


def header(blob_id: int, size: int, digest: bytes) -> bytes:
    fields = HEADER.pack(MAGIC, blob_id, size, digest)
    return fields + CHECK.pack(xxhash.xxh3_64_intdigest(fields))


def check_header(raw: bytes, where: str) -> tuple[int, int, bytes]:
    """(blob id, size, digest) of a record header, or SegmentDamage."""
    if len(raw) < HEADER_SIZE:
        raise SegmentDamage(f"{where}: record header cut short ({len(raw)} of {HEADER_SIZE} bytes)")
    fields = raw[: HEADER.size]
    magic, blob_id, size, digest = HEADER.unpack(fields)
    (check,) = CHECK.unpack_from(raw, HEADER.size)
    if magic != MAGIC or check != xxhash.xxh3_64_intdigest(fields):
        raise SegmentDamage(f"{where}: record header does not check out")
    return blob_id, size, digest


@dataclass(slots=True)
class Placed:
    """Where a blob's record went: its segment and the offset of its header."""

    segment: int
    offset: int


class SegmentWriter:
    """Appends records to the newest segment; ``sync`` makes what was appended durable."""

    def __init__(self, folder: Path, number: int, size: int = 0) -> None:
        self.folder = folder
        self.number = number
        self.size = size
        self.fd = -1
        """Opened at the first append: a start that writes nothing leaves no empty file."""
        self.dirty = False
        self.new_files = False
        """A segment was created since the last sync: the folder needs an fsync too."""

    def _open(self, number: int) -> int:
        """Open for writing at its end (not O_APPEND, which ``copy_file_range`` refuses)."""
        fd = os.open(self.folder / segment_name(number),
                     os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)  # fmt: skip
        os.lseek(fd, self.size, os.SEEK_SET)
        return fd

    def cut(self, size: int) -> None:
        """Cut what was appended after *size* (a group that could not be written)."""
        if self.fd >= 0:
            os.ftruncate(self.fd, size)
            os.lseek(self.fd, size, os.SEEK_SET)
        self.size = size

    def append(self, blob_id: int, digest: bytes, content: memoryview) -> Placed:
        """Write one record (the content straight from *content*, e.g. the shared arena)."""
        self._make_room()
        placed = Placed(self.number, self.size)
        _write_all(self.fd, header(blob_id, len(content), digest))
        for start in range(0, len(content), WRITE_CHUNK):
            _write_all(self.fd, content[start : start + WRITE_CHUNK])
        self.size += HEADER_SIZE + len(content)
        self.dirty = True
        return placed

    def append_all(self, blobs: list[tuple[int, bytes, memoryview]]) -> list[Placed]:
        """``append`` for many (blob id, digest, content): small ones leave in one ``writev``
        per run (a group of small files costs a few system calls, not two per file). The
        loop is the persister's per-file cost, hence its local names."""
        placed: list[Placed] = []
        run: list[bytes | memoryview] = []
        pending = 0
        pack, check, tail = HEADER.pack, xxhash.xxh3_64_intdigest, CHECK.pack
        for blob_id, digest, content in blobs:
            size = len(content)
            if size >= WRITE_CHUNK or len(run) >= IOV_RUN or self.size >= SEGMENT_BYTES:
                self._flush(run, pending)  # (its records go before a roll)
                pending = 0
            if size >= WRITE_CHUNK:
                placed.append(self.append(blob_id, digest, content))
                continue
            if self.fd < 0 or self.size >= SEGMENT_BYTES:
                self._make_room()
            placed.append(Placed(self.number, self.size))
            fields = pack(MAGIC, blob_id, size, digest)
            run += (fields + tail(check(fields)), content)
            self.size += HEADER_SIZE + size
            pending += HEADER_SIZE + size
        self._flush(run, pending)
        return placed

    def _flush(self, run: list[bytes | memoryview], pending: int) -> None:
        """Write the records gathered in *run*, *pending* bytes (counted in ``size`` already),
        and empty it."""
        if not run:
            return
        written = os.writev(self.fd, run)
        if written < pending:  # a short write (rare): the rest, buffer by buffer
            views = [memoryview(part) for part in run]
            while views:
                while views and written >= len(views[0]):
                    written -= len(views.pop(0))
                if views:
                    views[0] = views[0][written:]
                    written = os.writev(self.fd, views)
        run.clear()
        self.dirty = True

    def append_from(self, source: int, offset: int, blob_id: int, size: int,
                    digest: bytes) -> Placed:  # fmt: skip
        """Copy the record at *offset* of the open segment file *source* (compaction), in the
        kernel: no byte of it passes through this process."""
        self._make_room()
        placed = Placed(self.number, self.size)
        _write_all(self.fd, header(blob_id, size, digest))
        done = 0
        while done < size:
            n = os.copy_file_range(source, self.fd, size - done, offset + HEADER_SIZE + done)
            if n == 0:
                raise SegmentDamage(f"segment {segment_name(placed.segment)}: blob {blob_id} "
                                    "cut short while it was compacted")  # fmt: skip
            done += n
        self.size += HEADER_SIZE + size
        self.dirty = True
        return placed

    def adopt(self, path: Path) -> Placed:
        """A file holding one complete record, written elsewhere (a staged upload,
        ``writebehind.py``), becomes a segment of its own, by a rename: the open segment is
        finished first (synced if it has news), and the next append opens a new one."""
        if self.fd >= 0 or self.size:
            if self.fd >= 0:
                if self.dirty:
                    os.fsync(self.fd)
                os.close(self.fd)
                self.fd = -1
            self.number += 1
        os.rename(path, self.folder / segment_name(self.number))
        placed = Placed(self.number, 0)
        self.number += 1
        self.size = 0
        self.dirty = False
        self.new_files = True
        return placed

    def _make_room(self) -> None:
        """Open the segment at the first append; start a new one once it is full."""
        if self.fd < 0:
            self.fd = self._open(self.number)
            self.new_files = True
        elif self.size >= SEGMENT_BYTES:
            self.roll()

    def roll(self) -> None:
        if self.dirty:
            os.fsync(self.fd)  # the old segment is complete before the new one is written
        os.close(self.fd)
        self.number += 1
        self.size = 0
        self.fd = self._open(self.number)
        self.new_files = True

    def sync(self) -> None:
        if self.dirty and self.fd >= 0:
            os.fsync(self.fd)
            self.dirty = False
        if self.new_files:
            sync_folder(self.folder)
            self.new_files = False

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    pwritev_all(fd, [data], offset)


def pwritev_all(fd: int, buffers: list[bytes | memoryview], offset: int) -> None:
    """Every byte of *buffers*, one after the other from *offset* (short writes go on)."""
    views = [memoryview(buffer) for buffer in buffers if len(buffer)]
    first = 0
    while first < len(views):
        written = os.pwritev(fd, views[first:] if first else views, offset)
        offset += written
        while first < len(views) and written >= len(views[first]):
            written -= len(views[first])
            first += 1
        if written:
            views[first] = views[first][written:]


def sync_folder(folder: Path) -> None:
    """A new or renamed file's name is durable only once its folder is synced."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def record_content(segment: memoryview, offset: int, expect: tuple[int, int, bytes],
                   where: str) -> memoryview:  # fmt: skip
    """The content of the record at *offset* of a mapped *segment*, checked to be the blob
    *expect* (id, size, digest); SegmentDamage if it is not."""
    got = check_header(bytes(segment[offset : offset + HEADER_SIZE]), f"{where} at offset {offset}")
    if got != expect:
        raise SegmentDamage(f"{where} at offset {offset}: holds blob {got[0]}, not {expect[0]}")
    start, size = offset + HEADER_SIZE, expect[1]
    if start + size > len(segment):
        raise SegmentDamage(f"{where} at offset {offset}: content cut short "
                            f"({max(len(segment) - start, 0)} of {size} bytes)")  # fmt: skip
    content = segment[start : start + size]
    if xxhash.xxh3_128_digest(content) != expect[2]:
        raise SegmentDamage(f"{where} at offset {offset}: content does not match its digest")
    return content


def copy_record(segment: memoryview, offset: int, into: memoryview,
                expect: tuple[int, int, bytes], where: str) -> None:  # fmt: skip
    """``record_content`` copied into *into* (its size)."""
    into[:] = record_content(segment, offset, expect, where)
