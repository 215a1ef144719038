"""Reading the folder: stat first, hash only what the state says has changed.

Paths are relative, ``/``-separated and must be valid remote paths; anything else (a name
with a backslash, a name not in NFC, a symlink, a socket) is skipped with a warning, once.
Symlinks are never followed: their targets could lie outside the folder.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from common.digest import StreamingDigest, digest_of
from common.errors import InvalidPath
from common.paths import normalize_path
from fsclient.sync.ignore import IgnoreRules
from fsclient.sync.plan import LocalFile
from fsclient.sync.state import BaseEntry
from fsclient.transfer import TEMP_MARK

log = logging.getLogger(__name__)

WHOLE = 1 << 20
CHUNK = 1 << 20


class Scanner:
    def __init__(self, folder: Path, rules: IgnoreRules) -> None:
        self.folder = folder
        self.root = str(folder)
        self.rules = rules
        self.warned: set[str] = set()
        self.stale: list[str] = []
        """Temp files of downloads that never finished (a killed client), seen by walk()."""

    def walk(self, under: str = "") -> Iterator[tuple[str, os.stat_result]]:
        """Every regular file (path, stat) below *under* ("" for all), not ignored."""
        stack = [under]
        while stack:
            rel = stack.pop()
            try:
                entries = list(os.scandir(os.path.join(self.root, rel) if rel else self.root))
            except (FileNotFoundError, NotADirectoryError):
                continue
            except PermissionError as exc:
                self.warn(rel or ".", f"cannot read folder: {exc.strerror}")
                continue
            for entry in entries:
                path = f"{rel}/{entry.name}" if rel else entry.name
                yield from self._entry(entry, path, stack)

    def _entry(self, entry: os.DirEntry[str], path: str,
               stack: list[str]) -> Iterator[tuple[str, os.stat_result]]:  # fmt: skip
        try:
            if entry.is_symlink():
                self.warn(path, "symbolic link skipped (links are not followed)")
                return
            is_dir = entry.is_dir(follow_symlinks=False)
            if not is_dir and TEMP_MARK in entry.name:
                self.stale.append(path)
                return
            if self.rules.ignored(path, is_dir) or not self.valid(path):
                return
            if is_dir:
                stack.append(path)
            elif entry.is_file(follow_symlinks=False):
                yield path, entry.stat(follow_symlinks=False)
            else:
                self.warn(path, "not a regular file, skipped")
        except FileNotFoundError:  # gone while we looked
            return

    def stat(self, path: str) -> os.stat_result | None:
        """The file at *path* if it is a regular file to sync (else None)."""
        try:
            st = os.lstat(os.path.join(self.root, path))
        except (FileNotFoundError, NotADirectoryError):
            return None
        if stat.S_ISLNK(st.st_mode):
            self.warn(path, "symbolic link skipped (links are not followed)")
            return None
        if not stat.S_ISREG(st.st_mode) or self.rules.ignored(path):
            return None
        return st

    def local(self, path: str, st: os.stat_result, base: BaseEntry | None) -> LocalFile | None:
        """A LocalFile; hashed only if its stat differs from the base. None if it vanished."""
        mode = stat.S_IMODE(st.st_mode)
        if base is not None and (st.st_size, st.st_mtime_ns, st.st_ino) == (
            base.size, base.mtime_ns, base.inode
        ):  # fmt: skip
            return LocalFile(path, st.st_size, st.st_mtime_ns, mode, st.st_ino, base.digest)
        try:
            digest, st = self.hash(path)
        except FileNotFoundError:
            return None
        return LocalFile(path, st.st_size, st.st_mtime_ns, stat.S_IMODE(st.st_mode), st.st_ino,
                         digest)  # fmt: skip

    def hash(self, path: str) -> tuple[bytes, os.stat_result]:
        """Digest of the file and its stat as read (so the two describe the same bytes)."""
        fd = os.open(os.path.join(self.root, path), os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if st.st_size <= WHOLE:
                return digest_of(os.pread(fd, st.st_size + 1, 0)), st
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
            if normalize_path(path) == path:
                return True
        except InvalidPath as exc:
            self.warn(path, f"name cannot be synced: {exc.message}")
            return False
        self.warn(path, "name is not in Unicode NFC form; skipped")
        return False

    def warn(self, path: str, why: str) -> None:
        if path not in self.warned:
            self.warned.add(path)
            log.warning("%s: %s", path, why)
