"""``Staging``: one worker's own area of the arena, where a small-file batch waits while a
hasher verifies it, until the store copies it into place (``Store.store_many``).

The area lies after the store's capacity, one per worker slot, so it needs no store call to
take or give back, and a worker that dies leaves nothing behind in the store: its replacement
starts with the same, empty area. Space is handed out first come, first served, so that the
batches of a connection, which must be stored in the order they arrived, never wait for each
other's space.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from common.errors import StoreFull
from common.limits import MAX_BATCH_PACKET, MAX_BATCHES_IN_FLIGHT
from fsserver.store.allocator import ExtentAllocator, aligned

STAGING_BYTES = MAX_BATCHES_IN_FLIGHT * MAX_BATCH_PACKET
"""A worker's staging area: one connection's whole window of batches (2 MiB). Batches beyond
it wait for space; they hold no more than the packets they arrived in."""


def staging_base(store_size: int, worker: int) -> int:
    """Where worker slot *worker*'s staging area starts in the arena."""
    return aligned(store_size) + worker * STAGING_BYTES


def arena_size(store_size: int, workers: int) -> int:
    """The arena: the store's capacity, then one staging area per worker slot."""
    return staging_base(store_size, workers)


class Staging:
    def __init__(self, base: int, size: int = STAGING_BYTES) -> None:
        self.base = base
        self.room = ExtentAllocator(size)
        self.waiting: deque[tuple[int, Callable[[int], None]]] = deque()

    def take(self, size: int, then: Callable[[int], None]) -> None:
        """Call ``then(offset)`` once *size* bytes (at most the area) are set aside."""
        if size > self.room.capacity:
            raise ValueError(f"{size} bytes do not fit a staging area of {self.room.capacity}")
        offset = None if self.waiting else self._try(size)
        if offset is None:
            self.waiting.append((size, then))
        else:
            then(offset)

    def give(self, offset: int, size: int) -> None:
        """Bytes set aside by ``take`` are free again: the batches waiting go on, in order."""
        self.room.free(offset - self.base, size)
        while self.waiting:
            offset = self._try(self.waiting[0][0])
            if offset is None:
                return
            then = self.waiting.popleft()[1]
            then(offset)

    def _try(self, size: int) -> int | None:
        try:
            return self.base + self.room.allocate(size)
        except StoreFull:
            return None
