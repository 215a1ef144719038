"""``Catalog``: the durable index of the data dir, in SQLite (``index.sqlite``, WAL mode).

It holds what the in-memory ``Store`` is rebuilt from: the server's identity, every share's
sequence number, every path's latest entry (a tombstone for a deleted path), and where each
live blob's record lies in the segment files. The persisting process is its only writer; a
group of journal records becomes one transaction, together with the highest journal sequence
number (LSN) it holds, so that a restarted persister knows exactly what is applied.

Why SQLite and not a hand-written log: transactions, a torn-write-proof WAL, and a format any
operator can inspect (``sqlite3 index.sqlite``) come with the standard library.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from fsserver.store.segments import HEADER_SIZE, Placed

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS shares (
    name TEXT PRIMARY KEY, seq INTEGER NOT NULL, pruned INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blobs (
    id INTEGER PRIMARY KEY, share TEXT NOT NULL, digest BLOB NOT NULL, size INTEGER NOT NULL,
    segment INTEGER NOT NULL, offset INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS entries (
    share TEXT NOT NULL, path TEXT NOT NULL, version INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    mode INTEGER NOT NULL, blob INTEGER, deleted_at REAL,
    PRIMARY KEY (share, path)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY, live_bytes INTEGER NOT NULL, total_bytes INTEGER NOT NULL
);
"""
FORMAT = 1
SYNCHRONOUS = {"always": "FULL", "interval": "FULL", "never": "OFF"}
"""``interval`` commits only every 100 ms, but each commit is durable when it returns."""

Record = tuple[Any, ...]
"""A journal record (see ``fsserver.store.journal``)."""


class CatalogError(RuntimeError):
    """The catalog cannot be used; the message names the file."""


class Catalog:
    def __init__(self, folder: Path, fsync: str = "always") -> None:
        self.path = folder / "index.sqlite"
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.db.executescript(
                f"PRAGMA journal_mode=WAL; PRAGMA synchronous={SYNCHRONOUS[fsync]};" + SCHEMA
            )
            found = self.meta("format")
        except sqlite3.DatabaseError as exc:
            raise CatalogError(f"{self.path}: {exc}") from None
        if found is None:
            self.set_meta(format=FORMAT, store_id=os.urandom(16), lsn=0)
        elif int(found) != FORMAT:
            raise CatalogError(f"{self.path}: format {found}, this server reads {FORMAT}")
        self.known_blobs = self.db.execute("SELECT coalesce(max(id), 0) FROM blobs").fetchone()[0]
        """Blob ids up to this one may come again (an entry sent again after a restart)."""

    def close(self) -> None:
        self.db.close()

    # -- meta --------------------------------------------------------------------------------

    def meta(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, **values: Any) -> None:
        self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", values.items())

    @property
    def store_id(self) -> bytes:
        return bytes(self.meta("store_id"))

    @property
    def lsn(self) -> int:
        """The highest journal record applied."""
        return int(self.meta("lsn"))

    # -- writing -----------------------------------------------------------------------------

    def apply(self, records: Iterable[Record], placed: dict[int, Placed], lsn: int) -> None:
        """One group of journal records, in one transaction; *placed*: where the group's new
        blobs were appended. Rows of a kind are written with one ``executemany`` each: the
        order that matters (a path's later version wins) is kept within the entries."""
        entries: list[tuple[Any, ...]] = []
        blobs: list[tuple[Any, ...]] = []
        freed: list[int] = []
        gone: list[tuple[Any, ...]] = []
        seqs: dict[str, int] = {}
        segments: dict[int, list[int]] = {}
        for record in records:
            kind = record[0]
            if kind == "put" or kind == "del":
                _, share, path, version, mtime_ns, mode, last = record
                blob_id, at = (last, None) if kind == "put" else (None, last)
                entries.append((share, path, version, mtime_ns, mode, blob_id, at))
                seqs[share] = max(seqs.get(share, 0), version)
            elif kind == "blob":
                _, blob_id, share, digest, size = record[:5]
                where = placed[blob_id]
                blobs.append((blob_id, share, digest, size, where.segment, where.offset))
                grow = segments.setdefault(where.segment, [0, 0])
                grow[0] += HEADER_SIZE + size
                grow[1] += HEADER_SIZE + size
            elif kind == "free":
                freed.append(record[1])
            elif kind == "gone":
                gone.append(record[1:])
            elif kind == "share":  # made empty: a row of its own, seq 0
                seqs.setdefault(record[1], 0)
        db = self.db
        db.execute("BEGIN")
        try:
            self._forget_earlier_copies([row[0] for row in blobs if row[0] <= self.known_blobs])
            db.executemany("INSERT INTO blobs VALUES (?, ?, ?, ?, ?, ?)", blobs)
            db.executemany("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?)", entries)
            db.executemany(
                "INSERT INTO shares (name, seq) VALUES (?, ?) ON CONFLICT (name) DO UPDATE "
                "SET seq = max(seq, excluded.seq)", seqs.items(),
            )  # fmt: skip
            db.executemany("DELETE FROM entries WHERE share = ? AND path = ? AND version = ?",
                           gone)  # fmt: skip
            db.executemany("UPDATE shares SET pruned = max(pruned, ?) WHERE name = ?",
                           [(version, share) for share, _, version in gone])  # fmt: skip
            for blob_id in freed:
                self._free(blob_id)
            for segment, (live, total) in segments.items():
                self._segment_bytes(segment, live, total)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('lsn', ?)", (lsn,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _forget_earlier_copies(self, blob_ids: list[int]) -> None:
        """An entry sent again to a restarted persister may name blobs the one before it had
        already committed: the copy written now is the one named, the earlier one is dead."""
        for blob_id in blob_ids:
            self._free(blob_id)

    def _free(self, blob_id: int) -> None:
        row = self.db.execute("SELECT segment, size FROM blobs WHERE id = ?", (blob_id,)).fetchone()
        if row is None:
            return
        self.db.execute("DELETE FROM blobs WHERE id = ?", (blob_id,))
        self._segment_bytes(row[0], -(HEADER_SIZE + row[1]), 0)

    def _segment_bytes(self, segment: int, live: int, total: int) -> None:
        self.db.execute(
            "INSERT INTO segments VALUES (?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
            "live_bytes = live_bytes + excluded.live_bytes, "
            "total_bytes = total_bytes + excluded.total_bytes", (segment, live, total),
        )  # fmt: skip

    def forget_blobs(self, blob_ids: Iterable[int]) -> int:
        """Drop damaged blobs and the entries that refer to them (start-up, before anything
        else runs); returns how many entries went."""
        ids = [(blob_id,) for blob_id in blob_ids]
        db = self.db
        db.execute("BEGIN")
        before = db.total_changes
        db.executemany("DELETE FROM entries WHERE blob = ?", ids)
        gone = db.total_changes - before
        for (blob_id,) in ids:
            self._free(blob_id)
        db.execute("COMMIT")
        return gone

    # -- reading -----------------------------------------------------------------------------

    def shares(self) -> list[tuple[str, int, int]]:
        return self.db.execute("SELECT name, seq, pruned FROM shares").fetchall()

    def blobs(self) -> list[tuple[int, str, bytes, int, int, int]]:
        """(id, share, digest, size, segment, offset), in the order they lie on disk."""
        return self.db.execute(
            "SELECT id, share, digest, size, segment, offset FROM blobs ORDER BY segment, offset"
        ).fetchall()

    def entries(self) -> Iterator[tuple[str, str, int, int, int, int | None, float | None]]:
        """(share, path, version, mtime_ns, mode, blob id or None, deleted at), streamed
        share by share, in path order."""
        return self.db.execute(
            "SELECT share, path, version, mtime_ns, mode, blob, deleted_at FROM entries "
            "ORDER BY share, path"
        )

    def segment_numbers(self) -> list[int]:
        return [row[0] for row in self.db.execute("SELECT id FROM segments ORDER BY id")]

    # -- compaction --------------------------------------------------------------------------

    def worst_segment(self, besides: int) -> int | None:
        """The closed segment with the smallest share of live bytes, if that is half or less."""
        row = self.db.execute(
            "SELECT id FROM segments WHERE id != ? AND live_bytes * 2 <= total_bytes "
            "ORDER BY live_bytes * 1.0 / total_bytes LIMIT 1", (besides,),
        ).fetchone()  # fmt: skip
        return row[0] if row else None

    def blobs_in(self, segment: int) -> list[tuple[int, bytes, int, int]]:
        """(id, digest, size, offset) of the live blobs of *segment*, in their order."""
        return self.db.execute(
            "SELECT id, digest, size, offset FROM blobs WHERE segment = ? ORDER BY offset",
            (segment,),
        ).fetchall()

    def moved(self, placed: dict[int, Placed], sizes: dict[int, int], old: int) -> None:
        """Blobs copied out of segment *old* now live where *placed* says (a blob freed
        meanwhile stays freed: its copy is dead bytes)."""
        db = self.db
        db.execute("BEGIN")
        try:
            for blob_id, at in placed.items():
                record = HEADER_SIZE + sizes[blob_id]
                cursor = db.execute(
                    "UPDATE blobs SET segment = ?, offset = ? WHERE id = ? AND segment = ?",
                    (at.segment, at.offset, blob_id, old),
                )  # fmt: skip
                live = record if cursor.rowcount else 0
                self._segment_bytes(at.segment, live, record)
                self._segment_bytes(old, -live, 0)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def drop_segment(self, segment: int) -> None:
        self.db.execute("DELETE FROM segments WHERE id = ?", (segment,))
