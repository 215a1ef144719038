"""``Journal``: the supervisor's side of persistence. Store changes on their way to disk, and
the answers that must wait for them.

Every store call that changes something leaves journal records (``Store.take_journal``):

- ``("blob", id, share, digest, size, arena offset, ticket)``: new content, to append to a
  segment (*ticket*: the upload it came from, or 0);
- ``("put", share, path, version, mtime_ns, mode, blob id, unix time, writer)``: a path's
  new version, when and by whom (a token's name) it was written;
- ``("del", share, path, version, mtime_ns, mode, unix time, writer)``: a path's tombstone;
- ``("keep", share, path, version, mtime_ns, mode, blob id, written at, writer, replaced
  at)``: a path's version just replaced, kept (``--keep-versions``);
- ``("drop", share, path, version)``: a kept version given up (by count, age or room);
- ``("free", blob id)``: content nothing refers to any more;
- ``("gone", share, path, version)``: a tombstone past its retention, forgotten;
- ``("share", name)``: a share made before any file was put in it;
- notes, ``("stage", ...)`` and ``("unstage", ticket)``: a big upload written while it
  arrives (``fsserver.store.writebehind``). An entry of notes only gets no LSN (it is 0): it
  changes nothing, is not kept, and holds back no answer.

The records of one call form one entry with the next log sequence number (LSN). Entries go to
the persisting process in order; it applies a group of them in one catalog transaction and
answers with the highest LSN applied. Until then the entry is kept here (a restarted persister
is sent it again) and the new blobs it names stay pinned in the arena (their bytes are what it
writes).

With ``--fsync always`` nothing the store answered after a change leaves the supervisor before
that change is applied, durably: replies and change notifications wait in the outbox, in order,
until the LSN they were made after is applied (a group commit: one fsync for every call that
came in while the previous one ran). With ``interval`` and ``never`` they leave at once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fsserver.store.records import BlobKey, NamedBlob
from fsserver.store.writebehind import NOTE_KINDS

Record = tuple[Any, ...]
Entry = tuple[int, list[Record]]
"""(LSN, the records of one call)."""


@dataclass
class Journal:
    lsn: int = 0
    """The last LSN given out."""
    applied: int = 0
    """The highest LSN the persister has applied (durably, with ``--fsync always``)."""
    hold_answers: bool = True
    pending: deque[Entry] = field(default_factory=deque)
    pins: deque[tuple[int, list[NamedBlob]]] = field(default_factory=deque)
    outbox: deque[tuple[int, Callable[[], None]]] = field(default_factory=deque)
    waiting_bytes: int = 0
    """Bytes of new blobs not yet applied (a metric: what a crash could cost with interval)."""

    def add(self, records: list[Record], blobs: dict[BlobKey, NamedBlob]) -> Entry | None:
        """The records of one call as the next entry (None if it changed nothing); *blobs*
        (the store's) finds the pinned blob of each new-blob record."""
        if not records:
            return None
        if all(r[0] in NOTE_KINDS for r in records):  # no change: no LSN, nothing to resend
            return (0, records)
        self.lsn += 1
        entry = (self.lsn, records)
        self.pending.append(entry)
        new = [blobs[(r[2], r[3], r[4])] for r in records if r[0] == "blob"]
        if new:
            self.pins.append((self.lsn, new))
            self.waiting_bytes += sum(b.size for b in new)
        return entry

    def mark_applied(self, lsn: int) -> list[NamedBlob]:
        """The persister applied everything up to *lsn*: the blobs to unpin now. The answers
        this lets go are sent (``flush``)."""
        self.applied = max(self.applied, lsn)
        while self.pending and self.pending[0][0] <= self.applied:
            self.pending.popleft()
        done: list[NamedBlob] = []
        while self.pins and self.pins[0][0] <= self.applied:
            done += self.pins.popleft()[1]
        self.waiting_bytes -= sum(b.size for b in done)
        self.flush()
        return done

    def unapplied(self, after: int) -> list[Entry]:
        """Entries a persister that has applied up to *after* still needs (after a restart)."""
        return [entry for entry in self.pending if entry[0] > after]

    def send(self, deliver: Callable[[], None]) -> None:
        """Run *deliver* (it sends an answer) once every change made so far is applied."""
        if not self.hold_answers or (self.lsn <= self.applied and not self.outbox):
            deliver()
        else:
            self.outbox.append((self.lsn, deliver))

    def flush(self) -> None:
        while self.outbox and self.outbox[0][0] <= self.applied:
            self.outbox.popleft()[1]()

    @property
    def idle(self) -> bool:
        return not self.pending
