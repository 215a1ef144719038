"""``Store``: the index of every share and the ownership of every extent in the blob arena.

It lives in the supervisor only, the single owner of the index and the allocator; workers reach
it through RPC. Content is addressed by (XXH3-128 digest, size), so identical content is kept
once. A blob is freed when nothing refers to it: no path, no pending download lease.

Expected outcomes (a conflict, a full store, a missing path) are returned as result objects
(``fsserver.store.records``), not raised, so that they cross the process boundary as plain data.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count
from typing import Any

from common.limits import ANY_VERSION, NO_VERSION
from common.messages import FileEntry, InitStatus, LookupStatus
from fsserver.store.allocator import ExtentAllocator
from fsserver.store.batch import BatchStoring
from fsserver.store.blobtable import BlobTable, shared_size
from fsserver.store.parking import PARK_SECONDS, ParkedUploads, resume_key
from fsserver.store.persisted import Persisted
from fsserver.store.records import (
    ENTRY_BYTES,
    PAGE_BYTES,
    Blob,
    Busy,
    Change,
    ChangePage,
    Committed,
    Linked,
    ListPage,
    NamedBlob,
    Opened,
    Refused,
    Reserved,
    StoreStats,
)
from fsserver.store.retention import Retention
from fsserver.store.share import Entry, Share
from fsserver.store.shares import ShareTable
from fsserver.store.versions import KeptVersions, Writers
from fsserver.store.writebehind import STAGE_MIN


@dataclass(slots=True)
class _Hold:
    """A reservation (upload in progress) or a lease (download in progress) of one worker."""

    owner: int
    offset: int = 0
    size: int = 0
    blob: Blob | None = None
    share: str = ""
    new_path: bool = False
    """An upload to a path the index does not hold yet: it will take an entry."""


class Store(BatchStoring, Persisted, Retention, ParkedUploads, ShareTable, KeptVersions):
    def __init__(self, capacity: int, max_entries: int = 1_000_000, quota: int = 0,
                 park_seconds: float = PARK_SECONDS,
                 keep_versions: int = 0) -> None:  # fmt: skip
        self.store_id = os.urandom(16)
        self.size = capacity
        self.allocator = ExtentAllocator(capacity)
        self.max_entries = max_entries
        self.quota = quota
        self.keep_versions = keep_versions
        """Earlier versions kept of each path (see ``versions.KeptVersions``)."""
        self.writers = Writers()
        self.entries = 0
        self.blobs = BlobTable()
        self.shares: dict[str, Share] = {}
        self.holds: dict[int, _Hold] = {}
        self.new_paths = 0
        """Uploads in progress to paths not in the index yet: they count against max_entries."""
        self.reserved: dict[str, int] = {}
        """Bytes of uploads in progress, by share: they count against its quota."""
        self.changes: list[tuple[str, str, Entry, int]] = []
        """(share, path, entry, origin) of each change since ``take_changes``: a ``Change``
        record is made only for the changes some worker is to be sent."""
        self.logical_bytes = 0
        self.blob_bytes = 0
        """Bytes of the stored blobs (each distinct content once): kept up to date, not summed."""
        self._ids = count(1)
        self._blob_ids = count(1)
        self.arena: memoryview | None = None
        """The blob arena; ``store_many`` copies staged batches into it."""
        self.journal: list[tuple[Any, ...]] | None = None
        """With a data dir: the records of every change since ``take_journal``, for disk
        (see ``fsserver.store.journal``). A new blob stays pinned (one more ref) until the
        journal says it is on disk (``unpin``), so that its extent keeps its bytes till then."""
        self.disk_room: int | None = None
        """With a data dir: bytes the disk can still take; uploads beyond it get NO_SPACE."""
        self._init_parking(park_seconds)

    # -- uploads -----------------------------------------------------------------------------

    def reserve(
        self,
        owner: int,
        share: str,
        path: str,
        size: int,
        mtime_ns: int,
        mode: int,
        digest: bytes | None,
        base_version: int,
        origin: int = 0,
        resume: bool = True,
        writer: str = "",
    ) -> Reserved | Linked | Refused | Busy:
        """Room for an upload (a big one's parked extent, if it was cut short and *resume*),
        or, if its content is already stored, the finished commit."""
        refused = self._admit(share, path, size, base_version)
        if refused:
            return refused
        new_path = not self._known(share, path)
        key = resume_key(share, path, size, mtime_ns, mode)
        blob = self.blobs.get((share, digest, size)) if digest is not None else None
        if blob is not None:
            self._discard_parked(key)
            return Linked(self._put(share, path, blob, mtime_ns, mode, origin, writer))
        room = self._room(key, size, digest, resume)
        if isinstance(room, Busy | Refused):  # (Refused: no space)
            return room
        offset, held = room
        ticket = next(self._ids)
        self.holds[ticket] = _Hold(owner, offset, size, share=share, new_path=new_path)
        self.new_paths += new_path
        if size:
            self.reserved[share] = self.reserved.get(share, 0) + size
        self._track(ticket, key, digest, held)
        return Reserved(ticket, offset, held)

    def commit(
        self,
        owner: int,
        ticket: int,
        share: str,
        path: str,
        mtime_ns: int,
        mode: int,
        digest: bytes,
        base_version: int,
        origin: int = 0,
        writer: str = "",
    ) -> Committed | Refused:
        """Make a verified upload visible; identical content already stored is reused."""
        hold = self._take_hold(owner, ticket, lease=False)
        refused = self._check_base(share, path, base_version, InitStatus.CONFLICT)
        key = (share, digest, hold.size)
        blob = self.blobs.get(key)
        if refused or blob is not None:
            self.allocator.free(hold.offset, hold.size)
        if refused:
            return refused
        reused = blob is not None
        if blob is None:
            blob = self._new_blob(share, digest, hold.size, hold.offset, ticket)
        return Committed(self._put(share, path, blob, mtime_ns, mode, origin, writer), reused)

    def abort(self, owner: int, ticket: int) -> None:
        hold = self._take_hold(owner, ticket, lease=False)
        self.allocator.free(hold.offset, hold.size)

    # -- downloads ---------------------------------------------------------------------------

    def open(self, owner: int, share: str, path: str) -> Opened | Refused:
        """Look a path up and pin its extent until ``release``."""
        entry = self._live(share, path)
        if entry is None or entry.blob is None:
            return Refused(LookupStatus.NOT_FOUND, 0, f"not found: {path}")
        return self._lease(owner, share, path, entry)

    def open_version(self, owner: int, share: str, path: str, version: int) -> Opened | Refused:
        """``open`` for one version of a path: its current one or a kept one."""
        entry = self.version_of(share, path, version)
        return entry if isinstance(entry, Refused) else self._lease(owner, share, path, entry)

    def _lease(self, owner: int, share: str, path: str, entry: Entry) -> Opened:
        assert entry.blob is not None
        entry.blob.refs += 1
        lease = next(self._ids)
        self.holds[lease] = _Hold(owner, blob=entry.blob, share=share)
        return Opened(entry.record(path), entry.blob.offset, lease)

    def release(self, owner: int, lease: int) -> None:
        hold = self._take_hold(owner, lease, lease=True)
        assert hold.blob is not None
        self._unref(hold.share, hold.blob)

    def drop_owner(self, owner: int) -> int:
        """Free every reservation and lease of a worker that died; returns how many. A big
        upload's extent is parked with the bytes its worker last reported."""
        mine = [hold_id for hold_id, hold in self.holds.items() if hold.owner == owner]
        for hold_id in mine:
            hold = self.holds[hold_id]
            if hold.blob is None:
                self.park(owner, hold_id, self.reported(hold_id))
            else:
                self._take_hold(owner, hold_id, lease=True)
                self._unref(hold.share, hold.blob)
        return len(mine)

    # -- queries and deletes -----------------------------------------------------------------

    def stat(self, share: str, path: str) -> FileEntry | Refused:
        entry = self._live(share, path)
        if entry is None:
            return Refused(LookupStatus.NOT_FOUND, 0, f"not found: {path}")
        return entry.record(path)

    def list(self, share: str, prefix: str, after: str, limit: int) -> ListPage:
        """Live entries under *prefix*, in path order, strictly after *after*."""
        sh = self.shares.get(share)
        if sh is None:
            return ListPage((), False)
        start = max(prefix, after)
        found: list[FileEntry] = []
        budget = PAGE_BYTES
        for path in sh.entries.irange(minimum=start):
            if not path.startswith(prefix):
                break
            if path == after:
                continue
            entry = sh.entries[path]
            if entry.blob is None:
                continue
            if len(found) >= limit or budget <= 0:
                return ListPage(tuple(found), True)
            found.append(entry.record(path))
            budget -= len(path.encode()) + ENTRY_BYTES
        return ListPage(tuple(found), False)

    def delete(
        self, share: str, path: str, base_version: int, origin: int = 0, writer: str = ""
    ) -> Committed | Refused:
        entry = self._live(share, path)
        if entry is None or entry.blob is None:
            return Refused(LookupStatus.NOT_FOUND, 0, f"not found: {path}")
        refused = self._check_base(share, path, base_version, LookupStatus.CONFLICT)
        if refused:
            return refused
        sh = self.shares[share]
        sh.seq += 1
        sh.live -= 1
        sh.bytes -= entry.blob.size
        self.logical_bytes -= entry.blob.size
        now = time.time()
        self._retire(share, sh, path, entry, now)
        tombstone = Entry(sh.seq, entry.mtime_ns, entry.mode, None, int(now),
                          self.writers.number(writer))  # fmt: skip
        sh.record(path, tombstone)
        sh.tombstones.append((now, sh.seq, path))
        self.changes.append((share, path, tombstone, origin))
        if self.journal is not None:
            self.journal.append(("del", share, path, sh.seq, entry.mtime_ns, entry.mode, now,
                                 writer))  # fmt: skip
        return Committed(sh.seq)

    def changes_since(self, share: str, since: int, limit: int) -> ChangePage:
        """The current state of every path changed after *since* (deletes included)."""
        sh = self.shares.get(share)
        if sh is None:
            return ChangePage((), False, 0)
        changes = []
        budget = PAGE_BYTES
        for _, path in sh.by_version.since(since):
            if len(changes) >= limit or budget <= 0:
                return ChangePage(tuple(changes), True, sh.seq, sh.pruned)
            budget -= len(path.encode()) + ENTRY_BYTES
            entry = sh.entries[path]
            changes.append(Change(share, entry.record(path), deleted=entry.blob is None))
        return ChangePage(tuple(changes), False, sh.seq, sh.pruned)

    def stats(self) -> StoreStats:
        return StoreStats(
            capacity_bytes=self.allocator.capacity,
            used_bytes=self.allocator.used_bytes,
            blob_bytes=self.blob_bytes,
            logical_bytes=self.logical_bytes,
            files=sum(sh.live for sh in self.shares.values()),
            shares=sum(1 for sh in self.shares.values() if sh.live),
            parked_bytes=self.parked_bytes,
            free_bytes=self.allocator.free_bytes,
            largest_free_bytes=self.allocator.largest_free,
            share_quota=self.quota,
            per_share=tuple(
                (name, sh.live, sh.bytes, sh.kept_count, sh.kept_bytes)
                for name, sh in self.shares.items()
                if sh.live or sh.kept_count
            ),
        )

    def take_changes(self, wanted: Callable[[str, int], bool]) -> list[Change]:
        """The changes since the last call that ``wanted(share, origin)``, oldest first."""
        made, self.changes = self.changes, []
        return [Change(share, entry.record(path), entry.blob is None, origin)
                for share, path, entry, origin in made if wanted(share, origin)]  # fmt: skip

    # -- internals ---------------------------------------------------------------------------

    def _live(self, share: str, path: str) -> Entry | None:
        sh = self.shares.get(share)
        entry = sh.entries.get(path) if sh else None
        return entry if entry is not None and entry.blob is not None else None

    def _admit(self, share: str, path: str, size: int, base_version: int) -> Refused | None:
        """Why a new version of *path* of *size* bytes is refused (a conflict, the index limit,
        the quota, the store's size), or None."""
        refused = self._check_base(share, path, base_version, InitStatus.CONFLICT)
        if refused:
            return refused
        if not self._known(share, path) and self.entries + self.new_paths >= self.max_entries:
            return Refused(
                InitStatus.NO_SPACE, 0, f"no space: the store holds its limit of "
                f"{self.max_entries} entries (--max-files)", "max_files",
            )  # fmt: skip
        over = self._over_quota(share, path, size)
        if over:
            return over
        if self.disk_room is not None and size > self.disk_room:
            return Refused(InitStatus.NO_SPACE, 0, f"no space: the data dir's disk has "
                           f"{max(self.disk_room, 0)} bytes left for {size}",
                           "disk_full")  # fmt: skip
        if size > self.allocator.capacity:
            return Refused(
                InitStatus.TOO_LARGE,
                0,
                f"{path} is {size} bytes, more than the whole store ({self.allocator.capacity})",
            )
        return None

    def _check_base(self, share: str, path: str, base_version: int, status: int) -> Refused | None:
        if base_version == ANY_VERSION:
            return None
        entry = self._live(share, path)
        current = entry.version if entry is not None else NO_VERSION
        if current == base_version:
            return None
        return Refused(
            status, current, f"conflict: {path} is at version {current}, not {base_version}"
        )

    def _over_quota(self, share: str, path: str, size: int) -> Refused | None:
        """Why *size* more bytes would pass the share's quota, or None. The live files must
        fit; kept versions count too, but give way once the write is made (``_fit_quota``)."""
        if not self.quota:
            return None
        sh = self.shares.get(share)
        old = self._live(share, path)
        after = (sh.bytes if sh else 0) + self.reserved.get(share, 0) + size
        after -= old.blob.size if old and old.blob else 0
        if after <= self.quota:
            return None
        return Refused(InitStatus.NO_SPACE, 0,
                       f"no space: share {share} would hold {after} bytes, over its quota "
                       f"of {self.quota}", "quota")  # fmt: skip

    def _known(self, share: str, path: str) -> bool:
        sh = self.shares.get(share)
        return sh is not None and path in sh.entries

    def _put(self, share: str, path: str, blob: Blob, mtime_ns: int, mode: int, origin: int,
             writer: str = "") -> int:  # fmt: skip
        sh = self.shares.get(share)
        if sh is None:
            sh = self.shares[share] = Share()
        blob.refs += 1  # before the old blob lets go: it may be this very blob
        self.logical_bytes += blob.size
        sh.bytes += blob.size
        old = sh.entries.get(path)
        if old is None:
            self.entries += 1
        now = time.time()
        if old is not None and old.blob is not None:
            self.logical_bytes -= old.blob.size
            sh.bytes -= old.blob.size
            self._retire(share, sh, path, old, now)
        else:
            sh.live += 1
        sh.seq += 1
        entry = Entry(sh.seq, mtime_ns, mode, blob, int(now), self.writers.number(writer))
        sh.record(path, entry)
        self._fit_quota(share, sh)
        self.changes.append((share, path, entry, origin))
        if self.journal is not None:
            self.journal.append(("put", share, path, sh.seq, mtime_ns, mode, blob.id, now,
                                 writer))  # fmt: skip
        return sh.seq

    def _new_blob(self, share: str, digest: bytes, size: int, offset: int,
                  ticket: int = 0) -> Blob:  # fmt: skip
        """Content just verified at *offset*, now owned by the index (no path refers to it
        yet); *ticket*: the upload it came from (the persister may have staged it)."""
        # its name on disk; none in a memory-only store (an int of 32 bytes per blob saved)
        if self.journal is None:
            blob = Blob(digest, shared_size(size), offset)
        else:
            blob = NamedBlob(digest, shared_size(size), offset, share=share,
                             id=next(self._blob_ids))  # fmt: skip
        self.blobs[(share, digest, size)] = blob
        self.blob_bytes += size
        if self.journal is not None:
            blob.refs += 1  # pinned until it is on disk
            self.journal.append(("blob", blob.id, share, digest, size, offset, ticket))
            if self.disk_room is not None:
                self.disk_room -= size
        return blob

    def _unref(self, share: str, blob: Blob) -> None:
        blob.refs -= 1
        if blob.refs == 0:
            del self.blobs[(share, blob.digest, blob.size)]
            self.blob_bytes -= blob.size
            self.allocator.free(blob.offset, blob.size)
            if self.journal is not None:
                self.journal.append(("free", blob.id))

    def _take_hold(self, owner: int, hold_id: int, lease: bool) -> _Hold:
        hold = self.holds.get(hold_id)
        if hold is None or hold.owner != owner or (hold.blob is not None) != lease:
            what = "lease" if lease else "reservation"
            raise KeyError(f"worker {owner} holds no {what} {hold_id}")
        self.new_paths -= hold.new_path
        untracked = not lease and self._untrack(hold_id) is not None
        if untracked and self.journal is not None and hold.size >= STAGE_MIN:
            self.journal.append(("unstage", hold_id))  # the persister may have staged it
        if not lease and hold.size:
            left = self.reserved[hold.share] - hold.size
            if left:
                self.reserved[hold.share] = left
            else:
                del self.reserved[hold.share]
        return self.holds.pop(hold_id)
