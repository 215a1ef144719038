"""Carrying out reconcile decisions, without ever losing a byte.

Every change to the folder re-checks, right before it, that the file is still what the decision
was made about: a download never replaces a file edited meanwhile, a delete never removes one.
Every change to the server is conditional on the version the decision saw. Anything that no
longer holds is not forced: the action says so (``Outcome``), and the engine decides that path
again. A lost connection is not one path's failure: it ends the session (it is raised).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Callable
from enum import Enum, auto
from pathlib import Path

from common import messages as m
from common.errors import Conflict, FSError, NotFound, StoreFull
from common.limits import NO_VERSION
from fsclient.client import Client
from fsclient.durable import FolderSync, NewFolders
from fsclient.progress import SyncProgress
from fsclient.sync.folders import folder_of, is_mark, mark_of, send_marks
from fsclient.sync.items import Paths, UploadItems, UploadList
from fsclient.sync.plan import PERMISSIONS, Decision, Do, LocalFile, RemoteState, conflict_name
from fsclient.sync.report import Tally
from fsclient.sync.scan import Scanner, brief, same_stat
from fsclient.sync.state import BaseEntry, StateDB, folder_is_synced
from fsclient.transfer import as_written, install, temp_name

log = logging.getLogger(__name__)

DB_CHUNK = 1000
"""Uploaded files are written to the state DB in transactions of this many, as they finish."""


class FolderGone(RuntimeError):
    """The folder or its .fsync marker disappeared: stop before anything is deleted."""


class LocalChanged(RuntimeError):
    """The file changed after the decision about it was made."""


class Outcome(Enum):
    """What became of an action: only DONE lets the engine count the server's news as applied."""

    DONE = auto()
    CHANGED_HERE = auto()
    """The local file changed meanwhile: decide again once it is quiet."""
    CHANGED_THERE = auto()
    """The server's version moved meanwhile: decide again with its news."""
    FAILED = auto()
    """An error, logged and counted: try again later."""


class Actions:
    def __init__(self, folder: Path, db: StateDB, scanner: Scanner, client_id: str,
                 tally: Tally | None = None) -> None:  # fmt: skip
        self.folder = folder
        self.db = db
        self.scanner = scanner
        self.client_id = client_id
        self.tally = tally or Tally(db=db)
        self.client: Client | None = None
        self.highest = 0
        """The highest version of a change this client made (from the server's replies)."""
        self.progress: SyncProgress | None = None
        self.folders = FolderSync()
        """Flushes of the folders this client changes (deletes, copies, conflict copies)."""
        self.made = NewFolders()
        self.deferred: list[BaseEntry] | None = None
        """Bases of downloads not written yet (``defer_bases``), else None."""
        self.nothing_to_copy = False
        """The DB had no bases when they were deferred: no download can copy from one."""

    def abs(self, path: str) -> str:
        return os.path.join(self.folder, path)

    def guard(self) -> None:
        if not folder_is_synced(self.folder):
            raise FolderGone(
                f"{self.folder} or its {self.db.marker.name} marker is gone (moved, deleted or "
                f"unmounted?); stopping so that nothing is deleted on the server"
            )

    async def carry_out(self, path: str, decision: Decision, local: LocalFile | None,
                        remote: RemoteState | None) -> Outcome:  # fmt: skip
        """Act on one path's decision (see ``plan.decide``)."""
        do = decision.do
        if do is Do.UPLOAD and local is not None:
            undone = await self.upload(UploadList([(local, decision.expected)]))
            return undone.get(path, Outcome.DONE)
        if do is Do.DOWNLOAD and remote is not None:
            return await self.download(path, remote, local)
        if do is Do.DELETE_LOCAL and local is not None:
            return await self.delete_local(path, local)
        if do is Do.DELETE_REMOTE:
            return await self.delete_remote(path, decision.expected)
        if do is Do.CONFLICT and local is not None and remote is not None:
            return await self.conflict(local, remote)
        if do is Do.FORGET:
            return await self.forget(path)
        if do is Do.RECORD and local is not None:
            self.record(path, local.digest, decision.version)
        self.succeeded(path)  # whatever failed before is settled now
        return Outcome.DONE

    # -- to the server -----------------------------------------------------------------------

    async def upload(self, files: UploadList) -> dict[str, Outcome]:
        """Upload files, each against the server version it was decided on. Each file is
        accounted for as soon as its result arrives (progress, tally, state DB in chunks),
        while later ones are still on their way. Returns the files that were not DONE."""
        if not files:
            return {}
        client = self.client
        assert client is not None
        done: list[BaseEntry] = []
        undone: dict[str, Outcome] = {}

        def settled(index: int, result: m.FileEntry | FSError | OSError) -> None:
            local = files.local(index)
            if type(result) is m.FileEntry:
                done.append(self.uploaded(local, result))
                if len(done) >= DB_CHUNK:
                    self.store_uploaded(done)
            elif client.proto.failure is not None:
                undone[local.path] = Outcome.FAILED  # the session ends: raised below, once
            elif isinstance(result, Conflict):
                log.info("%s changed on the server meanwhile; deciding again", local.path)
                undone[local.path] = Outcome.CHANGED_THERE
            elif isinstance(result, FileNotFoundError):
                log.info("%s vanished before it was sent; deciding again", local.path)
                undone[local.path] = Outcome.CHANGED_HERE
            else:
                undone[local.path] = self.fail(local.path, result)

        try:
            real = await send_marks(client, Paths(files), settled)
            items = UploadItems(f"{self.folder}/", files, real)
            await client.put_many(
                items, on_result=lambda at, result: settled(real[at], result), keep=False
            )
        finally:
            self.store_uploaded(done)  # what was sent before the connection ended is kept
        self.raise_if_lost()
        return undone

    def store_uploaded(self, done: list[BaseEntry]) -> None:
        """Write the bases of uploaded files. Only then do their versions count towards the
        saved position: a position past a version whose base was not written yet would let a
        crash forget that this folder made it."""
        if done:
            self.db.put(done)
            self.highest = max(self.highest, max(entry.version for entry in done))
            done.clear()

    def uploaded(self, local: LocalFile, entry: m.FileEntry) -> BaseEntry:
        """The base for a file just uploaded (its inode only if it is still the same file)."""
        self.succeeded(local.path, 1, entry.size)
        self.tally.uploaded(local.path, entry.size)
        inode = local.inode if (local.size, local.mtime_ns) == (entry.size, entry.mtime_ns) else 0
        return BaseEntry(local.path, entry.size, entry.mtime_ns, entry.mode, inode,
                         entry.digest, entry.version)  # fmt: skip

    async def delete_remote(self, path: str, expected: int) -> Outcome:
        assert self.client is not None
        self.guard()
        version = 0
        try:
            # the delete here is on the disk before the server (and then the state) hears of it
            await self.flush_absence(path)
            version = await self.client.rm(path, base_version=expected)
        except NotFound:
            log.debug("%s was already gone on the server", path)  # the outcome we wanted
        except Conflict:
            log.info("%s changed on the server meanwhile; not deleting it", path)
            return Outcome.CHANGED_THERE
        except (FSError, OSError) as exc:
            return self.fail(path, exc)
        self.db.remove([path])
        self.highest = max(self.highest, version)
        self.succeeded(path)
        self.tally.deleted(path, "on the server")
        return Outcome.DONE

    # -- to the folder -----------------------------------------------------------------------
    # The state DB records only what is on the disk for good: a file is flushed before its
    # rename and its folder after (``install``), a delete or a conflict copy's rename is
    # flushed too, and only then is the base written. A power cut can lose the last writes
    # of the DB (a suffix: see ``StateDB``), never make it claim what the disk lost.

    async def download(self, path: str, remote: RemoteState, expect: LocalFile | None
                       ) -> Outcome:  # fmt: skip
        """Fetch *path* unless the local file is no longer *expect* (None: absent)."""
        assert self.client is not None
        check = self._unchanged(path, expect)
        dest = Path(self.abs(path))
        entry = m.FileEntry(remote.size, remote.version, remote.mtime_ns, remote.mode,
                            remote.digest, path)  # fmt: skip
        try:
            if is_mark(path):  # an empty folder
                return await self._make_folder(path, remote)
            if expect is not None and expect.digest == remote.digest:  # a chmod on the server
                return self._chmod(path, remote, check)
            made = self.made.make(dest.parent, self.folder)
            copied = await self._copy_local(path, entry, check) if self.copyable else None
            # (else the server sends what it holds now, which may be newer than the news)
            entry = copied or await self.client.get_file(path, dest, before_replace=check)
            await self.folders.sync_all({folder.parent for folder in made})  # hold new names
            self.made.flushed(made)
        except LocalChanged:
            log.info("%s changed locally during the download; deciding again", path)
            return Outcome.CHANGED_HERE
        except NotFound:
            return Outcome.CHANGED_THERE  # deleted meanwhile: its notification follows
        except (FSError, OSError) as exc:
            return self.fail(path, exc)
        kept = self.record(path, entry.digest, entry.version, entry)
        self.succeeded(path, 1, entry.size)
        self.tally.downloaded(path, entry.size)
        if not kept:  # deleted or written to since its rename: that change is still to sync
            log.info("%s changed locally right after its download; deciding again", path)
            return Outcome.CHANGED_HERE
        return Outcome.DONE

    def _chmod(self, path: str, remote: RemoteState, check: Callable[[], None]) -> Outcome:
        """The bytes are here already: only the permissions change (and are flushed before
        the base says so: a chmod lost to a power cut would look like one made here). The
        base takes the mode the file had right after the chmod, not at the end: a chmod made
        here during the flush would otherwise be taken for the server's, and never sent."""
        check()
        fd = os.open(self.abs(path), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            os.fchmod(fd, remote.mode & PERMISSIONS)
            size, mtime_ns, inode, mode = brief(os.fstat(fd))
            os.fsync(fd)
        finally:
            os.close(fd)
        self.put_base(BaseEntry(path, size, mtime_ns, mode, inode, remote.digest, remote.version))
        self.succeeded(path)
        self.tally.downloaded(path, 0, f"set {path} to mode {remote.mode & PERMISSIONS:o}")
        return Outcome.DONE

    async def _make_folder(self, path: str, remote: RemoteState) -> Outcome:
        made = self.made.make(Path(self.abs(folder_of(path))), self.folder)
        await self.folders.sync_all({folder.parent for folder in made})  # hold new names
        self.made.flushed(made)
        self.record(path, remote.digest, remote.version)
        self.succeeded(path)
        self.tally.downloaded(path, 0, f"made folder {folder_of(path)}")
        return Outcome.DONE

    async def _copy_local(self, path: str, entry: m.FileEntry, check: Callable[[], None]
                          ) -> m.FileEntry | None:  # fmt: skip
        """A rename or copy elsewhere: the content is here already, under another name. The
        entry as written, or None if no copy was found."""
        for other in self.db.with_digest(entry.digest):
            if other.path == path or is_mark(other.path):  # (an empty folder has no bytes)
                continue
            st = self.scanner.stat(other.path)
            if st is None or not same_stat(st, other):
                continue
            dest = Path(self.abs(path))
            temp = temp_name(dest)
            try:
                shutil.copyfile(self.abs(other.path), temp)
                kept = await install(temp, dest, entry.mode, entry.mtime_ns, check, self.folders)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
            return as_written(entry, kept)
        return None

    async def delete_local(self, path: str, expect: LocalFile) -> Outcome:
        try:
            if is_mark(path):  # the folder goes if nothing is in it (else what is stays)
                with contextlib.suppress(OSError):
                    os.rmdir(self.abs(folder_of(path)))
                return await self.forget(path, deleted=True)
            self._unchanged(path, expect)()
            os.unlink(self.abs(path))
        except LocalChanged:
            log.info("%s changed locally; not deleting it", path)
            return Outcome.CHANGED_HERE
        except FileNotFoundError:
            log.debug("%s was already gone here", path)  # the outcome we wanted
        except OSError as exc:
            return self.fail(path, exc)
        return await self.forget(path, deleted=True)

    async def forget(self, path: str, deleted: bool = False) -> Outcome:
        """*path* is gone here: once that is on the disk for good, its base goes. (Were the
        base gone and the file back after a power cut, the file would look new here and be
        sent again: a delete undone.)"""
        try:
            await self.flush_absence(path)
        except OSError as exc:
            return self.fail(path, exc)
        self.db.remove([path])
        self.succeeded(path)
        if deleted:
            self.tally.deleted(path, "here")
            self._prune(os.path.dirname(path))
        return Outcome.DONE

    async def conflict(self, local: LocalFile, remote: RemoteState) -> Outcome:
        """Keep both: the local version moves to a conflict copy (uploaded as a file of its
        own; if that upload does not go through, the copy is a new local file like any
        other), and the server's version takes the name."""
        copy = conflict_name(local.path, self.client_id)
        try:
            self._unchanged(local.path, local)()
            os.rename(self.abs(local.path), self.abs(copy))
        except (LocalChanged, FileNotFoundError):
            return Outcome.CHANGED_HERE
        except OSError as exc:
            return self.fail(local.path, exc)
        self.tally.conflict(local.path, copy)
        if await self.forget(local.path) is not Outcome.DONE:
            return Outcome.FAILED  # decided again: the copy is a new file, the name missing
        with contextlib.suppress(OSError):  # else the copy is sent like any new local file
            moved = self.scanner.local(copy, brief(os.lstat(self.abs(copy))), None)
            if moved is not None:
                await self.upload(UploadList([(moved, NO_VERSION)]))
        return await self.download(local.path, remote, None)

    # -- bookkeeping -------------------------------------------------------------------------

    def record(self, path: str, digest: bytes, version: int,
               written: m.FileEntry | None = None) -> bool:  # fmt: skip
        """The base of *path* as it is now, with *digest*. *written*: the file this client
        just put there, with the permissions it kept. False if it is no longer that file:
        deleted, written to or chmodded since (say between a download's rename and this). The
        base then still says what was put there, with no inode, so that the next look sees a
        change made here, and the path is to be settled again. (Without a base, a file deleted
        would look as if never there: the server would keep it, and its change would count as
        applied; a chmod would be taken for the server's.)"""
        st = self.scanner.stat(path)
        if written is not None and (st is None or st[:2] != (written.size, written.mtime_ns)
                                    or (st[3] ^ written.mode) & PERMISSIONS):  # fmt: skip
            self.put_base(BaseEntry(path, written.size, written.mtime_ns, written.mode, 0,
                                    digest, version))  # fmt: skip
            return False
        if st is None:
            return False
        size, mtime_ns, inode, mode = st
        self.put_base(BaseEntry(path, size, mtime_ns, mode, inode, digest, version))
        return True

    def put_base(self, entry: BaseEntry) -> None:
        """Write a base now, or with the next chunk while bases are deferred."""
        if self.deferred is None:
            self.db.put([entry])
            return
        self.deferred.append(entry)
        if len(self.deferred) >= DB_CHUNK:
            self.write_deferred()

    def defer_bases(self) -> None:
        """From now on, bases go to the state DB in transactions of ``DB_CHUNK`` (a commit
        per downloaded file was a tenth of a small file's download). Each is still written
        only after its file is on the disk for good; a crash loses at most the chunk not
        written, whose files the next start finds here and records (RECORD)."""
        if self.deferred is None:
            self.deferred = []
            self.nothing_to_copy = self.db.empty()

    @property
    def copyable(self) -> bool:
        """Whether a download may find its bytes here under another name (not in a folder
        with no bases yet: its bases are deferred, so none is in the DB to copy from)."""
        return self.deferred is None or not self.nothing_to_copy

    def write_deferred(self, stop: bool = False) -> None:
        """Write the deferred bases; *stop*: and write each one as it comes again."""
        if self.deferred:
            self.db.put(self.deferred)
            self.deferred.clear()
        if stop:
            self.deferred = None

    async def flush_absence(self, path: str) -> None:
        """Flush the folder that held *path* (gone here), or the nearest one above it that is
        still there (a folder deleted as a whole, or pruned meanwhile by another delete)."""
        top = os.fspath(self.folder)
        for _ in range(path.count("/") + 2):
            folder = os.path.dirname(self.abs(path))
            while not os.path.isdir(folder) and len(folder) > len(top):
                folder = os.path.dirname(folder)
            try:
                await self.folders.sync(folder)
                return
            except FileNotFoundError:
                continue  # gone since it was looked at: the one above it holds that now
        raise FileNotFoundError(f"no folder above {path} stays to be flushed")

    def raise_if_lost(self) -> None:
        """A connection that ended fails every file still open on it: that is the session's
        end, raised once, not one failure per file."""
        failure = self.client.proto.failure if self.client is not None else None
        if failure is not None:
            raise failure

    def fail(self, path: str, exc: BaseException) -> Outcome:
        """An action's error: FAILED (logged, counted), or the session's end if the connection
        is gone."""
        self.raise_if_lost()
        message = exc.message if isinstance(exc, FSError) else str(exc)
        if isinstance(exc, StoreFull):  # the server's words start with "no space: "
            message = f"no space on the server: {message.removeprefix('no space: ')}"
        log.error("%s: %s", path, message)
        self.tally.fail(path, message)
        return Outcome.FAILED

    def succeeded(self, path: str, files: int = 0, size: int = 0) -> None:
        self.tally.ok(path)
        if self.progress is not None and files:
            self.progress.advance(files, size)

    def _unchanged(self, path: str, expect: LocalFile | None) -> Callable[[], None]:
        def check() -> None:
            try:
                st = os.lstat(self.abs(path))
            except FileNotFoundError:
                if expect is None:
                    return
                raise LocalChanged(path) from None
            if not same_stat(brief(st), expect):
                raise LocalChanged(path)

        return check

    def _prune(self, folder: str) -> None:
        """Remove folders left empty by deletes (a folder deleted or renamed elsewhere)."""
        while folder and self.db.get(mark_of(folder)) is None:  # a marked folder stays
            try:
                os.rmdir(self.abs(folder))
            except OSError:
                return
            folder = os.path.dirname(folder)
