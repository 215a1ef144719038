"""``VersionLog``: each path's latest version in version order, for "what changed since N".

A sorted dict of version -> path cost a hash-table slot, a sorted-list slot and an int object
per file (about 80 bytes). Versions only grow, so this log appends instead: chunks of up to
``CHUNK`` versions, each an array of versions and a list of paths (16 bytes a file). A path's
older version becomes a hole; a chunk more than half holes is compacted, and merged with the
next one when both fit in one chunk, so every call costs at most one chunk's work, never the
share's size.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Sequence

CHUNK = 1024


class _Chunk:
    __slots__ = ("holes", "paths", "versions")

    def __init__(self, versions: array[int], paths: list[str | None]) -> None:
        self.versions = versions
        self.paths = paths
        self.holes = 0

    def live(self) -> Iterator[tuple[int, str]]:
        return ((v, p) for v, p in zip(self.versions, self.paths, strict=True) if p is not None)


class VersionLog:
    __slots__ = ("_chunks", "_firsts", "_live")

    def __init__(self, items: Sequence[tuple[int, str]] = ()) -> None:
        """*items*: (version, path) in version order (a restart's rebuild, chunk by chunk)."""
        self._chunks = [
            _Chunk(array("Q", [v for v, _ in items[at : at + CHUNK]]),
                   [p for _, p in items[at : at + CHUNK]])
            for at in range(0, len(items), CHUNK)
        ]  # fmt: skip
        self._firsts = [chunk.versions[0] for chunk in self._chunks]
        self._live = len(items)

    def __len__(self) -> int:
        return self._live

    @property
    def last(self) -> int:
        """The newest version held (0: none)."""
        for chunk in reversed(self._chunks):
            for version, path in zip(reversed(chunk.versions), reversed(chunk.paths), strict=True):
                if path is not None:
                    return version
        return 0

    def add(self, version: int, path: str) -> None:
        """*version* is newer than every one held."""
        chunks = self._chunks
        if not chunks or len(chunks[-1].paths) >= CHUNK:
            chunks.append(_Chunk(array("Q"), []))
            self._firsts.append(version)
        last = chunks[-1]
        last.versions.append(version)
        last.paths.append(path)
        self._live += 1

    def remove(self, version: int) -> None:
        """Forget *version* (its path has a newer one, or is gone)."""
        at = bisect_right(self._firsts, version) - 1
        chunk = self._chunks[at] if at >= 0 else None
        spot = bisect_left(chunk.versions, version) if chunk else 0
        if chunk is None or spot == len(chunk.versions) or chunk.versions[spot] != version:
            raise KeyError(version)
        if chunk.paths[spot] is None:
            raise KeyError(version)
        chunk.paths[spot] = None
        chunk.holes += 1
        self._live -= 1
        if chunk.holes * 2 > len(chunk.paths):
            self._compact(at)

    def since(self, version: int) -> Iterator[tuple[int, str]]:
        """(version, path) of every version after *version*, oldest first."""
        at = max(bisect_right(self._firsts, version) - 1, 0)
        for chunk in self._chunks[at:]:
            start = bisect_right(chunk.versions, version)
            for spot in range(start, len(chunk.paths)):
                path = chunk.paths[spot]
                if path is not None:
                    yield chunk.versions[spot], path

    def _compact(self, at: int) -> None:
        """Chunk *at* without its holes, and the next one too if both fit in one."""
        live = list(self._chunks[at].live())
        merge = at + 1 < len(self._chunks)
        if merge:
            following = self._chunks[at + 1]
            merge = len(live) + len(following.paths) - following.holes <= CHUNK
            if merge:
                live += following.live()
                del self._chunks[at + 1], self._firsts[at + 1]
        if not live:
            del self._chunks[at], self._firsts[at]
            return
        self._chunks[at] = _Chunk(array("Q", (v for v, _ in live)), [p for _, p in live])
        self._firsts[at] = live[0][0]
