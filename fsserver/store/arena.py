"""``BlobArena``: the shared-memory segment that holds every stored byte.

Only the supervisor creates and unlinks it. Workers and hashers attach with a plain ``mmap`` of
the segment's file: on Python 3.11 every ``SharedMemory`` attach registers with a resource
tracker, and a tracker that did not start with the supervisor unlinks the segment when its
process exits (CPython gh-82300), so attachers stay away from ``SharedMemory`` altogether. The whole
segment is reserved with ``posix_fallocate`` before the server is ready: a store that does not
fit in /dev/shm fails at start with a clear message instead of a SIGBUS later. With a data dir,
the load writes its pages first (see ``segmentload``), and the reservation takes the rest.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import mmap
import os
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import shared_memory
from multiprocessing.connection import Connection
from pathlib import Path

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
PREFIX = "fs-"
_NAME = re.compile(r"^fs-(\d+)-[0-9a-f]+$")
_MADV_POPULATE_WRITE = 23
POPULATE_STEP = 16 << 20
"""Pages mapped per call: the call holds the process's memory-map lock, which any mmap of
the main thread (Python's allocator) waits for."""
_LIBC = ctypes.CDLL(None, use_errno=True)


class ArenaError(RuntimeError):
    """The arena could not be created (for example /dev/shm is too small)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_segments() -> None:
    """Unlink ``fs-<pid>-*`` segments whose owner process is gone."""
    if not SHM_DIR.is_dir():
        return
    for path in SHM_DIR.iterdir():
        match = _NAME.match(path.name)
        if match and not _pid_alive(int(match.group(1))):
            try:
                path.unlink()
            except FileNotFoundError:
                continue
            log.warning("removed stale shared memory segment %s of a dead server", path.name)


def populate(mapped: mmap.mmap | memoryview, stop: threading.Event | None = None) -> None:
    """Map every page of *mapped* now, so that the data path takes no page fault later: one
    ``madvise(MADV_POPULATE_WRITE)`` (Linux 5.14), called through ctypes, which lets go of
    the GIL meanwhile (the mmap module's ``madvise`` keeps it). Mapping 1 GiB costs a process
    ~0.3 s of CPU here; four children doing it before they say ready made a start 0.7 s
    longer. In steps, so that the main thread never waits long. Without the call (an older
    kernel), pages are mapped at first use. *stop* set: the rest is left to first use."""
    view = ctypes.c_char.from_buffer(mapped)
    address = ctypes.addressof(view)
    del view  # (an export that would keep the mmap from closing)
    for start in range(0, len(mapped), POPULATE_STEP):
        if stop is not None and stop.is_set():
            return
        length = min(POPULATE_STEP, len(mapped) - start)
        if _LIBC.madvise(ctypes.c_void_p(address + start), ctypes.c_size_t(length),
                         _MADV_POPULATE_WRITE) != 0:  # fmt: skip
            error = os.strerror(ctypes.get_errno())
            log.debug("arena pages mapped at first use: madvise: %s", error)
            return


def _too_small(size: int, why: str | None) -> str:
    return (f"cannot reserve a {size}-byte store in {SHM_DIR}: {why}. Lower --store-size or "
            f"enlarge /dev/shm (docker run --shm-size, compose shm_size, or a k8s emptyDir "
            f"with medium: Memory)")  # fmt: skip


class BlobArena:
    """One shared-memory segment; ``view`` is a writable memoryview over all of it."""

    def __init__(self, name: str, view: memoryview, closer: Callable[[], None]) -> None:
        self.name = name
        self.view: memoryview | None = view
        self._closer = closer
        self._filler: threading.Thread | None = None
        self._stop_filling = threading.Event()

    def fill(self) -> None:
        """Map every page into this process, in a thread of its own (see ``populate``)."""
        assert self.view is not None and self._filler is None
        self._filler = threading.Thread(target=populate, args=(self.view, self._stop_filling),
                                        name="arena-populate", daemon=True)  # fmt: skip
        self._filler.start()

    @classmethod
    def create(cls, size: int, reserve: bool = True) -> BlobArena:
        """Make the segment (creator only). It is registered with multiprocessing's resource
        tracker, which unlinks it even if this process is killed. ``reserve=False`` leaves
        the pages to be taken by the first writes (a data dir's load; ``reserve`` follows)."""
        name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
        path = SHM_DIR / name
        free = os.statvfs(SHM_DIR)
        if free.f_bavail * free.f_frsize < size:
            raise ArenaError(_too_small(size, "not enough free space"))
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)
        try:
            shm = shared_memory.SharedMemory(name=name)
        except BaseException:
            path.unlink(missing_ok=True)
            raise

        def close() -> None:
            try:
                shm.close()
            except BufferError:
                log.debug("arena %s still has exported views; left mapped until exit", name)
            with contextlib.suppress(FileNotFoundError):
                shm.unlink()

        arena = cls(name, shm.buf, close)
        if reserve:
            try:
                arena.reserve()
            except BaseException:
                arena.close()
                raise
        return arena

    @property
    def path(self) -> Path:
        return SHM_DIR / self.name

    def reserve(self) -> None:
        """Take every page of the segment now (``posix_fallocate``): a store that does not
        fit fails here, with a clear message, instead of with a SIGBUS in a worker later."""
        fd = os.open(self.path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.ENOMEM):
                raise ArenaError(_too_small(os.fstat(fd).st_size, exc.strerror)) from None
            raise
        finally:
            os.close(fd)
        self.fill()  # the store copies each small file of a batch into its extent here

    @classmethod
    def attach(cls, name: str) -> BlobArena:
        """Map an existing segment. A plain mmap, not SharedMemory: it does not register with
        any resource tracker, so no process's exit can unlink the arena. Its pages are mapped
        by a thread of their own (see ``populate``), so the child is ready at once."""
        fd = os.open(SHM_DIR / name, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            mapped = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
        finally:
            os.close(fd)

        def close() -> None:
            try:
                mapped.close()
            except BufferError:
                log.debug("arena %s still has exported views; left mapped until exit", name)

        arena = cls(name, memoryview(mapped), close)
        arena.fill()
        return arena

    def close(self) -> None:
        """Detach (and, for the creator, unlink). Safe to call twice; tolerates live views."""
        if self.view is None:
            return
        if self._filler is not None:  # (its pages must not be unmapped under it)
            self._stop_filling.set()
            self._filler.join()
        self.view.release()
        self.view = None
        self._closer()


@dataclass(frozen=True)
class ArenaRef:
    """What a child needs to map the arena: its name, and the read end of a pipe whose write
    end the supervisor closes once the arena is filled (every reader sees the end of file
    then, and so does a child started later). Children start while a data dir loads
    (Python's start-up is most of theirs) and map the arena only after: a mapping made
    earlier would take the pages the load is about to write, zeroing each on the way. A
    pipe, not a multiprocessing ``Event``: its named semaphore outlives a killed server."""

    name: str
    filled: Connection

    def attach(self) -> BlobArena:
        self.filled.poll(None)
        return BlobArena.attach(self.name)

    @property
    def path(self) -> Path:
        return SHM_DIR / self.name
