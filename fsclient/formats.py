"""What ``fsclient`` prints: listings (tab-separated for scripts, ``--json``, or ``-l`` for
people) and the one-line summary that ends a transfer of many files."""

from __future__ import annotations

import errno
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from common.errors import FSError
from common.messages import FileEntry
from fsclient.sync.folders import folder_of, is_mark

UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
LONG_HEADER = ("SIZE", "VERSION", "MODIFIED", "PATH")


def human_bytes(n: int) -> str:
    """``1536`` -> ``1.5 KiB``: three significant digits at most, binary units (as ``ls -lh``
    and rsync's ``-h`` would show them)."""
    value = float(n)
    for unit in UNITS:
        if value < 1024 or unit == UNITS[-1]:
            if unit == "B":
                return f"{n} B"
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def format_entry(entry: FileEntry, as_json: bool) -> str:
    """One line for scripts: tab-separated fields, or a JSON object (mtime in UTC)."""
    mtime = datetime.fromtimestamp(entry.mtime_ns / 1e9, UTC).isoformat(timespec="seconds")
    if as_json:
        return json.dumps(
            {
                "path": entry.path,
                "size": entry.size,
                "version": entry.version,
                "digest": entry.digest.hex(),
                "mtime": mtime,
                "mtime_ns": entry.mtime_ns,
                "mode": f"{entry.mode:o}",
            },
            ensure_ascii=False,
        )
    return f"{entry.path}\t{entry.size}\t{entry.version}\t{entry.digest.hex()}\t{mtime}"


@dataclass
class LongLayout:
    """``ls -l``: a header (none for no files), then aligned columns, sizes in human units
    and times in local time (for people; scripts read the tab-separated or JSON forms). The
    widths are fitted to the first page, so that a listing of any size streams."""

    size_w: int = len(LONG_HEADER[0])
    version_w: int = len(LONG_HEADER[1])
    started: bool = False

    def lines(self, page: list[FileEntry]) -> Iterator[str]:
        rows = [_long_row(e) for e in page]
        if not rows:
            return
        if not self.started:
            self.started = True
            self.size_w = max(self.size_w, len("1023.9 MiB"), *(len(r[0]) for r in rows))
            self.version_w = max(self.version_w, *(len(r[1]) for r in rows))
            rows.insert(0, LONG_HEADER)
        for size, version, mtime, path in rows:
            yield f"{size:>{self.size_w}}  {version:>{self.version_w}}  {mtime:<16}  {path}"


def _long_row(entry: FileEntry) -> tuple[str, str, str, str]:
    """An empty folder's mark (``FOLDER/.fsfolder``, see ``fsclient.sync.folders``) shows as
    the folder, ``FOLDER/``, with no size: people asked for a folder, not a zero-byte file."""
    mark = is_mark(entry.path)
    return ("-" if mark else human_bytes(entry.size), str(entry.version),
            datetime.fromtimestamp(entry.mtime_ns / 1e9).strftime("%Y-%m-%d %H:%M"),
            folder_of(entry.path) + "/" if mark else entry.path)  # fmt: skip


@dataclass
class Tally:
    """Files and bytes done and failed, for the summary line."""

    files: int = 0
    nbytes: int = 0
    failed: int = 0

    def summary(self, verb: str, seconds: float) -> str:
        """``uploaded 530 files, 12.3 MiB in 2.1 s (5.9 MiB/s)``, as rsync ends."""
        files = "1 file" if self.files == 1 else f"{self.files} files"
        rate = f" ({human_bytes(int(self.nbytes / seconds))}/s)" if seconds > 0 else ""
        line = f"{verb} {files}, {human_bytes(self.nbytes)} in {human_seconds(seconds)}{rate}"
        return line + (f"; {self.failed} failed" if self.failed else "")


def wire_note(before: tuple[int, ...], after: tuple[int, ...]) -> str:
    """``; 38.5 MiB on the wire (zstd, 14%)`` for what a command sent compressed (the
    ``FSConnection.data_traffic`` counts around it), or nothing if compression saved little."""
    payload, wire = after[2] - before[2], after[3] - before[3]
    if payload <= 0 or wire > payload * 0.9:
        return ""
    return f"; {human_bytes(wire)} on the wire (zstd, {wire / payload:.0%})"


def describe(exc: BaseException) -> str:
    """An error in words: ``no such file: x`` rather than ``[Errno 2] No such file or
    directory: 'x'``."""
    if isinstance(exc, FSError):
        return exc.message
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        if exc.errno == errno.ENOENT:
            return f"no such file: {exc.filename}"
        return f"{exc.strerror[0].lower()}{exc.strerror[1:]}: {exc.filename}"
    return str(exc)
