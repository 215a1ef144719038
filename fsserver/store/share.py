"""``Share``: one share's part of the index, its paths in order (for listings) and by version
(for "what changed since N"), and ``Entry``, one path's latest version (or tombstone).

An index of a million files pays for what it keeps per file: an ``Entry`` holds its version,
mtime and mode packed in one int (one object instead of three ints of up to 48 bytes each),
and the version order is a ``VersionLog`` (two columns) rather than a second sorted dict.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from sortedcontainers import SortedDict

from common.messages import FileEntry
from fsserver.store.records import Blob
from fsserver.store.versionlog import VersionLog

_VERSION_BITS = 48
_MODE_BITS = 32
_WRITER_BITS = 24
_WRITTEN_BITS = 40
_WRITER_SHIFT = _VERSION_BITS + _MODE_BITS
_WRITTEN_SHIFT = _WRITER_SHIFT + _WRITER_BITS
_MTIME_SHIFT = _WRITTEN_SHIFT + _WRITTEN_BITS
_VERSION_MASK = (1 << _VERSION_BITS) - 1
_MODE_MASK = (1 << _MODE_BITS) - 1
_WRITER_MASK = (1 << _WRITER_BITS) - 1
_WRITTEN_MASK = (1 << _WRITTEN_BITS) - 1
_MTIME_BIAS = 1 << 63
"""mtime_ns is a signed 64-bit number: biased, it packs as an unsigned one."""
NO_DIGEST = bytes(16)


class Entry:
    """A path's version, mtime_ns and mode, when it was written (unix seconds) and by whom
    (a number of the store's ``Writers``), all packed in ``meta``, and its content (None: a
    tombstone). Packed, the write's time and writer cost 8 bytes an entry, not two objects."""

    __slots__ = ("blob", "meta")

    def __init__(self, version: int, mtime_ns: int, mode: int, blob: Blob | None,
                 written: int = 0, writer: int = 0) -> None:  # fmt: skip
        if version > _VERSION_MASK or mode > _MODE_MASK:  # (never negative: u64, u32)
            raise ValueError(f"version {version} or mode {mode} out of range")
        written = min(max(written, 0), _WRITTEN_MASK)
        self.meta = ((mtime_ns + _MTIME_BIAS) << _MTIME_SHIFT | written << _WRITTEN_SHIFT
                     | (writer & _WRITER_MASK) << _WRITER_SHIFT | mode << _VERSION_BITS
                     | version)  # fmt: skip
        self.blob = blob

    @property
    def version(self) -> int:
        return self.meta & _VERSION_MASK

    @property
    def mode(self) -> int:
        return self.meta >> _VERSION_BITS & _MODE_MASK

    @property
    def mtime_ns(self) -> int:
        return (self.meta >> _MTIME_SHIFT) - _MTIME_BIAS

    @property
    def written(self) -> int:
        """When this version was made, in unix seconds (0: not known, a data dir from
        before versions)."""
        return self.meta >> _WRITTEN_SHIFT & _WRITTEN_MASK

    @property
    def writer(self) -> int:
        return self.meta >> _WRITER_SHIFT & _WRITER_MASK

    def record(self, path: str) -> FileEntry:
        meta, blob = self.meta, self.blob
        size, digest = (blob.size, blob.digest) if blob else (0, NO_DIGEST)
        return FileEntry(size, meta & _VERSION_MASK, (meta >> _MTIME_SHIFT) - _MTIME_BIAS,
                         meta >> _VERSION_BITS & _MODE_MASK, digest, path)  # fmt: skip

    def __repr__(self) -> str:
        return f"Entry({self.version}, {self.mtime_ns}, {self.mode:o}, {self.blob!r})"


@dataclass(slots=True)
class Share:
    entries: SortedDict = field(default_factory=SortedDict)
    by_version: VersionLog = field(default_factory=VersionLog)
    """version -> path, for "what changed since N"; each path appears once, at its latest."""
    seq: int = 0
    live: int = 0
    bytes: int = 0
    """Logical bytes of the share's live files (what its quota counts)."""
    tombstones: deque[tuple[float, int, str]] = field(default_factory=deque)
    """(unix time, version, path) of each delete, oldest first (see ``Retention``)."""
    pruned: int = 0
    """The version of the newest tombstone forgotten."""
    history: SortedDict = field(default_factory=SortedDict)
    """path -> its earlier versions (``versions.Kept``), oldest first: only paths that have
    some, in path order (for ``ls --deleted``)."""
    kept_bytes: int = 0
    """Logical bytes of the kept versions (they count against the quota too)."""
    kept_count: int = 0
    kept_order: deque[tuple[float, int, str]] = field(default_factory=deque)
    """(replaced at, version, path) of each kept version, oldest first (``--keep-days``, and
    which to give up first); versions given up by count stay until they reach the front."""

    def record(self, path: str, entry: Entry) -> None:
        old = self.entries.get(path)
        if old is not None:
            self.by_version.remove(old.version)
        self.entries[path] = entry
        self.by_version.add(entry.version, path)

    def forget(self, path: str, version: int) -> None:
        """Drop *path*, whose entry is at *version* (a tombstone past its time)."""
        del self.entries[path]
        self.by_version.remove(version)
