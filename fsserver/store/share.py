"""``Share``: one share's part of the index, its paths in order (for listings) and by version
(for "what changed since N"), and ``Entry``, one path's latest version (or tombstone)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from sortedcontainers import SortedDict

from common.messages import FileEntry
from fsserver.store.records import Blob


@dataclass(slots=True)
class Entry:
    version: int
    mtime_ns: int
    mode: int
    blob: Blob | None  # None for a tombstone

    def record(self, path: str) -> FileEntry:
        blob = self.blob
        size, digest = (blob.size, blob.digest) if blob else (0, bytes(16))
        return FileEntry(size, self.version, self.mtime_ns, self.mode, digest, path)


@dataclass(slots=True)
class Share:
    entries: SortedDict = field(default_factory=SortedDict)
    by_version: SortedDict = field(default_factory=SortedDict)
    """version -> path, for "what changed since N"; each path appears once, at its latest."""
    seq: int = 0
    live: int = 0
    bytes: int = 0
    """Logical bytes of the share's live files (what its quota counts)."""
    tombstones: deque[tuple[float, int, str]] = field(default_factory=deque)
    """(unix time, version, path) of each delete, oldest first (see ``Retention``)."""
    pruned: int = 0
    """The version of the newest tombstone forgotten."""

    def record(self, path: str, entry: Entry) -> None:
        old = self.entries.get(path)
        if old is not None:
            del self.by_version[old.version]
        self.entries[path] = entry
        self.by_version[entry.version] = path
