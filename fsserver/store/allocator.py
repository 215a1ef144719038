"""``ExtentAllocator``: best-fit allocation of byte ranges in the blob arena.

Pure bookkeeping, no memory is touched. Free extents are kept twice, by offset (to coalesce
neighbours on free) and by size (to find the best fit), both in sorted containers, so every
operation is O(log n) in the number of free extents.
"""

from __future__ import annotations

from sortedcontainers import SortedDict, SortedList

from common.errors import StoreFull

ALIGN = 64
"""Extents start on cache-line boundaries; sizes round up to it."""


def aligned(size: int) -> int:
    return (size + ALIGN - 1) // ALIGN * ALIGN


class ExtentAllocator:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity - capacity % ALIGN
        self._by_offset: SortedDict = SortedDict()
        self._by_size: SortedList = SortedList()
        self.free_bytes = 0
        if self.capacity:
            self._add(0, self.capacity)

    @property
    def used_bytes(self) -> int:
        return self.capacity - self.free_bytes

    @property
    def largest_free(self) -> int:
        return self._by_size[-1][0] if self._by_size else 0

    def allocate(self, size: int) -> int:
        """Offset of a new extent of *size* bytes (rounded up); StoreFull if none fits."""
        if size == 0:
            return 0
        need = aligned(size)
        index = self._by_size.bisect_left((need, -1))
        if index == len(self._by_size):
            raise StoreFull(
                f"no space for {size} bytes: {self.free_bytes} free, largest free extent "
                f"{self.largest_free} bytes"
            )
        free_size, offset = self._by_size[index]
        self._remove(offset, free_size)
        if free_size > need:
            self._add(offset + need, free_size - need)
        return offset

    def free(self, offset: int, size: int) -> None:
        """Return an extent; it merges with free neighbours."""
        if size == 0:
            return
        length = aligned(size)
        if offset < 0 or offset + length > self.capacity:
            raise ValueError(f"extent {offset}+{length} outside the arena")
        index = self._by_offset.bisect_right(offset)
        prev = self._by_offset.peekitem(index - 1) if index else None
        nxt = self._by_offset.peekitem(index) if index < len(self._by_offset) else None
        if (prev and prev[0] + prev[1] > offset) or (nxt and offset + length > nxt[0]):
            raise ValueError(f"extent at {offset} overlaps a free extent (double free?)")
        if prev and prev[0] + prev[1] == offset:
            self._remove(*prev)
            offset, length = prev[0], prev[1] + length
        if nxt and offset + length == nxt[0]:
            self._remove(*nxt)
            length += nxt[1]
        self._add(offset, length)

    def _add(self, offset: int, length: int) -> None:
        self._by_offset[offset] = length
        self._by_size.add((length, offset))
        self.free_bytes += length

    def _remove(self, offset: int, length: int) -> None:
        del self._by_offset[offset]
        self._by_size.remove((length, offset))
        self.free_bytes -= length
