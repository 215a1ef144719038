"""The files of a sync's upload (``UploadList``, held as columns), and the sequences that
``send_marks`` and ``put_many`` read them through, which make each item when it is read. A list
of ``(LocalFile, expected version)`` pairs held about 300 bytes a file for the whole upload,
300 MB for a million; a list of ``put_many``'s items about 190 more."""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator, Sequence
from typing import overload

from fsclient.batch import Item, ItemSequence
from fsclient.sync.plan import LocalFile


class UploadList:
    """Files to upload, each with the server version it was decided against: its path, and
    its numbers in arrays (about 120 bytes a file). A digest is kept only if the scan read
    the file (a changed one); a new file's upload reads and hashes it."""

    def __init__(self, files: Iterable[tuple[LocalFile, int]] = ()) -> None:
        self.paths: list[str] = []
        self.mtimes = array("q")
        self.numbers = array("Q")
        """size, mode, inode, expected version: four per file."""
        self.digests: dict[int, bytes] = {}
        self.bytes = 0
        for f, expected in files:
            self.append(f, expected)

    def append(self, f: LocalFile, expected: int) -> None:
        if f.digest:
            self.digests[len(self.paths)] = f.digest
        self.paths.append(f.path)
        self.mtimes.append(f.mtime_ns)
        self.numbers.extend((f.size, f.mode, f.inode, expected))
        self.bytes += f.size

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[tuple[LocalFile, int]]:
        return ((self.local(at), self.expected(at)) for at in range(len(self)))

    def local(self, at: int) -> LocalFile:
        size, mode, inode, _ = self.numbers[4 * at : 4 * at + 4]
        return LocalFile(self.paths[at], size, self.mtimes[at], mode, inode,
                         self.digests.get(at, b""))  # fmt: skip

    def expected(self, at: int) -> int:
        return self.numbers[4 * at + 3]

    def known(self, at: int) -> tuple[int, int, bytes] | None:
        """(size, mtime_ns, digest) if the scan read the file, else None."""
        digest = self.digests.get(at)
        return (self.numbers[4 * at], self.mtimes[at], digest) if digest else None


class Paths(Sequence[tuple[str, int]]):
    """(path, expected version) of each of *files*, for ``send_marks``, made when read."""

    def __init__(self, files: UploadList) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return zip(self.files.paths, self.files.numbers[3::4], strict=True)

    @overload
    def __getitem__(self, at: int) -> tuple[str, int]: ...
    @overload
    def __getitem__(self, at: slice) -> list[tuple[str, int]]: ...
    def __getitem__(self, at: int | slice) -> tuple[str, int] | list[tuple[str, int]]:
        if isinstance(at, slice):
            return [self[i] for i in range(*at.indices(len(self)))]
        return self.files.paths[at], self.files.expected(at)


class UploadItems(ItemSequence):
    """``put_many``'s items for *files* (those at *indexes*), each made when it is read: a
    list of them would hold a tuple and an absolute path per file for the whole upload."""

    def __init__(self, top: str, files: UploadList, indexes: Sequence[int]
                 ) -> None:  # fmt: skip
        self.top = top
        self.files = files
        self.indexes = indexes

    def __len__(self) -> int:
        return len(self.indexes)

    @overload
    def __getitem__(self, at: int) -> Item: ...
    @overload
    def __getitem__(self, at: slice) -> list[Item]: ...
    def __getitem__(self, at: int | slice) -> Item | list[Item]:
        if isinstance(at, slice):
            return [self[i] for i in range(*at.indices(len(self)))]
        files, index = self.files, self.indexes[at]
        path = files.paths[index]
        return (self.top + path, path, files.expected(index), files.known(index))
