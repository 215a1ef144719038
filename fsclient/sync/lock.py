"""``FolderLock``: one ``fsclient sync`` (or ``unsync``) per folder at a time.

Two clients on one folder would each take the other's half-done work for a change to sync.
The lock is an ``flock`` on ``DIR/.fsync/lock``, which holds the holder's pid so that the
refusal can name it. The kernel drops an ``flock`` when its holder ends, however it ends (a
kill -9 too): there is never a stale lock to clean up, and a pid left in the file by a dead
holder means nothing once its lock is gone.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from fsclient.sync.state import MARKER

LOCK_NAME = "lock"


class FolderBusy(RuntimeError):
    """Another process holds the folder's lock."""

    def __init__(self, folder: Path, pid: str) -> None:
        holder = f"process {pid}" if pid else "another process"
        super().__init__(f"{folder} is being synced by {holder} (fsclient sync); "
                         f"stop that one first")  # fmt: skip
        self.pid = pid


class FolderLock:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / MARKER / LOCK_NAME
        self.fd = -1

    def acquire(self) -> FolderLock:
        """Take the lock or raise ``FolderBusy`` at once (never wait for it)."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise FolderBusy(self.folder, pid) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        """Let go (safe to call twice). The pid stays in the file: without the lock it is
        no claim (and clearing it first would leave a moment where the holder is unnamed)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
