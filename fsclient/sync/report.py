"""``Tally``: what a sync did, told as it happens and summed up at the end.

How much is told is the user's choice (``Verbosity``): ``-q`` only errors (they are logged by
whoever meets them), the default one line per batch of changes (a session's first pass, then
each time the live queue runs dry), ``-v`` one line per file as well. A path that failed is
remembered with its reason until it succeeds, here and in the state DB (``StateDB.failures``),
where ``fsclient status`` reads why a change is still pending.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from fsclient.sync.state import StateDB

UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


class Verbosity(IntEnum):
    QUIET = 0
    NORMAL = 1
    VERBOSE = 2


def human_size(size: int) -> str:
    """``3 bytes``, ``1 byte``, ``1.5 KiB``, ``12 MiB``: what a person reads at a glance."""
    if size < 1024:
        return f"{size} byte" + ("" if size == 1 else "s")
    value = float(size)
    for unit in UNITS:
        value /= 1024
        if value < 1024 or unit == UNITS[-1]:
            return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"
    raise AssertionError("unreachable")


def count(n: int, word: str) -> str:
    """``1 conflict``, ``2 conflicts``."""
    return f"{n} {word}" + ("" if n == 1 else "s")


@dataclass
class Counts:
    uploaded: int = 0
    downloaded: int = 0
    deleted: int = 0
    conflicts: int = 0
    bytes_up: int = 0
    bytes_down: int = 0

    def __bool__(self) -> bool:
        return any((self.uploaded, self.downloaded, self.deleted, self.conflicts))

    def batch_line(self) -> str:
        """Only what happened: ``uploaded 2 files (3 bytes), 1 conflict``."""
        parts = []
        if self.uploaded:
            parts.append(f"uploaded {count(self.uploaded, 'file')} "
                         f"({human_size(self.bytes_up)})")  # fmt: skip
        if self.downloaded:
            parts.append(f"downloaded {count(self.downloaded, 'file')} "
                         f"({human_size(self.bytes_down)})")  # fmt: skip
        if self.deleted:
            parts.append(f"deleted {count(self.deleted, 'file')}")
        if self.conflicts:
            parts.append(count(self.conflicts, "conflict"))
        return ", ".join(parts)


@dataclass
class Tally:
    verbosity: Verbosity = Verbosity.NORMAL
    db: StateDB | None = None
    """Where failures are kept for ``fsclient status`` (None: in memory only, for tests)."""
    say: Callable[[str], None] = field(default=lambda line: print(line, flush=True))
    total: Counts = field(default_factory=Counts)
    batch: Counts = field(default_factory=Counts)
    failed: dict[str, str] = field(default_factory=dict)
    """Path -> why it failed last; a path settled later (or ignored since) is taken off."""

    def uploaded(self, path: str, size: int) -> None:
        for counts in (self.total, self.batch):
            counts.uploaded += 1
            counts.bytes_up += size
        if self.verbosity >= Verbosity.VERBOSE:  # (called per file: no line made for nothing)
            self.say(f"uploaded {path} ({human_size(size)})")

    def downloaded(self, path: str, size: int, line: str = "") -> None:
        for counts in (self.total, self.batch):
            counts.downloaded += 1
            counts.bytes_down += size
        self._file(line or f"downloaded {path} ({human_size(size)})")

    def deleted(self, path: str, where: str) -> None:
        for counts in (self.total, self.batch):
            counts.deleted += 1
        self._file(f"deleted {path} {where}")

    def conflict(self, path: str, copy: str) -> None:
        for counts in (self.total, self.batch):
            counts.conflicts += 1
        if self.verbosity >= Verbosity.NORMAL:  # worth a line of its own: a copy appeared
            self.say(f"conflict on {path}: the local version is kept as {copy}")

    def fail(self, path: str, why: str) -> None:
        self.failed[path] = why
        if self.db is not None:
            self.db.set_failure(path, why)

    def ok(self, path: str) -> None:
        """*path* is settled (or not to be synced any more): no failure of it stands. (Called
        once per file synced: with no failure at all, it returns at the first test.)"""
        if self.failed and self.failed.pop(path, None) is not None and self.db is not None:
            self.db.clear_failure(path)

    def end_batch(self) -> None:
        """A batch of changes is over: its line (by default; -v told each file already)."""
        if self.batch and self.verbosity is Verbosity.NORMAL:
            self.say(self.batch.batch_line())
        self.batch = Counts()

    def line(self) -> str:
        """The summary at exit; every count, so that scripts find them."""
        t = self.total
        size = human_size(t.bytes_up + t.bytes_down)
        conflicts = count(t.conflicts, "conflict")
        return (f"{t.uploaded} uploaded, {t.downloaded} downloaded, {t.deleted} deleted, "
                f"{conflicts}, {len(self.failed)} failed ({size})")  # fmt: skip

    def _file(self, line: str) -> None:
        if self.verbosity >= Verbosity.VERBOSE:
            self.say(line)
