"""What the store answers, as plain data: these cross the process boundary from the supervisor
to the workers, so they are named tuples, which pickle several times faster than slotted
dataclasses. Also ``Blob``, a stored content, which ``Store`` and ``BatchStoring`` share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

from common.messages import FileEntry

PAGE_BYTES = 32 * 1024
"""A list or change page stops after about this many bytes (paths plus a fixed share per
entry), so that one store reply always fits one control message."""
ENTRY_BYTES = 128


class Reserved(NamedTuple):
    ticket: int
    offset: int
    held: int = 0
    """Bytes of the file the extent holds already: an upload cut short, resumed."""


class Busy(NamedTuple):
    """An upload of the same content to the same path is in progress, perhaps one whose
    connection has just ended and whose extent is about to be parked: ask again shortly."""


class Linked(NamedTuple):
    """The content was already stored; the path now refers to it."""

    version: int


class Committed(NamedTuple):
    version: int
    reused: bool = False
    """The share held this content already: the path now refers to it (stored once)."""


class Opened(NamedTuple):
    entry: FileEntry
    offset: int
    lease: int


class Refused(NamedTuple):
    status: int
    version: int
    message: str
    cause: str = ""
    """Which limit refused it, for ``fs_refusals_total`` (``quota``, ``max_files``,
    ``disk_full``), when the status alone does not say."""


class ListPage(NamedTuple):
    entries: tuple[FileEntry, ...]
    more: bool


class Change(NamedTuple):
    share: str
    entry: FileEntry
    deleted: bool
    origin: int = 0
    """The connection that made the change (0: none); its subscription does not echo it."""


class ChangePage(NamedTuple):
    """Changes after a sequence number, oldest first; ``seq`` is the share's latest."""

    changes: tuple[Change, ...]
    more: bool
    seq: int
    pruned: int = 0
    """The newest tombstone forgotten (``--tombstone-days``): a client whose position is
    below it may have missed a delete."""


@dataclass(frozen=True, slots=True)
class StoreStats:
    capacity_bytes: int
    used_bytes: int
    blob_bytes: int
    logical_bytes: int
    files: int
    shares: int
    parked_bytes: int = 0
    """Of ``used_bytes``: extents of uploads cut short, kept to be resumed (given up first)."""
    free_bytes: int = 0
    largest_free_bytes: int = 0
    """The largest extent free in one piece: the largest upload that fits now."""
    share_quota: int = 0
    per_share: tuple[tuple[str, int, int, int, int], ...] = ()
    """(share, live files, their logical bytes, kept versions, their logical bytes) of each
    share holding files or kept versions."""


@dataclass(slots=True)
class Blob:
    """A stored content of a memory-only store: four slots, 64 bytes (six were 80: a million
    files' 16 MB). Its share is the one the index finds it under (``BlobTable``)."""

    digest: bytes
    size: int
    offset: int
    refs: int = 0
    id: ClassVar[int] = 0
    """No name on disk."""


@dataclass(slots=True)
class NamedBlob(Blob):
    """A stored content of a store with a data dir: also its share and its name on disk
    (``catalog.py``), which the persister's records and the recovery use."""

    share: str = ""
    id: int = 0  # type: ignore[misc]

    @property
    def key(self) -> BlobKey:
        return (self.share, self.digest, self.size)


BlobKey = tuple[str, bytes, int]
"""Content is shared within a share only: a digest and a size are not proof of holding the
bytes (XXH3 is no cryptographic hash), so they must never open another share's content."""


class BatchStored(NamedTuple):
    """What ``store_many`` did with each file of a batch, by position: column lists, which
    cross the process boundary several times faster than a record per file."""

    versions: list[int]
    """Each file's new version (0 if it was refused)."""
    reused: set[int]
    """Positions of files whose content the share held already (``ALREADY_HAVE_CONTENT``)."""
    refused: dict[int, Refused]
