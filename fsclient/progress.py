"""``TerminalProgress``: a progress bar on stderr for a long transfer, and nothing otherwise.

The bar appears only when stderr is a terminal and the transfer is big enough to be worth one;
tqdm is imported only then, so scripts and short commands do not pay for it.
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any

MIN_BYTES = 8 * 1024 * 1024


class TerminalProgress:
    def __init__(self, label: str, stream: Any = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            if not self.enabled or total < MIN_BYTES:
                return
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, desc=self.label, unit="B", unit_scale=True, unit_divisor=1024,
                file=self.stream, leave=False, dynamic_ncols=True,
            )  # fmt: skip
        self.bar.update(done - self.bar.n)

    def __enter__(self) -> TerminalProgress:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        if self.bar is not None:
            self.bar.close()


class SyncProgress:
    """Files and bytes of an initial sync (or of a tree put, get or rm: *label*), on stderr
    when it is a terminal (else nothing). Told of every file, it redraws at most every
    ``REDRAW`` seconds (a bar's text per file cost more than the rest of a 4 KiB upload)."""

    REDRAW = 0.1

    def __init__(self, files: int, nbytes: int, stream: Any = None, label: str = "sync") -> None:
        stream = stream or sys.stderr
        self.bar: Any = None
        if files and bool(getattr(stream, "isatty", lambda: False)()):
            from tqdm import tqdm

            self.bar = tqdm(total=files, desc=label, unit="file", file=stream, leave=False,
                            dynamic_ncols=True)  # fmt: skip
            self.total_bytes = nbytes
            self.done_bytes = 0
            self.files = 0
            """Files done since the bar was last drawn."""
            self.next_draw = 0.0

    def advance(self, files: int, nbytes: int) -> None:
        if self.bar is not None:
            self.done_bytes += nbytes
            self.files += files
            if time.monotonic() >= self.next_draw:
                self.draw()

    def draw(self) -> None:
        self.bar.set_postfix_str(f"{self.done_bytes >> 20}/{self.total_bytes >> 20} MiB",
                                 refresh=False)  # fmt: skip
        self.bar.update(self.files)
        self.files = 0
        self.next_draw = time.monotonic() + self.REDRAW

    def close(self) -> None:
        if self.bar is not None:
            if self.files:
                self.draw()
            self.bar.close()
