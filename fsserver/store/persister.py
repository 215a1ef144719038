"""The persisting process: it writes the journal (``journal.py``) to the data dir.

A blocking loop of its own, so that no disk write or fsync ever runs on an event loop that
serves clients. It takes every journal entry that has arrived as one group: new blobs are
appended to the open segment straight from the shared arena, then the segment is synced and
the group's catalog rows and its last LSN are committed in one transaction. The two fsyncs
run at once (the segment's in a thread: ``os.fsync`` and SQLite's commit both release the
GIL), and the group is answered ``("applied", lsn, disk room)`` only once both are done. A
crash between them may leave rows whose records the segment lacks: the commit marks where the
group's records begin and keeps what it replaced, and recovery rolls such a torn group back
(``Catalog.roll_back``). A group that created a segment file syncs it (and its folder) first,
as before: a file's name is not part of what recovery can roll back.

``--fsync``: ``always`` commits each group at once, durably (entries that arrive during an
fsync make the next group: a group commit); ``interval`` gathers entries for up to
``INTERVAL`` seconds before each durable commit; ``never`` commits each group without any
fsync (the OS writes when it likes).

A write that fails (a full disk) is undone (the segment is cut back, the transaction rolled
back), reported, and tried again a moment later; the supervisor keeps the entries meanwhile.
"""

from __future__ import annotations

import logging
import os
import pickle
import select
import shutil
import signal
import socket
import sqlite3
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from fsserver import telemetry
from fsserver.channel import recv_message, unpack
from fsserver.store.arena import ArenaRef
from fsserver.store.catalog import Catalog
from fsserver.store.compaction import Compactor
from fsserver.store.segments import Placed, SegmentDamage, SegmentWriter, segment_name
from fsserver.store.writebehind import StagedUploads

log = logging.getLogger(__name__)

INTERVAL = 0.1
RETRY_AFTER = 1.0
DISK_MARGIN = 16 << 20
"""Room kept free on the data dir's disk for the catalog and its WAL."""


def disk_room(folder: Path) -> int:
    return shutil.disk_usage(folder).free - DISK_MARGIN


class Persister:
    def __init__(self, folder: Path, fsync: str, sock: socket.socket, arena: memoryview,
                 segment: int) -> None:  # fmt: skip
        self.folder = folder
        self.fsync = fsync
        self.sock = sock
        self.arena = arena
        self.catalog = Catalog(folder, fsync)
        self.applied = self.catalog.lsn
        segments = folder / "segments"
        on_disk = [int(p.stem) for p in segments.glob("*.seg") if p.stem.isdigit()]
        # after a restart, past every segment the one before wrote (it may have rolled on)
        self.segments = SegmentWriter(segments, max([segment, *(n + 1 for n in on_disk)]))
        self.staged = StagedUploads(segments, arena, durable=fsync != "never")
        self.group: list[tuple[int, list[tuple[Any, ...]]]] = []
        self.sampler = telemetry.ProcessSampler("persister")
        self.running = True
        self.deadline = 0.0
        self.compactor = Compactor(folder / "segments", self.catalog)
        self.compact_after = 0.0
        self.syncer = ThreadPoolExecutor(1, thread_name_prefix="segment-fsync")
        """Runs the segment's fsync while the catalog commits."""
        self.remove_orphans()

    def serve(self) -> None:
        self.answer(("ready", self.catalog.lsn, disk_room(self.folder)))
        while self.running or self.group:
            if self.sampler.due():  # once a second: also how much room the disk has now
                self.sampler.sample()
                self.answer(("room", disk_room(self.folder)))
            if select.select([self.sock], [], [], self.timeout())[0]:
                self.receive()
            if self.group and self.due():
                self.write_group()
            elif not self.group and self.running:
                self.compact()

    def timeout(self) -> float:
        if not self.group:
            return 0.0 if self.compactor.busy else telemetry.SAMPLE_EVERY
        if self.fsync != "interval" or not self.running:
            return 0.0
        return max(0.0, self.deadline - time.monotonic())

    def due(self) -> bool:
        """The group is to be written now (``interval``: once its oldest entry is 100 ms old)."""
        return self.fsync != "interval" or not self.running or time.monotonic() >= self.deadline

    def receive(self) -> None:
        """Every message waiting: journal entries join the group."""
        while True:
            try:
                data, _ = recv_message(self.sock, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            if not data:
                self.running = False
                return
            message = unpack(data)
            if message[0] == "log":
                if not self.group:
                    self.deadline = time.monotonic() + INTERVAL
                self.group.extend(message[1])
            elif message[0] == "stop":
                self.running = False

    def write_group(self) -> None:
        group, self.group = self.group, []
        mark = (self.segments.number, self.segments.size)
        try:
            self.apply(group)
        except OSError as exc:  # a full disk, an I/O error: undo, report, try again
            self.undo(mark)
            log.error("cannot write the data dir: %s; retrying in %.0f s", exc, RETRY_AFTER)
            telemetry.PERSIST_FAILURES.inc()
            self.answer(("failed", str(exc), disk_room(self.folder)))
            time.sleep(RETRY_AFTER)
            self.group = group + self.group
            return
        lsn = max(entry[0] for entry in group)
        if lsn:  # (a group of notes only changed nothing to report)
            self.answer(("applied", lsn, disk_room(self.folder)))

    def apply(self, group: list[tuple[int, list[tuple[Any, ...]]]]) -> None:
        """Write the group: its blobs, then (if it changed anything but notes) its rows."""
        records = [r for _, records in group for r in records]
        begun = Placed(self.segments.number, self.segments.size)
        placed, written = self.write_blobs(records)
        lsn = max(entry[0] for entry in group)
        if lsn:
            started = time.perf_counter()
            self.commit(records, placed, lsn, begun)
            if self.fsync != "never":
                telemetry.FSYNC_SECONDS.observe(time.perf_counter() - started)
        telemetry.DISK_WRITE_BYTES.inc(written)

    def commit(self, records: list[tuple[Any, ...]], placed: dict[int, Placed], lsn: int,
               begun: Placed) -> None:  # fmt: skip
        """The group's rows, committed while its records are synced (*begun*: where they
        start); both are durable when this returns."""
        syncing: Future[None] | None = None
        if self.fsync != "never":
            if self.segments.new_files or not self.segments.dirty:  # a new file: first
                self.segments.sync()  # (with its folder)
            else:
                syncing = self.syncer.submit(self.segments.sync)
        try:
            self.catalog.apply(records, placed, lsn, begun if syncing else None)
        except sqlite3.OperationalError as exc:  # a full disk, an I/O error: try again
            raise OSError(str(exc)) from exc
        finally:
            done = syncing.exception() if syncing else None
        if done is not None:  # committed, but the records may not be on disk: take it back
            self.catalog.roll_back(placed, self.applied)
            raise done
        self.applied = lsn

    def write_blobs(self, records: list[tuple[Any, ...]]) -> tuple[dict[int, Placed], int]:
        """Staged uploads (``writebehind.py``) move on or become segments of their own; the
        other new blobs are appended to the open segment straight from the arena."""
        arena, staged = self.arena, self.staged
        placed: dict[int, Placed] = {}
        new: list[tuple[int, bytes, memoryview]] = []
        written = 0
        try:
            for r in records:
                kind = r[0]
                if kind == "stage":
                    written += staged.stage(*r[1:])
                elif kind == "unstage":
                    staged.end(r[1])
                elif kind == "blob":
                    done = staged.take(r[6], r[1], r[3], r[5], r[4]) if r[6] else None
                    if done is None:
                        new.append((r[1], r[3], arena[r[5] : r[5] + r[4]]))
                    else:
                        placed[r[1]] = self.segments.adopt(done[0])
                        written += done[1]
            for (blob_id, _, view), spot in zip(new, self.segments.append_all(new), strict=True):
                placed[blob_id] = spot
                written += len(view)
        finally:
            for _, _, view in new:
                view.release()
            staged.drop_ended()
        return placed, written

    def undo(self, mark: tuple[int, int]) -> None:
        """Cut the open segment back to where the failed group began."""
        number, size = mark
        folder = self.folder / "segments"
        if self.segments.number != number:  # it rolled on: the new segments hold nothing
            self.segments.close()
            for later in range(number + 1, self.segments.number + 1):
                (folder / segment_name(later)).unlink(missing_ok=True)
            self.segments = SegmentWriter(folder, number, size)  # reopened at *size*
            if (folder / segment_name(number)).exists():
                os.truncate(folder / segment_name(number), size)
        else:
            self.segments.cut(size)

    def compact(self) -> None:
        """One step of compaction, between groups (none for a while after a failure)."""
        if time.monotonic() < self.compact_after:
            return
        mark = (self.segments.number, self.segments.size)
        try:
            self.compactor.step(self.segments)
        except (OSError, SegmentDamage) as exc:
            log.warning("compaction stopped: %s; trying again in a minute", exc)
            self.undo(mark)
            self.compactor.abandon()
            self.compact_after = time.monotonic() + 60.0

    def remove_orphans(self) -> None:
        """Segment files no catalog row names: written by a group that never committed."""
        known = set(self.catalog.segment_numbers())
        for path in (self.folder / "segments").glob("*.seg"):
            number = int(path.stem) if path.stem.isdigit() else self.segments.number
            if number not in known and number < self.segments.number:
                log.info("removing %s: no committed record is in it", path.name)
                path.unlink()

    def answer(self, message: tuple[Any, ...]) -> None:
        try:
            self.sock.sendall(pickle.dumps(message, pickle.HIGHEST_PROTOCOL))
        except OSError:  # the supervisor is gone: so is the point of going on
            self.running = False

    def close(self) -> None:
        self.syncer.shutdown()
        self.staged.close()
        self.segments.close()
        self.catalog.close()


def serve_journal(folder: str, fsync: str, sock: socket.socket, arena_ref: ArenaRef,
                  segment: int) -> None:  # fmt: skip
    """Body of the persisting process: until the supervisor says stop (or goes)."""
    arena = arena_ref.attach()
    assert arena.view is not None
    sock.setblocking(True)
    persister = Persister(Path(folder), fsync, sock, arena.view, segment)
    # SIGTERM (a stop, or the supervisor's death): write the group in hand, then go
    signal.signal(signal.SIGTERM, lambda *_: setattr(persister, "running", False))
    try:
        persister.serve()
    finally:
        persister.close()
        arena.close()
