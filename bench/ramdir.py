"""A per-run folder on tmpfs (``/dev/shm``) for the sync suite's trees and destinations.

The fsserver keeps its store in RAM (an arena in ``/dev/shm``); an rsync destination on the
disk pays for the file system and write-back instead, so comparing the two measures the disk,
not the programs. Both sides write to tmpfs: the room is checked before anything starts, and
the folder is registered on the run's ``ExitStack``, so an error or Ctrl-C still removes it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import psutil

SHM_ROOT = Path("/dev/shm")
PREFIX = "fsbench-sync-"  # not "fs-": the fsserver's arenas and the tests that look for them
MiB = 1 << 20


class NoRoom(RuntimeError):
    """``/dev/shm`` is missing, not a tmpfs, or too small for the run: said before it starts."""


def fs_type(path: Path) -> str:
    """The file-system type of the mount that holds *path* ("" if none is listed)."""
    best, kind = "", ""
    for part in psutil.disk_partitions(all=True):
        mount = part.mountpoint.rstrip("/") + "/"
        if (str(path) + "/").startswith(mount) and len(mount) > len(best):
            best, kind = mount, part.fstype
    return kind


def check_room(need: int, inodes: int, root: Path = SHM_ROOT) -> None:
    """Raise ``NoRoom`` unless *root* is a tmpfs with *need* bytes and *inodes* files free."""
    if not root.is_dir():
        raise NoRoom(f"{root} does not exist: the sync suite keeps its trees on tmpfs there")
    kind = fs_type(root)
    if kind != "tmpfs":
        raise NoRoom(
            f"{root} is {kind or 'not a mount'}, not tmpfs: the sync suite keeps its "
            "trees and the rsync destination in RAM there, as FS keeps its store"
        )
    st = os.statvfs(root)
    free = st.f_bavail * st.f_frsize
    if free < need:
        raise NoRoom(
            f"{root} has {free // MiB:,} MiB free; the sync suite needs "
            f"{-(-need // MiB):,} MiB there (its trees, the rsync destination and the "
            "fsserver's store): enlarge it (docker run --shm-size) or use --quick"
        )
    if st.f_files and st.f_favail < inodes:  # f_files 0: no inode limit
        raise NoRoom(f"{root} has {st.f_favail:,} free inodes; the sync suite needs {inodes:,}")


def ram_workdir(stack: contextlib.ExitStack, need: int, inodes: int) -> Path:
    """A new folder in ``/dev/shm`` with *need* bytes and *inodes* files of room, removed when
    *stack* closes."""
    check_room(need, inodes)
    path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=SHM_ROOT))
    stack.callback(shutil.rmtree, path, ignore_errors=True)
    return path
