"""Reading the folder: stat first, hash only what the state says has changed.

Paths are relative, ``/``-separated and must be valid remote paths; anything else (a name
with a backslash, a name not in NFC, a symlink, a socket) is skipped with a warning, once.
Symlinks are never followed: their targets could lie outside the folder.

A walk keeps four integers per file (``Stat``), not an ``os.stat_result``: a folder of 100,000
files would otherwise hold about 57 MiB of stat objects while it is reconciled.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path

from common.digest import StreamingDigest, digest_of
from common.errors import InvalidPath
from common.limits import (
    MAX_MTIME_NS,
    MAX_PATH_BYTES,
    MAX_SEGMENT_BYTES,
    MIN_MTIME_NS,
    wire_mtime,
)
from common.paths import is_canonical
from fsclient.localfiles import CHUNK, SMALL_FILE, TEMP_MARK
from fsclient.sync.folders import MARK, MARK_MODE, folder_of, is_mark, mark_of, mark_stat
from fsclient.sync.ignore import IgnoreRules
from fsclient.sync.plan import LocalFile
from fsclient.sync.state import MARKER, BaseEntry

log = logging.getLogger(__name__)

UNKNOWN = b""
"""The digest of a ``LocalFile`` not read yet (see ``Scanner.local``)."""

Stat = tuple[int, int, int, int]
"""(size, mtime_ns, inode, permission bits) of a regular file."""

_PLAIN_NAME = re.compile(r"[^\x00-\x1f\x7f\\/]+")
"""A name that needs no further check if it is ASCII (so NFC, one byte per character)."""
_PLAIN_NAMES = re.compile(
    rf"(?:(?!\.\.?(?:/|$))[^\x00-\x1f\x7f\\/]{{1,{MAX_SEGMENT_BYTES}}}(?:/|$))*"
)
"""A folder's names joined by ``/``, each of them a plain name (above), not ``.`` or ``..``,
and at most MAX_SEGMENT_BYTES long (ASCII: one byte per character)."""


_PERMISSION_BITS = 0o7777
"""What ``stat.S_IMODE`` keeps."""


def brief(st: os.stat_result) -> Stat:
    mtime_ns = st.st_mtime_ns
    if not MIN_MTIME_NS <= mtime_ns <= MAX_MTIME_NS:  # (inline: a walk calls this per file)
        mtime_ns = wire_mtime(mtime_ns)
    return (st.st_size, mtime_ns, st.st_ino, st.st_mode & _PERMISSION_BITS)


def same_stat(st: Stat, known: BaseEntry | LocalFile | None) -> bool:
    """The file is, by size, mtime and inode, the one *known* describes (None: nothing is)."""
    return known is not None and st[:3] == (known.size, known.mtime_ns, known.inode)


_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_SUBFOLDER_FLAGS = _FOLDER_FLAGS | os.O_NOFOLLOW
"""A folder inside is never followed if it became a link; the top one may be a link (a synced
folder can be reached through one, as ``os.scandir`` of it always did)."""


@dataclass(frozen=True)
class Span:
    """The paths from *low* (included) to *high* (excluded; None: no end), in the order of
    their UTF-8 bytes (SQLite's, and Python's for str): a share of a walk. All the paths in
    a folder F lie between "F/" and "F0", as "0" follows "/"."""

    low: str = ""
    high: str | None = None

    def holds(self, path: str) -> bool:
        return self.low <= path and (self.high is None or path < self.high)

    def meets(self, folder: str) -> bool:
        """Some path inside *folder* may be in the span."""
        return (self.high is None or folder + "/" < self.high) and self.low < folder + "0"

    def holds_all(self, folder: str) -> bool:
        """Every path inside *folder* ("" for the top) is in the span."""
        if not folder:
            return not self.low and self.high is None
        return self.low <= folder + "/" and (self.high is None or folder + "0" <= self.high)


EVERY_PATH = Span()


class Scanner:
    def __init__(self, folder: Path, rules: IgnoreRules) -> None:
        self.root = str(folder)
        self.rules = rules
        self.warned: set[str] = set()

    def walk(self, under: str = "") -> Iterator[tuple[str, Stat]]:
        """Every regular file (path, stat) below *under* ("" for all), not ignored, and the
        mark of each folder with none of those in it (``folders``)."""
        if under and not self.valid(under):
            return
        stack = [(under, 0)]
        while stack:
            files, folders = self.folder(*stack.pop())
            yield from files
            stack += folders

    def walk_sorted(self, span: Span = EVERY_PATH) -> Iterator[tuple[str, Stat]]:
        """``walk`` of *span*, in the order of the paths' bytes (the order of the state's
        rows): depth first, each folder's entries sorted by their paths, a folder's as
        "F/" (every path inside it follows that, and comes before any other entry's)."""
        stack = [iter(self.sorted_folder("", 0, span))]
        while stack:
            for key, value in stack[-1]:
                if type(value) is int:  # a folder ("F/", its inode): walked right now
                    stack.append(iter(self.sorted_folder(key[:-1], value, span)))
                    break
                yield key, value  # type: ignore[misc]
            else:
                stack.pop()

    def sorted_folder(self, rel: str, inode: int, span: Span
                      ) -> list[tuple[str, Stat | int]]:  # fmt: skip
        """One folder's files (path, stat) and folders ("path/", inode) in *span*, sorted."""
        files, folders = self.folder(rel, inode)
        if not span.holds_all(rel):  # a folder the span's ends cut through
            files = [one for one in files if span.holds(one[0])]
            folders = [one for one in folders if span.meets(one[0])]
        items: list[tuple[str, Stat | int]] = [*files]
        items += [(f"{path}/", ino) for path, ino in folders]
        items.sort(key=itemgetter(0))
        return items

    def folder(self, rel: str, inode: int) -> tuple[list[tuple[str, Stat]],
                                                    list[tuple[str, int]]]:  # fmt: skip
        """One folder (*rel*, "" for the top; *inode*: its own, 0 if not known): its files
        to sync (path, stat), or its mark if it holds nothing to sync, and its sub-folders
        (path, inode) to walk next."""
        try:  # by descriptor: each stat then looks up one name, not the whole path
            fd = (os.open(os.path.join(self.root, rel), _SUBFOLDER_FLAGS) if rel
                  else os.open(self.root, _FOLDER_FLAGS))  # fmt: skip
        except (FileNotFoundError, NotADirectoryError):  # gone, or now a file
            return [], []
        except PermissionError as exc:
            self.warn(rel or ".", f"cannot read folder: {exc.strerror}")
            return [], []
        except OSError as exc:
            if exc.errno == errno.ELOOP and rel:  # replaced by a link while we looked
                return [], []
            raise  # (an error that a missing folder must not be mistaken for)
        try:  # (open while its entries are looked at: their stat goes through it)
            return self.entries(rel, inode, list(os.scandir(fd)))
        finally:
            os.close(fd)

    def entries(self, rel: str, inode: int, entries: list[os.DirEntry[str]]) -> tuple[
            list[tuple[str, Stat]], list[tuple[str, int]]]:  # fmt: skip
        """``folder``, once its entries are read."""
        files: list[tuple[str, Stat]] = []
        folders: list[tuple[str, int]] = []
        if rel and not self.has_content(rel, entries):
            st = (0, 0, inode, MARK_MODE) if inode else mark_stat(self.root, mark_of(rel))
            if st is not None:
                files.append((mark_of(rel), st))
        prefix = f"{rel}/" if rel else ""
        if rel and self.rules.only_always and self.plain_names(prefix, entries):
            # the common case, with nothing to check per name: regular files and folders
            for entry in entries:
                try:
                    if entry.is_file(follow_symlinks=False):
                        st = entry.stat(follow_symlinks=False)
                        files.append((prefix + entry.name, brief(st)))
                    else:
                        self.other(prefix, entry, files, folders)
                except FileNotFoundError:  # gone while we looked
                    continue
            return files, folders
        for entry in entries:
            try:
                self.other(prefix, entry, files, folders)
            except FileNotFoundError:
                continue
        return files, folders

    @staticmethod
    def plain_names(prefix: str, entries: list[os.DirEntry[str]]) -> bool:
        """Every name in the folder is ASCII, short, with nothing to skip or check (no temp
        file, no mark, no backslash or control character; one check for the whole folder)."""
        names = "/".join(entry.name for entry in entries)
        return (prefix.isascii() and names.isascii() and TEMP_MARK not in names
                and _PLAIN_NAMES.fullmatch(names) is not None
                and len(prefix) + MAX_SEGMENT_BYTES <= MAX_PATH_BYTES
                and f"/{MARK}/" not in f"/{names}/")  # fmt: skip

    def other(self, prefix: str, entry: os.DirEntry[str], files: list[tuple[str, Stat]],
              folders: list[tuple[str, int]]) -> None:  # fmt: skip
        """One entry, every rule checked: added to *files* or *folders*, or skipped."""
        name = entry.name
        path = prefix + name
        if entry.is_symlink():
            self.warn(path, "symbolic link skipped (links are not followed)")
            return
        is_dir = entry.is_dir(follow_symlinks=False)
        if TEMP_MARK in name:  # always ignored; a file is a download's leftover
            if not is_dir:
                self.leftover(path)
            return
        if self.rules.only_always:  # only the built-in rules: the marker folder at the top
            if not prefix and name == MARKER:
                return
        elif self.rules.ignored(path, is_dir):
            return
        if not (prefix.isascii() and name.isascii() and len(name) <= MAX_SEGMENT_BYTES
                and len(path) <= MAX_PATH_BYTES
                and _PLAIN_NAME.fullmatch(name)) and not self.valid(path):  # fmt: skip
            return
        if is_dir:
            folders.append((path, entry.inode()))
        elif name == MARK:
            self.warn(path, f"{MARK} is the name of an empty folder's mark; skipped")
        elif entry.is_file(follow_symlinks=False):
            st = entry.stat(follow_symlinks=False)
            files.append((path, brief(st)))
        else:
            self.warn(path, "not a regular file, skipped")

    def has_content(self, rel: str, entries: Iterable[os.DirEntry[str]]) -> bool:
        """A folder holds something to sync: a file or folder that is not ignored (a folder
        that holds only ignored files is sent as empty: the other clients make it too), or
        a download on its way (a folder made for a download is not sent as empty)."""
        for entry in entries:
            name = entry.name
            if name == MARK:
                continue
            try:
                if entry.is_symlink():
                    continue
                is_dir = entry.is_dir(follow_symlinks=False)
                if not self.rules.ignored(f"{rel}/{name}", is_dir):
                    return True
            except FileNotFoundError:
                continue
        return False

    def empty(self, mark: str) -> bool:
        """The mark's folder holds nothing to sync (read until the first entry that counts:
        a file event in a folder of 100,000 files settles that folder's mark too)."""
        folder = folder_of(mark)
        try:
            with os.scandir(os.path.join(self.root, folder)) as entries:
                return not self.has_content(folder, entries)
        except OSError:
            return False

    def stat(self, path: str) -> Stat | None:
        """The file at *path* if it is a regular file to sync (else None); a mark's if its
        folder is there."""
        if is_mark(path):
            return None if self.rules.ignored(path) else mark_stat(self.root, path)
        try:
            st = os.lstat(os.path.join(self.root, path))
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISLNK(st.st_mode):
            self.warn(path, "symbolic link skipped (links are not followed)")
            return None
        if not stat.S_ISREG(st.st_mode) or self.rules.ignored(path):
            return None
        return brief(st)

    def local(self, path: str, st: Stat, base: BaseEntry | None,
              lazy: bool = False) -> LocalFile | None:  # fmt: skip
        """A LocalFile; hashed only if its stat differs from the base. None if it vanished.
        *lazy*: a file that is new everywhere is not read here; its digest is ``UNKNOWN``
        and the upload reads it (once, hashing the bytes it sends)."""
        if is_mark(path) and base is None and not self.empty(path):
            return None  # a new mark only for a folder that is empty (``folders``)
        size, mtime_ns, inode, mode = st
        if base is not None and same_stat(st, base):
            return LocalFile(path, size, mtime_ns, mode, inode, base.digest)
        if lazy and base is None:
            return LocalFile(path, size, mtime_ns, mode, inode, UNKNOWN)
        try:
            digest, st = self.hash(path)
        except FileNotFoundError:
            return None
        size, mtime_ns, inode, mode = st
        return LocalFile(path, size, mtime_ns, mode, inode, digest)

    def hash(self, path: str) -> tuple[bytes, Stat]:
        """Digest of the file and its stat as read (so the two describe the same bytes)."""
        if is_mark(path):
            st = self.stat(path)
            if st is None:
                raise FileNotFoundError(path)
            return digest_of(b""), st
        fd = os.open(os.path.join(self.root, path), os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            st = brief(os.fstat(fd))
            if st[0] <= SMALL_FILE:
                return digest_of(os.pread(fd, st[0] + 1, 0)), st
            hasher = StreamingDigest()
            buffer = memoryview(bytearray(CHUNK))
            pos = 0
            while True:
                n = os.preadv(fd, [buffer], pos)
                if not n:
                    return hasher.digest(), st
                hasher.update(buffer[:n])
                pos += n
        finally:
            os.close(fd)

    def valid(self, path: str) -> bool:
        try:
            if is_canonical(path):
                return True
        except InvalidPath as exc:
            self.warn(path, f"name cannot be synced: {exc.message}")
            return False
        self.warn(path, "name is not in Unicode NFC form; skipped")
        return False

    def leftover(self, path: str) -> None:
        """The temp file of a download that never finished (a killed client), met by a walk:
        only a session's first look removes them (``NotingScanner``), before any download of
        its own runs."""

    def warn(self, path: str, why: str) -> None:
        if path not in self.warned:
            self.warned.add(path)
            log.warning("%s: %s", path, why)
