"""Empty folders, as the server holds them: a zero-byte file ``FOLDER/.fsfolder`` (``MARK``).

The server keeps files only, so a folder with no file in it never reached another client.
The sync client shows such a folder to the reconcile as a *virtual* file, its mark: the scanner
yields the mark of each folder it finds empty (the mark is never on the disk, and a real file
of that name is skipped), an upload of it sends zero bytes, a download of it makes the folder,
and a delete of it removes the folder if it is empty.

A mark means "this folder exists". It is made only for a folder that is empty when its mark
is settled (``Scanner.local``; a download's temp file counts as content, so a folder made for a
download is not marked), but it stays while the folder fills up (its stat is the folder's,
whatever is in it), and goes when the folder goes: so a client that saw the folder empty and
one that saw it full never disagree about it, and a remote delete that empties a folder does
not prune a folder whose mark is known.

Its stat is ``(0, 0, folder's inode, MARK_MODE)``: no mtime, because a folder's mtime moves
with every file in it, which changes nothing about the mark.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from common.errors import FSError

if TYPE_CHECKING:  # (the ignore rules import this module: it stays light)
    from common import messages as m
    from fsclient.client import Client

MARK = ".fsfolder"
MARK_MODE = 0o644

Stat = tuple[int, int, int, int]
Settled = Callable[[int, "m.FileEntry | FSError | OSError"], None]


def is_mark(path: str) -> bool:
    return path.endswith("/" + MARK)


def mark_of(folder: str) -> str:
    return f"{folder}/{MARK}"


def folder_of(mark: str) -> str:
    return mark[: -len(MARK) - 1]


def parents(paths: Iterable[str]) -> set[str]:
    """Every folder that holds one of *paths*, at any depth."""
    found: set[str] = set()
    for path in paths:
        folder = path.rpartition("/")[0]
        while folder and folder not in found:
            found.add(folder)
            folder = folder.rpartition("/")[0]
    return found


def mark_stat(root: str, mark: str) -> Stat | None:
    """The mark's stat if its folder is there (a folder, not a link to one), else None."""
    try:
        st = os.lstat(os.path.join(root, folder_of(mark)))
    except (FileNotFoundError, NotADirectoryError):
        return None
    return (0, 0, st.st_ino, MARK_MODE) if stat.S_ISDIR(st.st_mode) else None


async def send_marks(client: Client, files: Sequence[tuple[str, int]], settled: Settled
                     ) -> Sequence[int]:  # fmt: skip
    """Upload the marks among *files* (path, expected version) as zero-byte files, telling
    *settled* of each; the indexes of the other files (to send as files: a range if there
    are no marks, not a list of a million numbers)."""
    if not any(is_mark(path) for path, _ in files):
        return range(len(files))
    others = []
    for index, (path, expected) in enumerate(files):
        if not is_mark(path):
            others.append(index)
            continue
        result: m.FileEntry | FSError | OSError
        try:
            result = await client.put_bytes(b"", path, mode=MARK_MODE, base_version=expected)
        except (FSError, OSError) as exc:
            result = exc
        settled(index, result)
    return others
