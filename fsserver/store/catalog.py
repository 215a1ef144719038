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
from dataclasses import dataclass
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
    mode INTEGER NOT NULL, blob INTEGER, deleted_at REAL, written_at REAL,
    writer TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (share, path)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY, live_bytes INTEGER NOT NULL, total_bytes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS undo_entries (
    share TEXT NOT NULL, path TEXT NOT NULL, version INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    mode INTEGER NOT NULL, blob INTEGER, deleted_at REAL, written_at REAL,
    writer TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (share, path)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS freeing (id INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS versions (
    share TEXT NOT NULL, path TEXT NOT NULL, version INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    mode INTEGER NOT NULL, blob INTEGER NOT NULL, written_at REAL,
    writer TEXT NOT NULL DEFAULT '', replaced_at REAL NOT NULL,
    PRIMARY KEY (share, path, version)
) WITHOUT ROWID;
"""
ADDED_COLUMNS = ("written_at REAL", "writer TEXT NOT NULL DEFAULT ''")
"""Columns of ``entries`` and ``undo_entries`` added since format 1's first release (kept
versions): a data dir made before them gets them at start, empty."""
KEEP_REPLACED = """
PRAGMA recursive_triggers = ON;
CREATE TEMP TABLE undo_on (on_ INTEGER);
CREATE TEMP TRIGGER keep_replaced BEFORE DELETE ON main.entries
WHEN EXISTS (SELECT 1 FROM temp.undo_on) BEGIN
    INSERT OR IGNORE INTO undo_entries VALUES (old.share, old.path, old.version,
        old.mtime_ns, old.mode, old.blob, old.deleted_at, old.written_at, old.writer);
END;
"""
"""While an overlapped group commits (a row in ``undo_on``), each entry row it replaces or
deletes is kept in ``undo_entries`` first (the first one of a path: its row from before the
group). A trigger, so that a new path costs nothing: ``INSERT OR REPLACE`` deletes, and fires
it, only when the path had a row (with ``recursive_triggers``, as SQLite requires)."""
UNSYNCED = ("unsynced_segment", "unsynced_offset")
"""Meta keys: where the last group's records begin, if its segment fsync ran alongside its
commit (``undo_entries``, ``freeing`` and these undo that group if a crash tore them)."""
FORMAT = 1
SYNCHRONOUS = {"always": "FULL", "interval": "FULL", "never": "OFF"}
"""``interval`` commits only every 100 ms, but each commit is durable when it returns."""

BlobRow = tuple[int, str, bytes, int, int, int]
"""A blob's row: (id, share, digest, size, segment, offset)."""
Record = tuple[Any, ...]
"""A journal record (see ``fsserver.store.journal``)."""


@dataclass
class RolledBack:
    """What ``Catalog.roll_back`` did."""

    back: int
    """Paths given back the entry they had before the group."""
    gone: int
    """Paths the group had made, dropped."""
    again: list[int]
    """Blobs the group had freed that a path names again (to be loaded too)."""


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
            self._add_columns()
            self.db.executescript(KEEP_REPLACED)
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

    def _add_columns(self) -> None:
        for table in ("entries", "undo_entries"):
            have = {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}
            for column in ADDED_COLUMNS:
                if column.split()[0] not in have:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")

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

    def apply(self, records: Iterable[Record], placed: dict[int, Placed], lsn: int,
              unsynced: Placed | None = None) -> None:  # fmt: skip
        """One group of journal records, in one transaction; *placed*: where the group's new
        blobs were appended. Rows of a kind are written with one ``executemany`` each: the
        order that matters (a path's later version wins) is kept within the entries.

        *unsynced*: where the group's records begin, if the segment is synced while this
        commits (a crash may keep these rows and lose those records). Then the rows the group
        replaces are kept in ``undo_entries`` and the blobs it frees stay until the next group
        (``freeing``), so that ``roll_back`` can give the paths their earlier versions."""
        entries: list[tuple[Any, ...]] = []
        kept: list[tuple[Any, ...]] = []
        dropped: list[tuple[Any, ...]] = []
        blobs: list[tuple[Any, ...]] = []
        freed: list[int] = []
        gone: list[tuple[Any, ...]] = []
        seqs: dict[str, int] = {}
        segments: dict[int, list[int]] = {}
        for record in records:
            kind = record[0]
            if kind == "put" or kind == "del":
                _, share, path, version, mtime_ns, mode, last, *stamp = record
                if kind == "put":  # (stamp: written at, writer; not in tests' older records)
                    blob_id, at, (written, writer) = last, None, stamp or (None, "")
                else:  # (stamp: writer)
                    blob_id, at, written, writer = None, last, last, (stamp or [""])[0]
                entries.append((share, path, version, mtime_ns, mode, blob_id, at, written,
                                writer))  # fmt: skip
                seqs[share] = max(seqs.get(share, 0), version)
            elif kind == "keep":
                kept.append(record[1:])
            elif kind == "drop":
                dropped.append(record[1:])
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
            self._settle()
            if unsynced is not None:  # the rows this group replaces go to undo_entries
                db.execute("INSERT INTO undo_on VALUES (1)")
            self._forget_earlier_copies([row[0] for row in blobs if row[0] <= self.known_blobs])
            db.executemany("INSERT INTO blobs VALUES (?, ?, ?, ?, ?, ?)", blobs)
            db.executemany("INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           entries)  # fmt: skip
            db.executemany("INSERT OR REPLACE INTO versions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           kept)  # fmt: skip
            db.executemany("DELETE FROM versions WHERE share = ? AND path = ? AND version = ?",
                           dropped)  # fmt: skip
            db.executemany(
                "INSERT INTO shares (name, seq) VALUES (?, ?) ON CONFLICT (name) DO UPDATE "
                "SET seq = max(seq, excluded.seq)", seqs.items(),
            )  # fmt: skip
            db.executemany("DELETE FROM entries WHERE share = ? AND path = ? AND version = ?",
                           gone)  # fmt: skip
            db.executemany("UPDATE shares SET pruned = max(pruned, ?) WHERE name = ?",
                           [(version, share) for share, _, version in gone])  # fmt: skip
            if unsynced is None:
                for blob_id in freed:
                    self._free(blob_id)
            else:
                db.executemany("INSERT OR IGNORE INTO freeing VALUES (?)", [(b,) for b in freed])
            for segment, (live, total) in segments.items():
                self._segment_bytes(segment, live, total)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('lsn', ?)", (lsn,))
            self._mark_unsynced(unsynced)
            db.execute("DELETE FROM undo_on")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _settle(self) -> None:
        """The group before this one is durable (or undone): its deferred frees happen now,
        and its undo rows go."""
        freeing = [row[0] for row in self.db.execute("SELECT id FROM freeing")]
        for blob_id in freeing:
            self._free(blob_id)
        if freeing:
            self.db.execute("DELETE FROM freeing")
        self.db.execute("DELETE FROM undo_entries")

    def _mark_unsynced(self, unsynced: Placed | None) -> None:
        if unsynced is None:
            self.db.execute("DELETE FROM meta WHERE key IN (?, ?)", UNSYNCED)
        else:
            self.set_meta(**dict(zip(UNSYNCED, (unsynced.segment, unsynced.offset), strict=True)))

    def unsynced(self) -> Placed | None:
        """Where the records of the last group begin, if a crash may have torn them."""
        segment, offset = (self.meta(key) for key in UNSYNCED)
        return None if segment is None else Placed(int(segment), int(offset))

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
        ids = self._mark_ids(blob_ids)
        db = self.db
        db.execute("BEGIN")
        gone = db.execute("DELETE FROM entries WHERE blob IN (SELECT id FROM marked)").rowcount
        db.execute("DELETE FROM versions WHERE blob IN (SELECT id FROM marked)")
        for blob_id in ids:
            self._free(blob_id)
        db.execute("DELETE FROM freeing WHERE id IN (SELECT id FROM marked)")
        db.execute("COMMIT")
        return gone

    def roll_back(self, blob_ids: Iterable[int], lsn: int | None = None) -> RolledBack:
        """Undo what the last group did with *blob_ids* (its records that a crash tore, or
        whose fsync failed): each path that names one gets back the entry it had before the
        group (from ``undo_entries``; its blob was kept in ``freeing``), or goes if it had
        none; the blobs go. *lsn*: the applied LSN to go back to."""
        ids = self._mark_ids(blob_ids)
        db = self.db
        db.execute("BEGIN")
        try:
            keys = db.execute("SELECT share, path FROM entries "
                              "WHERE blob IN (SELECT id FROM marked)").fetchall()  # fmt: skip
            before = db.total_changes
            db.executemany("INSERT OR REPLACE INTO entries SELECT * FROM undo_entries "
                           "WHERE share = ? AND path = ?", keys)  # fmt: skip
            back = db.total_changes - before
            gone = db.execute("DELETE FROM entries WHERE blob IN (SELECT id FROM marked)").rowcount
            db.execute("DELETE FROM versions WHERE blob IN (SELECT id FROM marked)")
            named = [row[0] for key in keys for row in db.execute(
                "SELECT blob FROM entries WHERE share = ? AND path = ? AND blob IS NOT NULL",
                key)]  # fmt: skip
            freeing = "SELECT 1 FROM freeing WHERE id = ?"
            again = [b for b in named if db.execute(freeing, (b,)).fetchone()]
            db.executemany("DELETE FROM freeing WHERE id = ?", [(i,) for i in again])
            for blob_id in ids:
                self._free(blob_id)
            if lsn is not None:
                db.execute("INSERT OR REPLACE INTO meta VALUES ('lsn', ?)", (lsn,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return RolledBack(back, gone, again)

    def settled(self) -> None:
        """At start, once the data dir is loaded: the last group is whole on disk (or was
        rolled back), so nothing is to be undone any more."""
        self.db.execute("BEGIN")
        self._settle()
        self._mark_unsynced(None)
        self.db.execute("COMMIT")

    def _mark_ids(self, blob_ids: Iterable[int]) -> list[int]:
        """*blob_ids* into the temporary table ``marked`` (for one scan of the entries)."""
        ids = list(blob_ids)
        self.db.execute("CREATE TEMP TABLE IF NOT EXISTS marked (id INTEGER PRIMARY KEY)")
        self.db.execute("DELETE FROM marked")
        self.db.executemany("INSERT OR IGNORE INTO marked VALUES (?)", [(i,) for i in ids])
        return ids

    # -- reading -----------------------------------------------------------------------------

    def shares(self) -> list[tuple[str, int, int]]:
        return self.db.execute("SELECT name, seq, pruned FROM shares").fetchall()

    def blobs(self, only: Iterable[int] | None = None) -> list[BlobRow]:
        """(id, share, digest, size, segment, offset), in the order they lie on disk: of the
        live blobs (not those the last group freed), or of the blobs *only*."""
        where = "id NOT IN (SELECT id FROM freeing)"
        if only is not None:
            self._mark_ids(only)
            where = "id IN (SELECT id FROM marked)"
        return self.db.execute(
            "SELECT id, share, digest, size, segment, offset FROM blobs "
            f"WHERE {where} ORDER BY segment, offset"
        ).fetchall()

    def entries(self) -> Iterator[tuple[Any, ...]]:
        """(share, path, version, mtime_ns, mode, blob id or None, deleted at, written at,
        writer), streamed share by share, in path order."""
        return self.db.execute(
            "SELECT share, path, version, mtime_ns, mode, blob, deleted_at, written_at, writer "
            "FROM entries ORDER BY share, path"
        )

    def versions(self) -> Iterator[tuple[Any, ...]]:
        """Kept versions: (share, path, version, mtime_ns, mode, blob id, written at, writer,
        replaced at), oldest first."""
        return self.db.execute("SELECT * FROM versions ORDER BY replaced_at, version")

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
            self._mark_unsynced(None)  # (synced before: every record is durable now)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def drop_segment(self, segment: int) -> None:
        self.db.execute("DELETE FROM segments WHERE id = ?", (segment,))
