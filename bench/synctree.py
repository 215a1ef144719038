"""The folders the sync benchmark moves: trees of small random files, and checks on them.

Every initial-sync round gets a tree with fresh random content (FS deduplicates by digest, and
the store is shared by every share on the server), written and copied outside the timing.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from common.digest import digest_of

STATE_DIR = ".fsync"


def tree_name(i: int, folders: int) -> str:
    """Where file *i* goes: spread evenly over *folders* sub-folders."""
    return f"d{i % folders:04d}/f{i // folders:06d}.bin"


def make_tree(root: Path, count: int, size: int, folders: int) -> dict[str, bytes]:
    """Write *count* files of *size* random bytes under *root* (which must not exist), in
    *folders* sub-folders; returns relative path -> digest."""
    root.mkdir(parents=True)
    for d in range(min(folders, count)):
        (root / f"d{d:04d}").mkdir()
    digests: dict[str, bytes] = {}
    block = os.urandom(count * size)  # one call: much faster than one per file
    view = memoryview(block)
    for i in range(count):
        rel = tree_name(i, folders)
        data = view[i * size : (i + 1) * size]
        with open(root / rel, "wb", buffering=0) as f:
            f.write(data)
        digests[rel] = digest_of(bytes(data))
    return digests


def copy_tree(src: Path, dst: Path) -> None:
    """A plain copy (no sync state inside): a fresh folder for one FS round."""
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns(STATE_DIR))


def count_files(root: Path, skip: str = STATE_DIR) -> int:
    """Regular files below *root*, not counting the *skip* folder at its top."""
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        if dirpath == str(root) and skip in dirnames:
            dirnames.remove(skip)
        total += len(filenames)
    return total


def remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
