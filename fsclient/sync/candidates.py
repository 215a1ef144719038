"""Which paths of a folder may need something: its walk merged with the state's rows.

Both come in the order of the paths' UTF-8 bytes (``Scanner.walk_sorted``, and SQLite's order
of the rows' primary key), so they are merged as two streams, a file at a time: neither side
is held whole, and a folder of a million files costs a survey no more memory than one of a
thousand. The result is a stream too, in the same order (``Comparison``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from fsclient.sync.ignore import MARK_SUFFIX, IgnoreRules
from fsclient.sync.plan import PERMISSIONS
from fsclient.sync.scan import EVERY_PATH, Scanner, Span, Stat
from fsclient.sync.state import DB_NAME, MARKER

Row = tuple[str, int, int, int, int, bytes, int]
"""A state row, in ``BaseEntry``'s field order (path, size, mtime_ns, mode, inode, digest,
version): plain tuples pickle several times faster than named ones."""
Candidate = tuple[str, Stat | None, Row | None]
"""A path that may need something: its stat if the folder holds it, its state row if any."""


@dataclass
class Ask:
    everything: bool = False
    """Every path is a candidate (the server's store is new: each file is sent again)."""
    named: list[str] = field(default_factory=list)
    """Paths the server changed: each is a candidate, whatever its stat."""


@dataclass
class Survey:
    candidates: list[Candidate]
    """In path order."""
    rows: int
    """Entries in the state."""
    stale: list[str] = field(default_factory=list)
    """Temp files of downloads that never finished (``Scanner.leftover``)."""
    warnings: list[tuple[str, str]] = field(default_factory=list)
    """(path, why) of what the walk skipped, for the client to log once."""


class NotingScanner(Scanner):
    """A scanner that keeps its warnings for the client to log (it logs each one once), and
    the temp files it meets, for the client to remove."""

    def __init__(self, folder: Path, rules: IgnoreRules) -> None:
        super().__init__(folder, rules)
        self.notes: list[tuple[str, str]] = []
        self.stale: list[str] = []

    def warn(self, path: str, why: str) -> None:
        self.notes.append((path, why))

    def leftover(self, path: str) -> None:
        self.stale.append(path)


def _joined(walk: Iterator[tuple[str, Stat]], rows: Iterator[Row]
            ) -> Iterator[tuple[str, Stat | None, Row | None]]:  # fmt: skip
    """Both sorted streams, a path at a time: (path, its stat or None, its row or None)."""
    w, r = next(walk, None), next(rows, None)
    while w is not None or r is not None:
        if r is None or (w is not None and w[0] < r[0]):
            yield w[0], w[1], None  # type: ignore[index]
            w = next(walk, None)
        elif w is None or r[0] < w[0]:
            yield r[0], None, r
            r = next(rows, None)
        else:
            yield w[0], w[1], r
            w, r = next(walk, None), next(rows, None)


class Comparison:
    """The candidates, in path order: files new, changed (size, mtime, inode, permissions) or
    gone since their row, rows without a known version, and the paths *ask* names; ``rows``
    counts the rows read so far. The walk yields marks only of empty folders: a mark's row
    that it did not meet is looked at with *stat_mark* (its folder may hold files now)."""

    def __init__(self, walk: Iterator[tuple[str, Stat]], rows: Iterator[Row], ask: Ask,
                 stat_mark: Callable[[str], Stat | None] = lambda mark: None) -> None:  # fmt: skip
        self.walk = walk
        self.state = rows
        self.ask = ask
        self.stat_mark = stat_mark
        self.rows = 0

    def __iter__(self) -> Iterator[Candidate]:
        everything = self.ask.everything
        named = sorted(set(self.ask.named))
        at = 0
        for path, st, row in _joined(self.walk, self.state):
            while at < len(named) and named[at] < path:
                yield named[at], None, None  # neither here nor in the state
                at += 1
            asked = at < len(named) and named[at] == path
            at += asked
            if row is None:
                yield path, st, None  # a new file
                continue
            self.rows += 1
            if st is None and path.endswith(MARK_SUFFIX):
                st = self.stat_mark(path)
            if (asked or st is None or everything or not row[6] or st[0] != row[1]
                    or st[1] != row[2] or st[2] != row[4]
                    or (st[3] ^ row[3]) & PERMISSIONS):  # fmt: skip
                yield path, st, row
        for path in named[at:]:
            yield path, None, None


class StateRows:
    """The state's rows of a span, in path order, from a read-only connection of its own
    (opened when they are first read: the session has written what it had to by then)."""

    def __init__(self, folder: Path, span: Span = EVERY_PATH) -> None:
        self.uri = (folder / MARKER / DB_NAME).resolve().as_uri() + "?mode=ro"
        self.span = span

    def __iter__(self) -> Iterator[Row]:
        db = sqlite3.connect(self.uri, uri=True)
        try:
            yield from db.execute(
                "SELECT * FROM files WHERE path >= ? AND (? IS NULL OR path < ?) ORDER BY path",
                (self.span.low, self.span.high, self.span.high),
            )
        finally:
            db.close()


def comparison(folder: Path, scanner: Scanner, ask: Ask, span: Span = EVERY_PATH,
               walk: Iterator[tuple[str, Stat]] | None = None) -> Comparison:  # fmt: skip
    """The comparison of the span's walk (*walk*, if it has begun) with its rows (the paths
    *ask* names: those in the span)."""
    named = [path for path in ask.named if span.holds(path)]
    return Comparison(walk or scanner.walk_sorted(span), iter(StateRows(folder, span)),
                      Ask(ask.everything, named), scanner.stat)  # fmt: skip


def ending(scanner: NotingScanner, rows: int, span: Span = EVERY_PATH) -> Survey:
    """What a span's survey tells besides its candidates, once they are all out. A folder
    the span's ends cut through is read by two processes: each tells its own paths only. A
    note may be of a folder F, which the span holding "F/" reads (a note told twice is
    logged once)."""
    stale = [path for path in scanner.stale if span.holds(path)]
    notes = [n for n in scanner.notes if span.holds(n[0]) or span.holds(n[0] + "/")]
    return Survey([], rows, stale, notes)


def look_here(folder: Path, ask: Ask) -> Survey:
    """The whole survey, in this process."""
    scanner = NotingScanner(folder, IgnoreRules.load(folder))
    found = comparison(folder, scanner, ask)
    candidates = list(found)
    end = ending(scanner, found.rows)
    end.candidates = candidates
    return end
