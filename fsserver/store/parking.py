"""``ParkedUploads``, a part of ``Store``: big uploads cut short wait, parked, to be resumed.

An upload's bytes go straight into its extent of the arena, which outlives the connection and
the worker. So when a connection ends mid-upload (or its worker dies), the extent is not freed
but parked, keyed by what names the same content at the same place: share, path, size, mtime
and mode (``ResumeKey``). A later upload with that key takes the extent back and is told how
many bytes it holds already; the client sends the rest. The whole extent is verified as ever,
so a parked prefix that was not what the client thinks costs one retry, never a wrong file.

What a parked extent holds is the count its worker last reported (``progress``, every few MiB
through the batched store calls) or, when the connection ended while the worker lived, the
exact count it had: a lower bound either way, since those bytes are in shared memory.

Parked extents use store space (the allocator's), but no share's quota and no index entry.
They are given back, oldest first, when an allocation does not fit, and after ``park_seconds``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from common.errors import StoreFull
from common.messages import InitStatus
from fsserver.store.allocator import ExtentAllocator, aligned
from fsserver.store.records import Busy, Refused
from fsserver.store.writebehind import STAGE_MIN

RESUME_MIN = 1 << 20
"""Uploads at least this big can be resumed; smaller ones are cheaper to send again."""
PARK_SECONDS = 600.0
"""How long a parked extent waits for its upload to come back, by default."""

ResumeKey = tuple[str, str, int, int, int]
"""(share, path, size, mtime_ns, mode): what a client says identifies the content."""


class Resumable(NamedTuple):
    """A big upload in progress: its key, its FileSyncInit digest, the bytes known done."""

    key: ResumeKey
    digest: bytes | None
    done: int


class Parked(NamedTuple):
    offset: int
    size: int
    done: int
    digest: bytes | None
    since: float


def resume_key(share: str, path: str, size: int, mtime_ns: int, mode: int) -> ResumeKey | None:
    return (share, path, size, mtime_ns, mode) if size >= RESUME_MIN else None


class ParkedUploads:
    allocator: ExtentAllocator
    holds: dict[int, Any]
    journal: list[tuple[Any, ...]] | None

    if TYPE_CHECKING:  # Store's own, declared here for the type checker

        def _take_hold(self, owner: int, hold_id: int, lease: bool) -> object: ...

        def _kept_to_give_up(self, size: int, free: int) -> list[tuple[str, str, int]]: ...

        def _give_up_kept(self, share: str, path: str, version: int) -> int | None: ...

    def _init_parking(self, park_seconds: float) -> None:
        self.park_seconds = park_seconds
        self.parked: dict[ResumeKey, Parked] = {}
        """Oldest first (a dict keeps insertion order)."""
        self.parked_bytes = 0
        self.resumable: dict[int, Resumable] = {}
        """Big uploads in progress, by ticket."""
        self.live_keys: dict[ResumeKey, int] = {}
        """How many uploads in progress have each key."""

    # -- calls from workers ------------------------------------------------------------------

    def progress(self, owner: int, ticket: int, done: int) -> None:
        """Bytes 0..*done* of a big upload's extent are in the arena (0 again after a digest
        mismatch: the next attempt starts over). A late report is ignored."""
        upload = self.resumable.get(ticket)
        hold = self.holds.get(ticket)
        if upload is not None and hold is not None and hold.owner == owner:
            self.resumable[ticket] = upload._replace(done=done)
            if self.journal is not None and hold.size >= STAGE_MIN:  # written while it comes
                self.journal.append(("stage", ticket, hold.offset, hold.size, done))

    def reported(self, ticket: int) -> int:
        """The bytes a big upload's worker last said were in its extent (0 for others)."""
        upload = self.resumable.get(ticket)
        return upload.done if upload is not None else 0

    def park(self, owner: int, ticket: int, done: int) -> None:
        """The upload's connection ended with *done* bytes in its extent: keep them for a
        while if it can be resumed, else free the extent (as ``abort``)."""
        upload = self.resumable.get(ticket)
        hold = self._take_hold(owner, ticket, lease=False)
        offset, size = hold.offset, hold.size  # type: ignore[attr-defined]
        if upload is None or done <= 0:
            self.allocator.free(offset, size)
            return
        self._park(upload.key, Parked(offset, size, min(done, size), upload.digest,
                                      time.monotonic()))  # fmt: skip

    def expire_parked(self, now: float | None = None) -> int:
        """Give back the extents parked for longer than ``park_seconds``; how many."""
        limit = (time.monotonic() if now is None else now) - self.park_seconds
        old = [key for key, parked in self.parked.items() if parked.since <= limit]
        for key in old:
            self._unpark_free(key)
        return len(old)

    # -- for Store ---------------------------------------------------------------------------

    def _room(self, key: ResumeKey | None, size: int, digest: bytes | None, resume: bool
              ) -> tuple[int, int] | Busy | Refused:  # fmt: skip
        """Where a new upload's bytes go, and how many of them are there already: the extent
        of the same upload cut short (unless not *resume*), or a new one (if there is room)."""
        if key is not None and resume:
            if key in self.live_keys:
                return Busy()
            parked = self._resume(key, digest)
            if parked is not None:
                return parked.offset, parked.done
        try:
            return self._allocate(size), 0
        except StoreFull as exc:
            return Refused(InitStatus.NO_SPACE, 0, exc.message)

    def _resume(self, key: ResumeKey, digest: bytes | None) -> Parked | None:
        """Take back the extent parked under *key*, if its content may be the same (digests,
        where both uploads gave one, agree)."""
        parked = self.parked.get(key)
        if parked is None:
            return None
        if digest is not None and parked.digest is not None and digest != parked.digest:
            self._unpark_free(key)
            return None
        del self.parked[key]
        self.parked_bytes -= parked.size
        return parked

    def _track(self, ticket: int, key: ResumeKey | None, digest: bytes | None, done: int) -> None:
        if key is None:
            return  # too small to resume
        self.resumable[ticket] = Resumable(key, digest, done)
        self.live_keys[key] = self.live_keys.get(key, 0) + 1

    def _untrack(self, ticket: int) -> Resumable | None:
        upload = self.resumable.pop(ticket, None)
        if upload is not None:
            left = self.live_keys[upload.key] - 1
            if left:
                self.live_keys[upload.key] = left
            else:
                del self.live_keys[upload.key]
        return upload

    def _park(self, key: ResumeKey, parked: Parked) -> None:
        other = self.parked.get(key)
        if other is not None:  # two cut uploads of the same: keep the one further along
            if other.done >= parked.done:
                self.allocator.free(parked.offset, parked.size)
                return
            self._unpark_free(key)
        self.parked[key] = parked
        self.parked_bytes += parked.size

    def _discard_parked(self, key: ResumeKey | None) -> None:
        """The content is stored already (the upload was linked to it): nothing to resume."""
        if key is not None and key in self.parked:
            self._unpark_free(key)

    def _unpark_free(self, key: ResumeKey) -> None:
        parked = self.parked.pop(key)
        self.parked_bytes -= parked.size
        self.allocator.free(parked.offset, parked.size)

    def _allocate(self, size: int) -> int:
        """An extent of *size* bytes; when none fits, kept versions are given up, oldest
        first, then parked extents (uploads a client is about to resume), oldest first,
        until one does (StoreFull if even that is not enough)."""
        kept: Iterator[tuple[str, str, int]] | None = None
        while True:
            try:
                return self.allocator.allocate(size)
            except StoreFull:
                if kept is None:
                    kept = iter(self._kept_to_give_up(aligned(size), self.allocator.free_bytes))
                version = next(kept, None)
                if version is not None:
                    self._give_up_kept(*version)
                    continue
                if not self.parked:
                    raise
                self._unpark_free(next(iter(self.parked)))
