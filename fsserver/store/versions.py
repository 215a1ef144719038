"""``KeptVersions``, a part of ``Store``: the earlier versions of each path, kept after an
overwrite or a delete (``--keep-versions``, ``--keep-days``), so that a mistake can be undone.

Content is addressed, so keeping a version costs no copy: the old entry keeps its reference
to the blob, and only a content that no version names any more is freed. Kept versions count
against the share's quota; when a write would pass it, or the arena has no room for an
upload, the oldest kept versions are given up first (after uploads cut short), as Syncthing's
versioning gives way to a full disk rather than stopping the sync.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, NamedTuple

from common.limits import ANY_VERSION
from common.messages import FileEntry, InitStatus, LookupStatus, VersionEntry, VersionFlags
from fsserver.store.records import ENTRY_BYTES, PAGE_BYTES, Committed, ListPage, Refused
from fsserver.store.share import NO_DIGEST, Entry, Share

if TYPE_CHECKING:
    from fsserver.store.records import Blob

KEEP_VERSIONS = 10
KEEP_DAYS = 30.0
_RESTORE_REFUSALS = {InitStatus.CONFLICT: LookupStatus.CONFLICT}
MAX_WRITERS = 1 << 24
"""Writers are numbered in an entry's 24 bits; beyond that, new names are not told apart."""


class Kept(NamedTuple):
    """An earlier version of a path, and when it stopped being current (unix time)."""

    entry: Entry
    replaced: float


class Writers:
    """Token names by number: an entry holds the number (see ``Entry``), not the name."""

    def __init__(self) -> None:
        self.names = [""]
        self.numbers = {"": 0}

    def number(self, name: str) -> int:
        found = self.numbers.get(name)
        if found is None:
            if len(self.names) >= MAX_WRITERS:
                return 0
            found = self.numbers[name] = len(self.names)
            self.names.append(name)
        return found

    def name(self, number: int) -> str:
        return self.names[number] if number < len(self.names) else ""


class KeptVersions:
    shares: dict[str, Share]
    journal: list[tuple[Any, ...]] | None
    keep_versions: int
    writers: Writers
    quota: int
    reserved: dict[str, int]

    if TYPE_CHECKING:  # Store's own, declared here for the type checker

        def _unref(self, share: str, blob: Blob) -> None: ...

        def _admit(self, share: str, path: str, size: int, base_version: int
                   ) -> Refused | None: ...  # fmt: skip

        def _put(self, share: str, path: str, blob: Blob, mtime_ns: int, mode: int,
                 origin: int, writer: str = "") -> int: ...  # fmt: skip

    # -- what the index does with a version it replaces --------------------------------------

    def _retire(self, share: str, sh: Share, path: str, old: Entry, now: float) -> None:
        """*old*, the path's live version until now, becomes an earlier version (or goes,
        with ``--keep-versions 0``)."""
        blob = old.blob
        assert blob is not None
        if self.keep_versions <= 0:
            self._unref(share, blob)
            return
        kept = sh.history.get(path)
        if kept is None:
            kept = sh.history[path] = []
        kept.append(Kept(old, now))
        sh.kept_bytes += blob.size
        sh.kept_count += 1
        sh.kept_order.append((now, old.version, path))
        if self.journal is not None:
            writer = self.writers.name(old.writer)
            self.journal.append(("keep", share, path, old.version, old.mtime_ns, old.mode,
                                 blob.id, old.written, writer, now))  # fmt: skip
        while len(kept) > self.keep_versions:
            self._drop_kept(share, sh, path, 0)

    def _drop_kept(self, share: str, sh: Share, path: str, at: int) -> int:
        """Give up the kept version at *at* of *path*; the bytes it counted."""
        kept = sh.history[path]
        entry = kept.pop(at).entry
        if not kept:
            del sh.history[path]
        blob = entry.blob
        assert blob is not None
        sh.kept_bytes -= blob.size
        sh.kept_count -= 1
        if self.journal is not None:
            self.journal.append(("drop", share, path, entry.version))
        self._unref(share, blob)
        if len(sh.kept_order) > 2 * sh.kept_count + 64:
            self._reorder(sh)
        return blob.size

    def _reorder(self, sh: Share) -> None:
        """Rebuild the age order without the versions given up by count (``_drop_kept``)."""
        order = [(k.replaced, k.entry.version, path)
                 for path, kept in sh.history.items() for k in kept]  # fmt: skip
        sh.kept_order = deque(sorted(order))

    def _drop_oldest(self, share: str, sh: Share, before: float | None = None) -> int | None:
        """Give up the share's oldest kept version (if it was replaced before *before*); the
        bytes it counted, or None if there was none."""
        order = sh.kept_order
        while order:
            replaced, version, path = order[0]
            if before is not None and replaced >= before:
                return None
            order.popleft()
            size = self._give_up_kept(share, path, version)
            if size is not None:
                return size
        return None

    def prune_versions(self, cutoff: float) -> int:
        """Give up the versions replaced before *cutoff* (``--keep-days``); how many."""
        gone = 0
        for name, sh in self.shares.items():
            while self._drop_oldest(name, sh, cutoff) is not None:
                gone += 1
        return gone

    def _fit_quota(self, share: str, sh: Share) -> None:
        """After a write: the live files fit the quota (``_over_quota`` saw to it); kept
        versions stay only as far as they fit too, the oldest giving way. (Not before the
        write: an upload that is then cut short would have cost them for nothing.)"""
        if self.quota:
            over = sh.bytes + sh.kept_bytes + self.reserved.get(share, 0) - self.quota
            if over > 0:
                self._make_room_kept(share, over)

    def _make_room_kept(self, share: str, need: int) -> int:
        """Give up the share's oldest kept versions until *need* bytes are counted no more
        (the quota); the bytes given up."""
        sh = self.shares.get(share)
        freed = 0
        while sh is not None and freed < need:
            size = self._drop_oldest(share, sh)
            if size is None:
                break
            freed += size
        return freed

    def _kept_to_give_up(self, size: int, free: int) -> list[tuple[str, str, int]]:
        """(share, path, version) of the kept versions to give up, oldest first, for an
        extent of *size* bytes in an arena with *free*: only those whose content nothing else
        names (no live file, lease or pin), since giving one up must free its extent; and
        none if all of them could not make room (none is given up for nothing)."""
        from fsserver.store.allocator import aligned

        sole = sorted((k.replaced, name, path, k.entry.version, aligned(k.entry.blob.size))
                      for name, sh in self.shares.items() for path, kept in sh.history.items()
                      for k in kept
                      if k.entry.blob is not None and k.entry.blob.refs == 1)  # fmt: skip
        if free + sum(item[4] for item in sole) < size:
            return []
        return [(name, path, version) for _, name, path, version, _ in sole]

    def _give_up_kept(self, share: str, path: str, version: int) -> int | None:
        """Give up that kept version; the bytes it counted, or None if it is not kept (any
        more: given up by count since)."""
        sh = self.shares[share]
        for at, k in enumerate(sh.history.get(path, ())):
            if k.entry.version == version:
                return self._drop_kept(share, sh, path, at)
        return None

    # -- calls -------------------------------------------------------------------------------

    def history(self, share: str, path: str, before: int, limit: int
                ) -> tuple[tuple[VersionEntry, ...], bool] | Refused:  # fmt: skip
        """A path's versions, newest first, older than *before* (0: all): its current state
        (a live version or a deletion), then the kept ones."""
        sh = self.shares.get(share)
        current = sh.entries.get(path) if sh else None
        kept = sh.history.get(path, []) if sh else []
        if current is None and not kept:
            return Refused(LookupStatus.NOT_FOUND, 0, f"not found: {path} (no versions kept)")
        found = [(current, VersionFlags.CURRENT)] if current is not None else []
        found += [(k.entry, 0) for k in reversed(kept)]
        if before:
            found = [(e, f) for e, f in found if e.version < before]
        limit = min(limit, PAGE_BYTES // ENTRY_BYTES)  # (a reply fits one control message)
        page = tuple(self._version_entry(e, f) for e, f in found[:limit])
        return page, len(found) > limit

    def _version_entry(self, entry: Entry, flags: int) -> VersionEntry:
        blob = entry.blob
        size, digest = (blob.size, blob.digest) if blob else (0, NO_DIGEST)
        if blob is None:
            flags |= VersionFlags.DELETED
        return VersionEntry(entry.version, size, entry.mtime_ns, entry.written, entry.mode,
                            int(flags), digest, self.writers.name(entry.writer))  # fmt: skip

    def version_of(self, share: str, path: str, version: int) -> Entry | Refused:
        """The version *version* of *path* with content: current or kept."""
        sh = self.shares.get(share)
        current = sh.entries.get(path) if sh else None
        if current is not None and current.version == version and current.blob is not None:
            return current
        for k in sh.history.get(path, ()) if sh else ():
            if k.entry.version == version:
                return k.entry
        return Refused(LookupStatus.NOT_FOUND, 0,
                       f"not found: {path} has no version {version} with content")  # fmt: skip

    def restore_version(self, share: str, path: str, version: int, base_version: int,
                origin: int = 0, writer: str = "") -> Committed | Refused:  # fmt: skip
        """A kept *version* of *path* becomes its new current version: a new version, which
        every synced client receives; the version it replaces is kept in turn."""
        found = self.version_of(share, path, version)
        if isinstance(found, Refused):
            return found
        blob = found.blob
        assert blob is not None
        current = self.shares[share].entries.get(path)
        if current is found and base_version in (ANY_VERSION, current.version):
            return Committed(current.version, reused=True)  # already current: nothing to do
        refused = self._admit(share, path, blob.size, base_version)
        if refused:  # (in the terms of a request, not of an upload)
            status = _RESTORE_REFUSALS.get(refused.status, LookupStatus.NO_SPACE)
            return refused._replace(status=status)
        # (_put takes the path's reference before the versions it replaces may give way)
        return Committed(self._put(share, path, blob, found.mtime_ns, found.mode, origin, writer))

    def deleted(self, share: str, prefix: str, after: str, limit: int) -> ListPage:
        """Paths under *prefix* (after *after*) that are deleted but have kept versions, each
        with its newest kept version."""
        sh = self.shares.get(share)
        if sh is None:
            return ListPage((), False)
        found: list[FileEntry] = []
        budget = PAGE_BYTES
        for path in sh.history.irange(minimum=max(prefix, after)):
            if not path.startswith(prefix):
                break
            current = sh.entries.get(path)
            if path == after or (current is not None and current.blob is not None):
                continue
            if len(found) >= limit or budget <= 0:
                return ListPage(tuple(found), True)
            found.append(sh.history[path][-1].entry.record(path))
            budget -= len(path.encode()) + ENTRY_BYTES
        return ListPage(tuple(found), False)
