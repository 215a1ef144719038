"""``Persisted``, a part of ``Store``: what a data dir needs of the index. Its journal of
changes on their way to disk (``fsserver.store.journal``), the pins that keep new blobs' bytes
until they are written, and the rebuild from the catalog at start (``fsserver.store.recovery``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from itertools import count, groupby
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from sortedcontainers import SortedDict

from fsserver.store.blobtable import shared_size
from fsserver.store.records import NamedBlob
from fsserver.store.versionlog import VersionLog

if TYPE_CHECKING:
    from fsserver.store.blobtable import BlobTable
    from fsserver.store.index import Share
    from fsserver.store.versions import Writers

EntryRow = tuple[str, str, int, int, int, int | None, float | None, float | None, str]
"""A catalog row: (share, path, version, mtime_ns, mode, blob id or None, deleted at, written
at, writer)."""
KeptRow = tuple[str, str, int, int, int, int, float | None, str, float]
"""A kept version's row: (share, path, version, mtime_ns, mode, blob id, written at, writer,
replaced at)."""


class Persisted:
    journal: list[tuple[Any, ...]] | None
    blobs: BlobTable
    shares: dict[str, Share]
    blob_bytes: int
    logical_bytes: int
    entries: int
    writers: Writers
    _blob_ids: count[int]

    if TYPE_CHECKING:  # Store's own, declared here for the type checker

        def _unref(self, share: str, blob: NamedBlob) -> None: ...

    def take_journal(self) -> list[tuple[Any, ...]]:
        """The journal records since the last call, oldest first."""
        if self.journal is None:
            return []
        records, self.journal = self.journal, []
        return records

    def unpin(self, blobs: Iterable[NamedBlob]) -> None:
        """These new blobs are on disk: their extents need not keep their bytes for it."""
        for blob in blobs:
            self._unref(blob.share, blob)

    def restore(
        self,
        shares: Iterable[tuple[str, int, int]],
        blobs: dict[int, NamedBlob],
        entries: Iterable[EntryRow],
        kept: Iterable[KeptRow] = (),
    ) -> int:
        """Rebuild the index from a data dir (``fsserver.store.recovery``), before any call;
        *blobs* are in the arena already, their extents allocated. *entries* come share by
        share, each in path order; *kept*, the kept versions, oldest first. Returns how many
        kept versions were left out (their content is lost, or a torn group kept them)."""
        from fsserver.store.index import Share

        for name, seq, pruned in shares:
            self.shares[name] = Share(seq=seq, pruned=pruned)
        for blob in blobs.values():
            blob.size = shared_size(blob.size)
            self.blobs[blob.key] = blob
            self.blob_bytes += blob.size
        for name, rows in groupby(entries, key=itemgetter(0)):
            share = self.shares.get(name)
            if share is None:
                share = self.shares[name] = Share()
            self.logical_bytes += restore_share(share, rows, blobs, self.writers)
        self.entries = sum(len(share.entries) for share in self.shares.values())
        self._blob_ids = count(max(blobs, default=0) + 1)
        return restore_kept(self.shares, kept, blobs, self.writers)


def restore_share(share: Share, rows: Iterable[EntryRow], blobs: dict[int, NamedBlob],
                  writers: Writers) -> int:  # fmt: skip
    """One share's rows into *share* (its sorted containers built once, not row by row);
    the logical bytes of its live files. This loop is the restart's cost per file."""
    from fsserver.store.index import Entry

    paths: dict[str, Entry] = {}
    versions: list[tuple[int, str]] = []
    deletes: list[tuple[float, int, str]] = []
    live = size = 0
    for _, path, version, mtime_ns, mode, blob_id, deleted_at, written, writer in rows:
        stamp = (int(written or 0), writers.number(writer))
        if blob_id is None:
            paths[path] = Entry(version, mtime_ns, mode, None, *stamp)
            deletes.append((deleted_at or 0.0, version, path))
        else:
            blob = blobs[blob_id]
            paths[path] = Entry(version, mtime_ns, mode, blob, *stamp)
            blob.refs += 1
            live += 1
            size += blob.size
        versions.append((version, path))
    share.entries = SortedDict(paths)
    versions.sort()  # (each version is one path's: a catalog row per path)
    share.by_version = VersionLog(versions)
    share.seq = max(share.seq, share.by_version.last)
    share.tombstones = deque(sorted(deletes))  # oldest delete first
    share.live += live
    share.bytes += size
    return size


def restore_kept(shares: dict[str, Share], rows: Iterable[KeptRow], blobs: dict[int, NamedBlob],
                 writers: Writers) -> int:  # fmt: skip
    """The kept versions into their shares' histories; how many were left out: those whose
    content did not load, and those not older than their path's entry (a group rolled back
    at start had kept them)."""
    from fsserver.store.index import Entry, Share
    from fsserver.store.versions import Kept

    left_out = 0
    for name, path, version, mtime_ns, mode, blob_id, written, writer, replaced in rows:
        share = shares.get(name)
        if share is None:
            share = shares[name] = Share()
        blob = blobs.get(blob_id)
        current = share.entries.get(path)
        if blob is None or (current is not None and version >= current.version):
            left_out += 1
            continue
        blob.refs += 1
        entry = Entry(version, mtime_ns, mode, blob, int(written or 0), writers.number(writer))
        share.history.setdefault(path, []).append(Kept(entry, replaced))
        share.kept_bytes += blob.size
        share.kept_count += 1
        share.kept_order.append((replaced, version, path))
    for share in shares.values():  # (a path's versions arrive oldest first, by replaced at)
        for kept in share.history.values():
            kept.sort(key=lambda k: k.entry.version)
    return left_out
