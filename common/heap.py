"""Garbage-collector settings shared by every FS process."""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000
"""Allocations between young collections (CPython's default is 700)."""


def tune_gc() -> None:
    """Call once start-up is done. What exists then (modules, classes, codec tables) lives as
    long as the process: it is frozen out of every collection. The big structures made later
    (a server's index, a client's view of its folder) hold no reference cycles and are freed by
    reference counting, so collections are made rarer: with CPython's defaults a server spent
    about 16 ms in the collector per 10,000 small files stored, growing with its index (the
    full collections walk all of it), and a client 18 ms per 10,000 files synced."""
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, 20, 100)
