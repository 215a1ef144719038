"""``BlobArena``: the shared-memory segment that holds every stored byte.

Only the supervisor creates and unlinks it. Workers and hashers attach with a plain ``mmap`` of
the segment's file: on Python 3.11 every ``SharedMemory`` attach registers with a resource
tracker, and a tracker that did not start with the supervisor unlinks the segment when its
process exits (CPython gh-82300), so attachers stay away from ``SharedMemory`` altogether. The whole
segment is reserved with ``posix_fallocate`` at start: a store that does not fit in /dev/shm fails
at once with a clear message instead of a SIGBUS later, and the pages are touched only once.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import re
import secrets
from collections.abc import Callable
from multiprocessing import shared_memory
from pathlib import Path

log = logging.getLogger(__name__)

SHM_DIR = Path("/dev/shm")
PREFIX = "fs-"
_NAME = re.compile(r"^fs-(\d+)-[0-9a-f]+$")
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


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


class BlobArena:
    """One shared-memory segment; ``view`` is a writable memoryview over all of it."""

    def __init__(self, name: str, view: memoryview, closer: Callable[[], None]) -> None:
        self.name = name
        self.view: memoryview | None = view
        self._closer = closer

    @classmethod
    def create(cls, size: int) -> BlobArena:
        """Reserve the segment (creator only). It is registered with multiprocessing's
        resource tracker, which unlinks it even if this process is killed."""
        name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
        path = SHM_DIR / name
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            os.close(fd)
            path.unlink(missing_ok=True)
            if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.ENOMEM):
                raise ArenaError(
                    f"cannot reserve a {size}-byte store in {SHM_DIR}: {exc.strerror}. "
                    f"Lower --store-size or enlarge /dev/shm (docker run --shm-size, "
                    f"compose shm_size, or a k8s emptyDir with medium: Memory)"
                ) from None
            raise
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

        return cls(name, shm.buf, close)

    @classmethod
    def attach(cls, name: str) -> BlobArena:
        """Map an existing segment, with every page mapped up front (MAP_POPULATE) so that
        the data path never takes a page fault. A plain mmap, not SharedMemory: it does not
        register with any resource tracker, so no process's exit can unlink the arena."""
        fd = os.open(SHM_DIR / name, os.O_RDWR)
        try:
            size = os.fstat(fd).st_size
            mapped = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _POPULATE)
        finally:
            os.close(fd)

        def close() -> None:
            try:
                mapped.close()
            except BufferError:
                log.debug("arena %s still has exported views; left mapped until exit", name)

        return cls(name, memoryview(mapped), close)

    def close(self) -> None:
        """Detach (and, for the creator, unlink). Safe to call twice; tolerates live views."""
        if self.view is None:
            return
        self.view.release()
        self.view = None
        self._closer()
