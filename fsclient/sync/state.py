"""``StateDB``: what this folder and the server last agreed on, in ``DIR/.fsync/state.sqlite``.

One row per path is the *base* of the three-way reconcile: the file as it was on disk (size,
mtime, inode) when it matched the server's version (digest, version). A later scan compares the
disk with it (stat first; hash only what changed), and a server change with its version.
The ``.fsync`` folder is also the folder's marker: a folder without it is not a synced folder
(an unmounted disk, a deleted folder), and the client refuses to treat it as one.

Durability: WAL with ``synchronous=NORMAL``. A commit survives a kill -9 of the client (it is
in the WAL file once COMMIT returns); a power cut may lose the last commits, and only a suffix
of them (WAL frames carry chained checksums: recovery stops at the first bad one), never
corrupt the DB. That is enough, because every row states something already on the disk for
good (``fsclient.durable``) or acknowledged by the server, and ``last_seq`` is written after
the rows of the changes below it: a lost suffix makes the next start read those changes again
and find them applied (RECORD), never a file or a delete the disk does not have. ``FULL``
would fsync the WAL at every commit, one per downloaded file on the event loop: +25% on a
download of 10,000 small files, for nothing more that is kept (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from fsclient.localfiles import DB_NAME, MARKER

__all__ = ["DB_NAME", "MARKER", "BaseEntry", "StateDB"]


class BaseEntry(NamedTuple):
    """(A named tuple: a folder's whole state is loaded at every start, and tuples are built
    several times faster than frozen dataclasses.)"""

    path: str
    size: int
    mtime_ns: int
    mode: int
    inode: int
    digest: bytes
    version: int
    """The server version this content had; 0 if the server may not hold it (after a reset)."""


_DIGEST_INDEX = "CREATE INDEX IF NOT EXISTS files_digest ON files (digest)"
"""Finds a file by its content (``with_digest``: a rename on the server is a local copy)."""
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, mode INTEGER, inode INTEGER,
    digest BLOB, version INTEGER
) WITHOUT ROWID;
{_DIGEST_INDEX};
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS failures (path TEXT PRIMARY KEY, why TEXT, since REAL) WITHOUT ROWID;
"""


class StateDB:
    def __init__(self, folder: Path, create: bool = False) -> None:
        self.marker = folder / MARKER
        if create:
            self.marker.mkdir(exist_ok=True)
        self.db = sqlite3.connect(self.marker / DB_NAME, isolation_level=None)
        self.db.executescript("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;" + _SCHEMA)
        if create:  # the marker and the DB's files keep their names through a power cut
            from fsclient.durable import fsync_path  # (asyncio: not for the folder survey)

            fsync_path(self.marker)
            fsync_path(folder)

    @classmethod
    def exists(cls, folder: Path) -> bool:
        return (folder / MARKER / DB_NAME).is_file()

    def close(self) -> None:
        self.db.close()

    # -- files -------------------------------------------------------------------------------

    def get(self, path: str) -> BaseEntry | None:
        row = self.db.execute("SELECT * FROM files WHERE path = ?", (path,)).fetchone()
        return BaseEntry(*row) if row else None

    def put(self, entries: Iterable[BaseEntry]) -> None:
        with self.transaction():
            # a BaseEntry is a tuple in column order
            self.db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                                entries)  # fmt: skip

    def remove(self, paths: Iterable[str]) -> None:
        with self.transaction():
            self.db.executemany("DELETE FROM files WHERE path = ?", ((p,) for p in paths))

    def all(self) -> Iterator[BaseEntry]:
        """Every entry in path order, streamed (a folder may hold many)."""
        make = BaseEntry._make
        for row in self.db.execute("SELECT * FROM files ORDER BY path"):
            yield make(row)

    def paths_containing(self, text: str) -> list[str]:
        """The paths with *text* in them (a scan in SQLite: no row becomes an object)."""
        rows = self.db.execute("SELECT path FROM files WHERE instr(path, ?) > 0", (text,))
        return [path for (path,) in rows]

    def empty(self) -> bool:
        return self.db.execute("SELECT 1 FROM files LIMIT 1").fetchone() is None

    def under(self, folder: str) -> list[BaseEntry]:
        """Entries inside a folder (for a folder that was moved or deleted as a whole)."""
        low, high = folder + "/", folder + "0"  # '0' sorts right after '/'
        rows = self.db.execute("SELECT * FROM files WHERE path >= ? AND path < ?", (low, high))
        return [BaseEntry(*row) for row in rows]

    @contextlib.contextmanager
    def bulk(self) -> Iterator[None]:
        """Many rows are about to be written (an initial sync): the digest index is dropped
        meanwhile and made again at the end, in one sort. Kept up row by row, its random keys
        dirty pages all over it at every commit: 0.45 s of 0.77 s for 100,000 rows here, and
        worse the bigger it gets, against about 0.03 s to build it at the end. Nothing looks a
        digest up meanwhile (downloads come after the uploads); a client killed before the end
        has it made again when the DB is next opened (``_SCHEMA``)."""
        self.db.execute("DROP INDEX IF EXISTS files_digest")
        try:
            yield
        finally:
            self.db.execute(_DIGEST_INDEX)

    def with_digest(self, digest: bytes, limit: int = 8) -> list[BaseEntry]:
        """Up to *limit* files with this content: a few candidates to copy from, never every
        one of a million empty files (which made a sync of them quadratic)."""
        rows = self.db.execute("SELECT * FROM files WHERE digest = ? LIMIT ?", (digest, limit))
        return [BaseEntry(*row) for row in rows]

    def forget_versions(self) -> None:
        """The server's store was replaced: keep what the files were, not what it held."""
        self.db.execute("UPDATE files SET version = 0")

    def transaction(self) -> _Transaction:
        return _Transaction(self.db)

    # -- settings ----------------------------------------------------------------------------

    def meta(self, key: str, default: str = "") -> str:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, **values: str | int) -> None:
        with self.transaction():
            self.db.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                ((key, str(value)) for key, value in values.items()),
            )

    def unset_meta(self, *keys: str) -> None:
        with self.transaction():
            self.db.executemany("DELETE FROM meta WHERE key = ?", ((key,) for key in keys))

    # -- why changes are pending (written by ``report.Tally``, read by ``fsclient status``) --

    def set_failure(self, path: str, why: str) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO failures VALUES (?, ?, ?)", (path, why, time.time())
        )

    def clear_failure(self, path: str) -> None:
        self.db.execute("DELETE FROM failures WHERE path = ?", (path,))

    def failures(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT path, why FROM failures ORDER BY path"))

    def mark_synced(self, seq: int) -> None:
        self.set_meta(last_seq=seq, last_sync=f"{time.time():.3f}")


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.outer = False

    def __enter__(self) -> None:
        self.outer = not self.db.in_transaction
        if self.outer:
            self.db.execute("BEGIN")

    def __exit__(self, et: object, e: object, tb: object) -> None:
        if self.outer:
            self.db.execute("COMMIT" if et is None else "ROLLBACK")


def folder_is_synced(folder: Path) -> bool:
    """The folder is there and still carries its marker (see module docstring)."""
    try:
        return os.path.isdir(folder) and StateDB.exists(folder)
    except OSError:
        return False
