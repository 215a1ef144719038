"""Loading a data dir into a fresh ``Store`` and its arena, before the server is ready.

Every live blob is read from its segment into an extent of the arena and checked (its header,
then its content against its digest, at memory speed). What does not check out is sorted:

- at the end of what was written (no good record lies after a bad one on disk): a torn tail,
  normal after a crash during a write. Those blobs, and the entries that name them, are
  dropped with a warning, and counted (``fs_recovery_damaged_records``);
- anywhere else: damage in the middle, which a crash does not cause. The start stops with a
  message naming the file, unless ``--repair`` asks to keep what checks out.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import mmap
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fsserver import telemetry
from fsserver.store.allocator import aligned
from fsserver.store.catalog import Catalog
from fsserver.store.index import Store
from fsserver.store.records import Blob
from fsserver.store.segments import SegmentDamage, copy_record, segment_name

log = logging.getLogger(__name__)


class RecoveryError(RuntimeError):
    """The data dir cannot be loaded as it is; the message says why and what to do."""


@dataclass
class Loaded:
    files: int = 0
    blobs: int = 0
    bytes: int = 0
    seconds: float = 0.0
    damaged: list[str] = field(default_factory=list)
    next_segment: int = 1
    lsn: int = 0


def open_data_dir(folder: Path) -> None:
    (folder / "segments").mkdir(parents=True, exist_ok=True)


def load(folder: Path, store: Store, arena: memoryview, repair: bool = False) -> Loaded:
    """Fill *store* (and *arena*) from the data dir; RecoveryError if it cannot be."""
    started = time.perf_counter()
    open_data_dir(folder)
    catalog = Catalog(folder)
    try:
        store.store_id = catalog.store_id
        rows = catalog.blobs()
        need = sum(row[3] for row in rows)
        if need > store.allocator.capacity:
            raise RecoveryError(f"{folder} holds {need} bytes of content, more than "
                                f"--store-size ({store.allocator.capacity}): raise it")  # fmt: skip
        blobs, bad = read_blobs(folder / "segments", rows, store, arena)
        done = Loaded(lsn=catalog.lsn)
        if bad:
            done.damaged = sort_damage(bad, rows, blobs, repair)
            catalog.forget_blobs([blob_id for blob_id, _ in bad])
        store.restore(catalog.shares(), blobs, catalog.entries())
        orphans = [blob for blob in blobs.values() if blob.refs == 0]
        if orphans:  # content no entry names (a crash between two groups): let it go
            catalog.forget_blobs([blob.id for blob in orphans])
            for blob in orphans:
                blob.refs = 1
                store.unpin([blob])
        numbers = [int(p.stem) for p in (folder / "segments").glob("*.seg") if p.stem.isdigit()]
        done.next_segment = max(numbers, default=0) + 1
    finally:
        catalog.close()
    stats = store.stats()
    done.files, done.blobs, done.bytes = stats.files, len(store.blobs), stats.logical_bytes
    done.seconds = time.perf_counter() - started
    telemetry.RECOVERY_SECONDS.set(done.seconds)
    return done


def read_blobs(folder: Path, rows: list[tuple[int, str, bytes, int, int, int]], store: Store,
               arena: memoryview) -> tuple[dict[int, Blob], list[tuple[int, str]]]:  # fmt: skip
    """Each blob into an extent of its own; (the good ones by id, [(id, why) of the bad]).
    A segment's blobs share one allocation (each frees its own part later), and the segment
    is read through a mapping: 100,000 small files cost no system call each."""
    blobs: dict[int, Blob] = {}
    bad: list[tuple[int, str]] = []
    for segment, group in itertools.groupby(rows, key=lambda row: row[4]):
        members = list(group)
        where = folder / segment_name(segment)
        room = sum(aligned(row[3]) for row in members)
        at = store.allocator.allocate(room) if room else 0
        with mapped(where) as view:
            for blob_id, share, digest, size, _, offset in members:
                try:
                    if view is None:
                        raise SegmentDamage(f"{where}: missing")
                    copy_record(view, offset, arena[at : at + size], (blob_id, size, digest),
                                str(where))  # fmt: skip
                except SegmentDamage as exc:
                    store.allocator.free(at, size)
                    bad.append((blob_id, str(exc)))
                else:
                    blobs[blob_id] = Blob(share, digest, size, at, id=blob_id)
                at += aligned(size)
    return blobs, bad


@contextlib.contextmanager
def mapped(path: Path) -> Iterator[memoryview | None]:
    """A read-only mapping of a whole segment (None if it is missing or empty). Nothing
    writes to it while the server starts, so the mapping cannot shrink under a read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield None
        return
    try:
        if os.fstat(fd).st_size == 0:
            yield None
            return
        with mmap.mmap(fd, 0, prot=mmap.PROT_READ) as whole:
            view = memoryview(whole)
            try:
                yield view
            finally:
                view.release()
    finally:
        os.close(fd)


def sort_damage(bad: list[tuple[int, str]], rows: list[tuple[int, str, bytes, int, int, int]],
                good: dict[int, Blob], repair: bool) -> list[str]:  # fmt: skip
    """Warn of a torn tail (or repaired damage); RecoveryError for damage in the middle."""
    position = {row[0]: (row[4], row[5]) for row in rows}
    last_good = max((position[blob_id] for blob_id in good), default=(-1, -1))
    middle = [why for blob_id, why in bad if position[blob_id] < last_good]
    reasons = [why for _, why in bad]
    telemetry.RECOVERY_DAMAGED.inc(len(bad))
    if middle and not repair:
        raise RecoveryError(f"damaged data in the middle of the data dir: {middle[0]}"
                            f"{f' (and {len(middle) - 1} more)' if len(middle) > 1 else ''}; "
                            f"start with --repair to keep what checks out")  # fmt: skip
    what = "repaired: dropped" if middle else "a torn tail (an interrupted write): dropped"
    for why in reasons:
        log.warning("%s %s", what, why)
    return reasons
