"""``SegmentLoad``: one segment's live records copied into the arena at start, each checked.

The content goes into the arena with ``pwritev`` on the arena's file, not through a mapping.
A write that fills a new shared-memory page takes it without zeroing it first and without a
page fault per 4 KiB (a first touch of a tmpfs page costs ~2 µs on a VM: 0.5 s per GiB), and
the system call releases the GIL, so segments load side by side, one thread per core. The
digest is taken from the segment's own read-only mapping: the very bytes the kernel copies.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from fsserver.store.allocator import ALIGN, aligned
from fsserver.store.records import NamedBlob
from fsserver.store.segments import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    SegmentDamage,
    pwritev_all,
    record_content,
)

BlobRow = tuple[int, str, bytes, int, int, int]
"""A catalog row: (id, share, digest, size, segment, offset)."""

IOV_MAX = 1024
"""Buffers per ``pwritev`` (the kernel's limit)."""
_ZEROS = bytes(ALIGN)


@dataclass
class SegmentLoad:
    """The live blobs of one segment, the arena offset where the first goes (the others
    follow, each aligned), and what came of each: good blobs, or (id, why, offset, size)."""

    path: Path
    rows: list[BlobRow]
    at: int
    good: list[NamedBlob] = field(default_factory=list)
    bad: list[tuple[int, str, int, int]] = field(default_factory=list)

    @property
    def room(self) -> int:
        return sum(aligned(row[3]) for row in self.rows)

    def run(self, arena_fd: int) -> SegmentLoad:
        """Copy and check every row (a thread may run this; it touches nothing shared)."""
        with mapped(self.path) as view:
            self._copy(view, arena_fd)
        return self

    def _copy(self, view: memoryview | None, arena_fd: int) -> None:
        """The per-record loop of a start (100,000 files: 100,000 turns), hence its local
        names and its fast path: the header's fields compared, as bytes, with the ones the
        catalog expects (which proves them without their own check), the content's digest
        taken; only a record that fails is looked at again, for the reason."""
        run: list[memoryview | bytes] = []
        run_bytes = 0
        run_at = at = self.at
        end = len(view) if view is not None else -1
        pack, digest_of = HEADER.pack, xxhash.xxh3_128_digest
        for blob_id, share, digest, size, _, offset in self.rows:
            room = aligned(size)
            start = offset + HEADER_SIZE
            if (
                start + size <= end
                and bytes(view[offset : offset + HEADER.size]) == pack(MAGIC, blob_id, size, digest)
                and digest_of(content := view[start : start + size]) == digest
            ):
                run.append(content)
                run_bytes += room
                if room > size:
                    run.append(_ZEROS[: room - size])
                if len(run) >= IOV_MAX - 1:
                    _write(arena_fd, run, run_bytes, run_at)
                    run_at, run_bytes = at + room, 0
                self.good.append(NamedBlob(digest, size, at, share=share, id=blob_id))
            else:
                self.bad.append(
                    (blob_id, self._why(view, offset, (blob_id, size, digest)), at, size)
                )
                _write(arena_fd, run, run_bytes, run_at)
                run_at, run_bytes = at + room, 0
            at += room
        _write(arena_fd, run, run_bytes, run_at)

    def _why(self, view: memoryview | None, offset: int, expect: tuple[int, int, bytes]) -> str:
        """What is wrong with the record at *offset* (which did not check out)."""
        where = str(self.path)
        if view is None:
            return f"{where}: missing"
        try:
            record_content(view, offset, expect, where)
        except SegmentDamage as exc:
            return str(exc)
        return f"{where} at offset {offset}: record header does not check out"


def _write(fd: int, run: list[memoryview | bytes], size: int, offset: int) -> None:
    """*run* (*size* bytes) at *offset* of *fd*, and empty it: one ``pwritev`` unless it
    comes up short."""
    if run:
        if os.pwritev(fd, run, offset) < size:
            pwritev_all(fd, run, offset)  # (from the start again: the same bytes)
        run.clear()


@contextlib.contextmanager
def mapped(path: Path) -> Iterator[memoryview | None]:
    """A read-only mapping of a whole segment (None if it is missing or empty), read ahead
    at once. Nothing writes to it while the server starts, so it cannot shrink under a read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield None
        return
    try:
        if os.fstat(fd).st_size == 0:
            yield None
            return
        with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as whole:
            whole.madvise(mmap.MADV_WILLNEED)
            view = memoryview(whole)
            try:
                yield view
            finally:
                view.release()
    finally:
        os.close(fd)
