"""``Persisted``, a part of ``Store``: what a data dir needs of the index. Its journal of
changes on their way to disk (``fsserver.store.journal``), the pins that keep new blobs' bytes
until they are written, and the rebuild from the catalog at start (``fsserver.store.recovery``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from itertools import count
from typing import TYPE_CHECKING, Any

from sortedcontainers import SortedDict

from fsserver.store.records import Blob, BlobKey

if TYPE_CHECKING:
    from fsserver.store.index import Share


class Persisted:
    journal: list[tuple[Any, ...]] | None
    blobs: dict[BlobKey, Blob]
    shares: dict[str, Share]
    blob_bytes: int
    logical_bytes: int
    entries: int
    _blob_ids: count[int]

    if TYPE_CHECKING:  # Store's own, declared here for the type checker

        def _unref(self, blob: Blob) -> None: ...

    def take_journal(self) -> list[tuple[Any, ...]]:
        """The journal records since the last call, oldest first."""
        if self.journal is None:
            return []
        records, self.journal = self.journal, []
        return records

    def unpin(self, blobs: Iterable[Blob]) -> None:
        """These new blobs are on disk: their extents need not keep their bytes for it."""
        for blob in blobs:
            self._unref(blob)

    def restore(
        self,
        shares: Iterable[tuple[str, int, int]],
        blobs: dict[int, Blob],
        entries: Iterable[tuple[str, str, int, int, int, int | None, float | None]],
    ) -> None:
        """Rebuild the index from a data dir (``fsserver.store.recovery``), before any call;
        *blobs* are in the arena already, their extents allocated."""
        from fsserver.store.index import Entry, Share

        for name, seq, pruned in shares:
            self.shares[name] = Share(seq=seq, pruned=pruned)
        for blob in blobs.values():
            self.blobs[blob.key] = blob
            self.blob_bytes += blob.size
        paths: dict[str, dict[str, Entry]] = {}
        versions: dict[str, dict[int, str]] = {}
        for share, path, version, mtime_ns, mode, blob_id, deleted_at in entries:
            sh = self.shares.get(share)
            if sh is None:
                sh = self.shares[share] = Share()
            blob = blobs[blob_id] if blob_id is not None else None
            paths.setdefault(share, {})[path] = Entry(version, mtime_ns, mode, blob)
            versions.setdefault(share, {})[version] = path
            sh.seq = max(sh.seq, version)
            if blob is not None:
                blob.refs += 1
                sh.live += 1
                sh.bytes += blob.size
                self.logical_bytes += blob.size
            else:
                sh.tombstones.append((deleted_at or 0.0, version, path))
        for share, sh in self.shares.items():  # sorted containers built once, not per row
            sh.entries = SortedDict(paths.get(share, {}))
            sh.by_version = SortedDict(versions.get(share, {}))
            sh.tombstones = deque(sorted(sh.tombstones))  # oldest delete first
            self.entries += len(sh.entries)
        self._blob_ids = count(max(blobs, default=0) + 1)
