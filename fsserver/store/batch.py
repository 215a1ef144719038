"""``BatchStoring``, a part of ``Store``: small-file batches stored in one call.

A batch's files wait in the calling worker's staging area (``fsserver.store.staging``), already
verified by a hasher. ``store_many`` does for each what ``reserve`` and ``commit`` do for a file
session, in one step: the same checks, then a link to content the share holds, or a copy from
staging into a new extent. Checking and storing in one step keeps the quota and the index limit
exact without counting batches in flight.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from common.errors import StoreFull
from common.messages import InitStatus
from fsserver.store.allocator import ExtentAllocator, aligned
from fsserver.store.blobtable import BlobTable
from fsserver.store.records import BatchStored, Blob, Refused
from fsserver.store.staging import STAGING_BYTES, staging_base


class BatchStoring:
    size: int
    allocator: ExtentAllocator
    arena: memoryview | None
    blobs: BlobTable

    if TYPE_CHECKING:  # Store's own, declared here for the type checker

        def _admit(self, share: str, path: str, size: int, base_version: int
                   ) -> Refused | None: ...  # fmt: skip

        def _put(self, share: str, path: str, blob: Blob, mtime_ns: int, mode: int,
                 origin: int, writer: str = "") -> int: ...  # fmt: skip

        def _new_blob(self, share: str, digest: bytes, size: int, offset: int) -> Blob: ...

        def _allocate(self, size: int) -> int: ...

    def store_many(self, owner: int, share: str, items: list[tuple[Any, ...]],
                   origin: int = 0, writer: str = "") -> BatchStored:  # fmt: skip
        """Store each verified (source, path, size, mtime_ns, mode, digest, base_version) of a
        small-file batch, in order, in one call. Its bytes wait at *source*, in the calling
        worker's staging area (outside the allocator), and are copied into a new extent here,
        unless the share holds the content already. The new extents of a batch come from one
        allocation when it fits; each blob frees its own part later."""
        low = staging_base(self.size, owner)
        for source, path, size, *_ in items:  # a worker copies from its own area only
            if not low <= source <= source + size <= low + STAGING_BYTES:
                raise ValueError(f"{path}: {size} bytes at {source} are outside the staging "
                                 f"area of worker {owner}")  # fmt: skip
        room = sum(aligned(item[2]) for item in items)
        try:
            start = self._allocate(room) if room else 0
        except StoreFull:
            start = -1  # fragmented or nearly full: one allocation per file, as space allows
        bump = start
        done = BatchStored([0] * len(items), set(), {})
        try:
            for at, item in enumerate(items):
                bump = self._store_one(share, item, (origin, writer), at, done, bump)
        finally:
            if start >= 0:  # what dedup and refusals left of the batch's room
                self.allocator.free(bump, start + room - bump)
        return done

    def _store_one(self, share: str, item: tuple[Any, ...], author: tuple[int, str], at: int,
                   done: BatchStored, bump: int) -> int:  # fmt: skip
        """One file of ``store_many``, its outcome in *done*; a new extent is taken at
        *bump* (-1: allocated on its own). Returns where the next one goes."""
        source, path, size, mtime_ns, mode, digest, base_version = item
        refused = self._admit(share, path, size, base_version)
        if refused:
            done.refused[at] = refused
            return bump
        key = (share, digest, size)
        blob = self.blobs.get(key)
        if blob is not None:
            done.reused.add(at)
        else:
            if bump >= 0:
                offset, bump = bump, bump + aligned(size)
            else:
                try:
                    offset = self._allocate(size)
                except StoreFull as exc:
                    done.refused[at] = Refused(InitStatus.NO_SPACE, 0, exc.message)
                    return bump
            assert self.arena is not None, "store_many needs the arena"
            self.arena[offset : offset + size] = self.arena[source : source + size]
            blob = self._new_blob(share, digest, size, offset)
        done.versions[at] = self._put(share, path, blob, mtime_ns, mode, *author)
        return bump
