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

import itertools
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from fsserver import telemetry
from fsserver.store.catalog import Catalog
from fsserver.store.index import Store
from fsserver.store.records import NamedBlob
from fsserver.store.segmentload import BlobRow, SegmentLoad
from fsserver.store.segments import Placed, segment_name

log = logging.getLogger(__name__)


LOAD_THREADS = 4
"""Segments loaded at once, at most (and no more than the cores this process may use)."""


class RecoveryError(RuntimeError):
    """The data dir cannot be loaded as it is; the message says why and what to do."""


@dataclass
class Loaded:
    files: int = 0
    blobs: int = 0
    bytes: int = 0
    seconds: float = 0.0
    damaged: list[str] = field(default_factory=list)
    lsn: int = 0


def open_data_dir(folder: Path) -> None:
    (folder / "segments").mkdir(parents=True, exist_ok=True)


def identity(folder: Path) -> tuple[bytes, int]:
    """The store id the data dir keeps (a new data dir gets one now), and the number of the
    next segment: past every one on disk, so no new one overwrites one that is there."""
    open_data_dir(folder)
    catalog = Catalog(folder)
    try:
        store_id = catalog.store_id
    finally:
        catalog.close()
    numbers = [int(p.stem) for p in (folder / "segments").glob("*.seg") if p.stem.isdigit()]
    return store_id, max(numbers, default=0) + 1


def load(folder: Path, store: Store, arena_file: Path, repair: bool = False) -> Loaded:
    """Fill *store* (and the arena, through its file) from the data dir; RecoveryError if it
    cannot be."""
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
        blobs, bad = read_blobs(folder / "segments", rows, store, arena_file)
        done = Loaded(lsn=catalog.lsn)
        unsynced = catalog.unsynced()
        torn, bad = split_torn(bad, rows, unsynced)
        if torn:
            done.damaged, again = roll_back_torn(catalog, torn)
            if again:  # earlier versions the torn group had freed: loaded now
                more = catalog.blobs(again)
                found, more_bad = read_blobs(folder / "segments", more, store, arena_file)
                rows, bad = rows + more, bad + more_bad
                blobs.update(found)
        if bad:
            done.damaged += sort_damage(bad, rows, blobs, repair)
            catalog.forget_blobs([blob_id for blob_id, _ in bad])
        left_out = store.restore(catalog.shares(), blobs, catalog.entries(), catalog.versions())
        if left_out:
            log.warning("left out %d kept versions whose content is lost", left_out)
        orphans = [blob for blob in blobs.values() if blob.refs == 0]
        if orphans:  # content no entry names (a crash between two groups): let it go
            catalog.forget_blobs([blob.id for blob in orphans])
            for blob in orphans:
                blob.refs = 1
                store.unpin([blob])
        if unsynced is not None:  # what survived is made durable before it is relied on
            sync_segments(folder / "segments", unsynced.segment)
            catalog.settled()
    finally:
        catalog.close()
    stats = store.stats()
    done.files, done.blobs, done.bytes = stats.files, len(store.blobs), stats.logical_bytes
    done.seconds = time.perf_counter() - started
    telemetry.RECOVERY_SECONDS.set(done.seconds)
    return done


def read_blobs(folder: Path, rows: list[BlobRow], store: Store,
               arena_file: Path) -> tuple[dict[int, NamedBlob], list[tuple[int, str]]]:  # fmt: skip
    """Each blob into an extent of its own; (the good ones by id, [(id, why) of the bad]).
    A segment's blobs share one allocation (each frees its own part later), and segments
    load side by side, one thread per core (see ``segmentload``)."""
    jobs: list[SegmentLoad] = []
    for segment, group in itertools.groupby(rows, key=lambda row: row[4]):
        job = SegmentLoad(folder / segment_name(segment), list(group), 0)
        room = job.room
        job.at = store.allocator.allocate(room) if room else 0
        jobs.append(job)
    fd = os.open(arena_file, os.O_WRONLY | os.O_CLOEXEC)
    try:
        with ThreadPoolExecutor(min(len(os.sched_getaffinity(0)), LOAD_THREADS)) as pool:
            done = list(pool.map(lambda job: job.run(fd), jobs))
    finally:
        os.close(fd)
    blobs = {blob.id: blob for job in done for blob in job.good}
    bad: list[tuple[int, str]] = []
    for job in done:
        for blob_id, why, at, size in job.bad:
            store.allocator.free(at, size)
            bad.append((blob_id, why))
    return blobs, bad


Bad = list[tuple[int, str]]
"""Damaged blobs: (id, why)."""


def split_torn(bad: Bad, rows: list[BlobRow], unsynced: Placed | None) -> tuple[Bad, Bad]:
    """(the bad records of a torn last group, the others). The last group's segment fsync
    ran alongside its commit (``persister.py``), so a crash may have kept its rows and lost
    any part of its records (not only their end): every bad one at or after *unsynced*,
    where the group began, is a torn tail, whatever good ones follow it."""
    if unsynced is None:
        return [], bad
    mark = (unsynced.segment, unsynced.offset)
    position = {row[0]: (row[4], row[5]) for row in rows}
    torn = [item for item in bad if position[item[0]] >= mark]
    return torn, [item for item in bad if position[item[0]] < mark]


def roll_back_torn(catalog: Catalog, torn: Bad) -> tuple[list[str], list[int]]:
    """The torn group's damaged blobs go; each path they named gets back the entry it had
    before that group (never acknowledged, so nothing acknowledged is lost). Returns the
    reasons, and the blobs of those earlier entries (still to be loaded)."""
    done = catalog.roll_back(blob_id for blob_id, _ in torn)
    telemetry.RECOVERY_DAMAGED.inc(len(torn))
    for _, why in torn:
        log.warning("a torn tail (a crash while the last group was synced): dropped %s", why)
    log.warning("a torn tail: %d paths back at their earlier version, %d new paths dropped",
                done.back, done.gone)  # fmt: skip
    return [why for _, why in torn], done.again


def sync_segments(folder: Path, first: int) -> None:
    """fsync the segments from number *first* on (a restart after a kill may find the last
    group's records in the page cache only)."""
    for path in folder.glob("*.seg"):
        if path.stem.isdigit() and int(path.stem) >= first:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def sort_damage(bad: list[tuple[int, str]], rows: list[BlobRow],
                good: dict[int, NamedBlob], repair: bool) -> list[str]:  # fmt: skip
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
