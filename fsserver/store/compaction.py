"""``Compactor``: gives back the disk space of deleted and overwritten files.

Segments are only appended to, so a freed blob leaves dead bytes behind. A closed segment whose
live bytes are half of it or less has its live records copied to the open segment, a step of
``STEP_BYTES`` at a time (the persisting process writes journal groups between steps, so an
upload never waits long behind it), and is removed once empty. Each step is made durable before
the catalog points at the copies, and the old file goes only after that: a crash at any moment
leaves every blob readable where the catalog says. Disk use stays at about twice the live data
at most, plus the open segment.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fsserver.store.catalog import Catalog
from fsserver.store.segments import Placed, SegmentWriter, segment_name, sync_folder

log = logging.getLogger(__name__)

STEP_BYTES = 16 << 20


class Compactor:
    def __init__(self, folder: Path, catalog: Catalog) -> None:
        self.folder = folder
        self.catalog = catalog
        self.segment = 0
        self.source = -1
        self.todo: list[tuple[int, bytes, int, int]] = []

    @property
    def busy(self) -> bool:
        return self.segment != 0

    def step(self, writer: SegmentWriter) -> bool:
        """Move up to STEP_BYTES of live records; False if there was nothing to do."""
        if not self.busy and not self.start(writer.number):
            return False
        placed: dict[int, Placed] = {}
        sizes: dict[int, int] = {}
        moved = 0
        while self.todo and moved < STEP_BYTES:
            blob_id, digest, size, offset = self.todo.pop(0)
            placed[blob_id] = writer.append_from(self.source, offset, blob_id, size, digest)
            sizes[blob_id] = size
            moved += size
        if placed:
            writer.sync()
            self.catalog.moved(placed, sizes, self.segment)
        if not self.todo:
            self.finish()
        return True

    def start(self, open_segment: int) -> bool:
        segment = self.catalog.worst_segment(besides=open_segment)
        if segment is None:
            return False
        self.segment = segment
        self.todo = self.catalog.blobs_in(segment)
        path = self.folder / segment_name(segment)
        self.source = os.open(path, os.O_RDONLY | os.O_CLOEXEC) if path.exists() else -1
        if self.source < 0:
            self.todo = []
        return True

    def finish(self) -> None:
        """Every live record moved: the segment goes (after the catalog stops naming it)."""
        self.catalog.drop_segment(self.segment)
        if self.source >= 0:
            os.close(self.source)
        (self.folder / segment_name(self.segment)).unlink(missing_ok=True)
        sync_folder(self.folder)
        log.info("compacted segment %s", segment_name(self.segment))
        self.segment, self.source = 0, -1

    def abandon(self) -> None:
        """A step failed (a full disk): start over later."""
        if self.source >= 0:
            os.close(self.source)
        self.segment, self.source, self.todo = 0, -1, []
