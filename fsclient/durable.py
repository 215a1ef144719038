"""Making what the client writes into a folder survive a power cut, cheaply.

A rename is atomic, but not durable: after a power cut the new name may point at a file whose
bytes never reached the disk, or the rename itself may be gone. So a file is fsynced before it
is renamed into place, and its folder after (the folder holds the name). The sync engine writes
its state DB only once both are done, so that the state never records a file the disk may not
have (see "The sync client" in ``docs/ARCHITECTURE.md``).

An fsync costs a disk flush, so it never runs on the event loop: each runs in a thread, and
many downloads in flight flush at once (the file system commits them together), in batches
per thread job (``FileFlush``). A folder that many of them wait on is flushed once for all
who asked before that flush began, not once each.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import threading
from collections.abc import Iterable
from pathlib import Path

WRITE_BEHIND = 16 << 20
"""A download writes its bytes back in the background every this many (``WriteBehind``)."""


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush a file's bytes and metadata, or a folder's names, to the disk."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def in_thread(path: str | os.PathLike[str]) -> asyncio.Future[None]:
    """``fsync_path`` in a thread of the loop's default pool, off the event loop (the loop
    waits for that pool before it closes, so no flush ends after it)."""
    return asyncio.get_running_loop().run_in_executor(None, fsync_path, path)


def settle(path: str | os.PathLike[str], mode: int, mtime_ns: int) -> int:
    """Give a written file its permissions and mtime, and flush it to the disk. Returns the
    permissions it has right after the chmod: what the file system keeps (one that cannot
    hold them keeps its own), read before a chmod made meanwhile by someone else could be."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        os.fchmod(fd, mode)
        kept = stat.S_IMODE(os.fstat(fd).st_mode)
        os.utime(fd, ns=(mtime_ns, mtime_ns))
        os.fsync(fd)
    finally:
        os.close(fd)
    return kept


_Settle = tuple[str | os.PathLike[str], int, int]
"""``settle``'s arguments."""

FLUSH_JOBS = 4
"""Thread jobs of file flushes at once: on a disk, flushes that run together share the file
system's journal commit, as each download's own thread did before (the default pool has 6)."""
FLUSH_BATCH = 32
"""Files per job at most: enough to make the hand-offs cheap, few enough to keep the jobs
in parallel when flushes are slow."""


class FileFlush:
    """Files settled (``settle``) in batches: a thread job flushes up to ``FLUSH_BATCH`` of
    the files waiting, ``FLUSH_JOBS`` jobs at once. A download of many small files would
    otherwise hand each fsync to a thread of its own, and spend more on the hand-offs than
    on the flushes (on tmpfs, or a disk with a write cache)."""

    def __init__(self) -> None:
        self.waiting: list[tuple[_Settle, asyncio.Future[int]]] = []
        self.jobs = 0
        self.loop: asyncio.AbstractEventLoop | None = None

    async def settle(self, path: str | os.PathLike[str], mode: int, mtime_ns: int) -> int:
        """``settle``, in a batch: the permissions the file kept."""
        loop = asyncio.get_running_loop()
        if self.loop is not loop:  # (left by a loop that ended: tests)
            self.loop, self.jobs, self.waiting = loop, 0, []
        done: asyncio.Future[int] = loop.create_future()
        self.waiting.append(((path, mode, mtime_ns), done))
        self._start(loop)
        return await done

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        while self.waiting and self.jobs < FLUSH_JOBS:
            batch, self.waiting = self.waiting[:FLUSH_BATCH], self.waiting[FLUSH_BATCH:]
            self.jobs += 1
            job = loop.run_in_executor(None, _settle_all, [args for args, _ in batch])
            job.add_done_callback(lambda ended, batch=batch: self._ended(loop, batch, ended))

    def _ended(self, loop: asyncio.AbstractEventLoop, batch: list, job: asyncio.Future) -> None:
        for (_, done), outcome in zip(batch, job.result(), strict=True):
            if done.cancelled():
                continue
            if isinstance(outcome, OSError):
                done.set_exception(outcome)
            else:
                done.set_result(outcome)
        if self.loop is loop:
            self.jobs -= 1
            self._start(loop)


def _settle_all(files: list[_Settle]) -> list[OSError | int]:
    """Each file's permissions as kept, or its error."""
    outcomes: list[OSError | int] = []
    for args in files:
        try:
            outcomes.append(settle(*args))
        except OSError as exc:
            outcomes.append(exc)
    return outcomes


class FolderSync:
    """Folder fsyncs shared by everyone waiting on the same folder. ``await sync(folder)``
    returns once a flush that began after the call has ended: a flush already running may
    have missed the caller's rename, so those who ask during one share the next. (It also
    carries the files' flushes, ``files``, that the same writers share.)"""

    def __init__(self) -> None:
        self.running: dict[str, asyncio.Future[None]] = {}
        self.next: dict[str, asyncio.Future[None]] = {}
        self.files = FileFlush()

    async def sync(self, folder: str | os.PathLike[str]) -> None:
        key = os.fspath(folder)
        running = self.running.get(key)
        if running is not None and running.get_loop() is not asyncio.get_running_loop():
            running = None  # left by a loop that ended before the flush did (tests)
            self.next.pop(key, None)
        if running is None:
            done = self._start(key)
        else:
            done = self.next.get(key)
            if done is None:
                done = self.next[key] = asyncio.get_running_loop().create_future()
        await asyncio.shield(done)  # a caller that gives up does not stop others' flush

    async def sync_all(self, folders: Iterable[str | os.PathLike[str]]) -> None:
        await asyncio.gather(*(self.sync(folder) for folder in folders))

    def _start(self, key: str, done: asyncio.Future[None] | None = None) -> asyncio.Future[None]:
        if done is None:
            done = asyncio.get_running_loop().create_future()
        self.running[key] = done
        in_thread(key).add_done_callback(lambda flush: self._ended(key, flush))
        return done

    def _ended(self, key: str, flush: asyncio.Future[None]) -> None:
        done = self.running.pop(key)
        error = flush.exception()
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)
        waiting = self.next.pop(key, None)
        if waiting is not None:  # those who asked meanwhile: their flush starts now
            self._start(key, waiting)


class NewFolders:
    """Folders made for downloads, each *fresh* until a flush of its parent (which holds its
    name) has ended. A download into a fresh folder flushes that parent too, though the
    folder exists: the download that made it may still be waiting for its own flush, and a
    state row written before it ends would name a file a power cut may lose."""

    def __init__(self) -> None:
        self.fresh: set[Path] = set()

    def make(self, folder: Path, stop: Path) -> list[Path]:
        """Create *folder* and any missing parents up to *stop* (which exists); the folders
        made now or still fresh, whose parents are to be flushed like a renamed file's
        folder (then ``flushed``)."""
        made: list[Path] = []
        here = folder
        while here != stop and (here in self.fresh or not os.path.isdir(here)):
            made.append(here)
            here = here.parent
        for created in reversed(made):
            with contextlib.suppress(FileExistsError):  # made meanwhile by another download
                created.mkdir()
            self.fresh.add(created)
        return made

    def flushed(self, made: Iterable[Path]) -> None:
        """The parents of *made* were flushed after they were made: their names are safe."""
        self.fresh.difference_update(made)


class WriteBehind:
    """Flushes a big download's bytes while it is still arriving, so that the fsync before
    its rename finds little left to do: the disk writes during the transfer, not after it. A
    flush runs in a thread on a duplicate of the descriptor (the file may close meanwhile),
    one at a time."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.unsynced = 0
        self.running: threading.Thread | None = None

    def wrote(self, n: int) -> None:
        self.unsynced += n
        if self.unsynced < WRITE_BEHIND or (self.running and self.running.is_alive()):
            return
        self.unsynced = 0
        self.running = threading.Thread(target=_datasync, args=(os.dup(self.fd),), daemon=True)
        self.running.start()


def _datasync(fd: int) -> None:
    try:
        os.fdatasync(fd)
    except OSError:
        pass  # the fsync before the rename reports what matters
    finally:
        os.close(fd)
