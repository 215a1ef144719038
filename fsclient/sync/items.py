"""The files of a sync's upload as ``send_marks`` and ``put_many`` read them: sequences that
make each item when it is read, over the reconcile's list of ``(LocalFile, expected version)``.
A list of items would hold a tuple and an absolute path per file for the whole upload: about
190 bytes a file, 190 MB for a million."""

from __future__ import annotations

from collections.abc import Sequence
from typing import overload

from fsclient.batch import Item, ItemSequence
from fsclient.sync.plan import LocalFile

Files = list[tuple[LocalFile, int]]


class Paths(Sequence[tuple[str, int]]):
    """(path, expected version) of each of *files*, for ``send_marks``, made when read."""

    def __init__(self, files: Files) -> None:
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    @overload
    def __getitem__(self, at: int) -> tuple[str, int]: ...
    @overload
    def __getitem__(self, at: slice) -> list[tuple[str, int]]: ...
    def __getitem__(self, at: int | slice) -> tuple[str, int] | list[tuple[str, int]]:
        if isinstance(at, slice):
            return [self[i] for i in range(*at.indices(len(self)))]
        f, expected = self.files[at]
        return f.path, expected


class UploadItems(ItemSequence):
    """``put_many``'s items for *files* (those at *indexes*), each made when it is read: a
    list of them would hold a tuple and an absolute path per file for the whole upload."""

    def __init__(self, top: str, files: Files, indexes: Sequence[int]
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
        f, expected = self.files[self.indexes[at]]
        known = (f.size, f.mtime_ns, f.digest) if f.digest else None
        return (self.top + f.path, f.path, expected, known)
