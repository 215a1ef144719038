"""``StagedUploads``: the persisting process writes a big upload while it arrives.

Without it, a big upload reaches the disk only once it is committed: transfer, verification,
then a write of the whole file and its fsync, one after the other. ``dd`` writes while it
reads. So a big upload's progress reports (every few MiB, which a worker sends anyway to make
it resumable, see ``parking.py``) also become journal notes, ``("stage", ticket, arena
offset, size, bytes done)``. The persister copies each new stretch from the arena into a file
of the upload's own (``<ticket>.part`` in the segments folder), at the place it takes in a
record, and starts its writeback at once (``POSIX_FADV_DONTNEED`` starts it on Linux). When
the upload commits, its blob record names the ticket: the last stretch and the header are
written, the file is synced and renamed to a segment of its own (``SegmentWriter.adopt``). The
commit then waits for what is still in flight, not for the whole file.

``("unstage", ticket)`` (the reservation ended: committed, parked or given up) drops the file
once the group is written. Notes are not durable: a restarted persister starts with none (and
removes stale ``.part`` files), and a committed blob with no staged file is appended as usual.
Tickets are never reused, so a note can never be taken for another upload's.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from fsserver.store.segments import HEADER_SIZE, header, pwrite_all

log = logging.getLogger(__name__)

STAGE_MIN = 16 << 20
"""Uploads at least this big are written while they arrive (each becomes a segment of its
own); smaller ones go with their group, in one ``writev`` among others."""
NOTE_KINDS = frozenset({"stage", "unstage"})


@dataclass(slots=True)
class StagedUpload:
    fd: int
    path: Path
    offset: int
    """Of the upload's extent in the arena."""
    size: int
    written: int = 0
    """Bytes of content in the file (from the start of the content)."""


class StagedUploads:
    def __init__(self, folder: Path, arena: memoryview, durable: bool) -> None:
        self.folder = folder
        self.arena = arena
        self.durable = durable
        """False for ``--fsync never``: no early writeback, no fsync (the OS decides)."""
        self.uploads: dict[int, StagedUpload] = {}
        self.ended: set[int] = set()
        self.refused: set[int] = set()
        """Uploads whose staging failed: they are written at their commit, as small ones."""
        for stale in folder.glob("*.part"):
            stale.unlink()

    def stage(self, ticket: int, offset: int, size: int, done: int) -> int:
        """Bytes 0..*done* of the upload are in its extent: write what is new; the bytes
        written. Fewer than before: a retry after a digest mismatch, which starts over."""
        if ticket in self.refused:
            return 0
        upload = self.uploads.get(ticket)
        try:
            if upload is None:
                path = self.folder / f"{ticket}.part"
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
                upload = self.uploads[ticket] = StagedUpload(fd, path, offset, size)
            if done < upload.written:
                upload.written = 0
            return self._write(upload, min(done, upload.size))
        except OSError as exc:  # (a full disk): the upload is written at its commit instead
            log.info("upload %d is written at its commit: %s", ticket, exc)
            self.refused.add(ticket)
            if upload is not None:
                self._discard(self.uploads.pop(ticket))
            return 0

    def _write(self, upload: StagedUpload, done: int) -> int:
        start = upload.written
        if done <= start:
            return 0
        view = self.arena[upload.offset + start : upload.offset + done]
        try:
            pwrite_all(upload.fd, view, HEADER_SIZE + start)
        finally:
            view.release()
        if self.durable:  # start writing it back now, not at the commit's fsync
            os.posix_fadvise(upload.fd, HEADER_SIZE + start, done - start,
                             os.POSIX_FADV_DONTNEED)  # fmt: skip
        upload.written = done
        return done - start

    def end(self, ticket: int) -> None:
        """The upload's reservation ended: its file goes after this group (``drop_ended``),
        so that a commit's blob record in the same group still finds it."""
        self.refused.discard(ticket)
        if ticket in self.uploads:
            self.ended.add(ticket)

    def take(self, ticket: int, blob_id: int, digest: bytes, offset: int, size: int
             ) -> tuple[Path, int] | None:  # fmt: skip
        """The committed upload *ticket* as a complete record in its file (synced, unless
        ``never``), and the bytes this wrote; None if it was not staged (or not this blob)."""
        upload = self.uploads.pop(ticket, None)
        self.ended.discard(ticket)
        if upload is None:
            return None
        if (upload.offset, upload.size) != (offset, size):
            self._discard(upload)
            return None
        try:
            written = self._write(upload, size)
            pwrite_all(upload.fd, header(blob_id, size, digest), 0)
            if self.durable:
                os.fdatasync(upload.fd)
        except OSError:
            self._discard(upload)
            raise
        os.close(upload.fd)
        return upload.path, written + HEADER_SIZE

    def drop_ended(self) -> None:
        for ticket in self.ended:
            upload = self.uploads.pop(ticket, None)
            if upload is not None:
                self._discard(upload)
        self.ended.clear()

    def close(self) -> None:
        for upload in self.uploads.values():
            self._discard(upload)
        self.uploads.clear()

    @staticmethod
    def _discard(upload: StagedUpload) -> None:
        os.close(upload.fd)
        upload.path.unlink(missing_ok=True)
