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

from fsserver.store.allocator import ALIGN, aligned
from fsserver.store.records import Blob
from fsserver.store.segments import SegmentDamage, pwritev_all, record_content

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
    good: list[Blob] = field(default_factory=list)
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
        run: list[memoryview | bytes] = []
        run_at = at = self.at
        where = str(self.path)
        for blob_id, share, digest, size, _, offset in self.rows:
            try:
                if view is None:
                    raise SegmentDamage(f"{where}: missing")
                content = record_content(view, offset, (blob_id, size, digest), where)
            except SegmentDamage as exc:
                self.bad.append((blob_id, str(exc), at, size))
                pwritev_all(arena_fd, run, run_at)
                run.clear()
                run_at = at + aligned(size)
            else:
                run.append(content)
                if aligned(size) > size:
                    run.append(_ZEROS[: aligned(size) - size])
                if len(run) >= IOV_MAX - 1:
                    pwritev_all(arena_fd, run, run_at)
                    run.clear()
                    run_at = at + aligned(size)
                self.good.append(Blob(share, digest, size, at, id=blob_id))
            at += aligned(size)
        pwritev_all(arena_fd, run, run_at)


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
