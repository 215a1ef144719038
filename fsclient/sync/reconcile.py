"""``Reconcile``: a session's first pass over the whole folder, made for trees of many files.

Every path that may need something is decided (``plan.decide``) against the folder walk, the
state DB and the server's backlog; new and changed files go up in one pipelined batch, then
downloads run in a window, then the rest. What did not apply is handed back to the engine,
which decides those paths again (``Outcome``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os

from fsclient.progress import SyncProgress
from fsclient.resume import kept_temps
from fsclient.sync.actions import Actions, Outcome
from fsclient.sync.folders import folder_of, is_mark, parents
from fsclient.sync.plan import PERMISSIONS, Decision, Do, LocalFile, RemoteState, decide
from fsclient.sync.scan import FolderWalk, Scanner, Stat
from fsclient.sync.state import StateDB

DOWNLOAD_WINDOW = 128
BULK_MIN = 1000
"""Uploads from which the digest index is made again at the end rather than kept up row by
row (``StateDB.bulk``), if they are also at least 1/8 of the rows: a sort of every row costs
about 0.3 µs each, a row added to the index 3-5 µs, more as it grows."""

Later = tuple[str, Decision, LocalFile | None, RemoteState | None]


class Reconcile:
    def __init__(self, scanner: Scanner, db: StateDB, actions: Actions) -> None:
        self.scanner = scanner
        self.db = db
        self.actions = actions
        self.undone: dict[str, Outcome] = {}
        self.incoming: set[str] | None = None
        """Folders that files from the server are on their way into (made when needed)."""

    async def run(self, remote: dict[str, RemoteState], reseed: bool,
                  walking: FolderWalk) -> dict[str, Outcome]:  # fmt: skip
        """Bring folder and server together, path by path; the paths that were not DONE.
        The state is read while the folder walk (a thread) is still going: the two overlap."""
        base = self.db.stats()
        local = await walking.take()
        kept = kept_temps()  # downloads cut short, to be resumed: not leftovers
        for temp in self.scanner.stale:  # no download of ours is running yet
            stale = os.path.abspath(os.path.join(self.scanner.root, temp))
            if stale not in kept:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(stale)
        uploads: list[tuple[LocalFile, int]] = []
        later: list[Later] = []
        records = []
        ignored = self.scanner.rules.ignored
        for path in changed_paths(base, local, remote, reseed):
            if ignored(path):
                continue
            here = self.db.get(path) if path in base else None
            st, news = local.get(path), remote.get(path)
            if st is None and is_mark(path):  # the walk yields only marks of empty folders
                st = self.scanner.stat(path)
            try:
                current = self.scanner.local(path, st, here, lazy=news is None) if st else None
            except OSError as exc:  # unreadable: this path fails, not the session
                self.undone[path] = self.actions.fail(path, exc)
                continue
            decision = decide(here, current, news, reseed)
            if decision.do is Do.UPLOAD and is_mark(path) and self.filling(path, remote):
                continue  # an empty folder that downloads fill (one cut short, say): no mark
            if decision.do is Do.UPLOAD and current is not None:
                uploads.append((current, decision.expected))
            elif decision.do is Do.RECORD and current is not None:
                records.append((path, current.digest, decision.version))
            elif decision.do is not Do.NOTHING:
                later.append((path, decision, current, news))
        rows = len(base)
        base.clear()  # not needed past here: freed before the uploads (a dict entry, a
        local.clear()  # tuple and its numbers per file, 100-200 bytes each)
        with self.db.transaction():
            for path, digest, version in records:
                self.actions.record(path, digest, version)
        transfers = [r for _, d, _, r in later if d.do is Do.DOWNLOAD and r is not None]
        self.actions.progress = SyncProgress(
            len(uploads) + len(transfers),
            sum(f.size for f, _ in uploads) + sum(r.size for r in transfers),
        )
        try:
            bulk = len(uploads) >= BULK_MIN and len(uploads) * 8 >= rows + len(uploads)
            with self.db.bulk() if bulk else contextlib.nullcontext():
                self.undone.update(await self.actions.upload(uploads))
            await self.transfer(later)
        finally:
            self.actions.progress.close()
            self.actions.progress = None
        return self.undone

    def filling(self, mark: str, remote: dict[str, RemoteState]) -> bool:
        if self.incoming is None:
            self.incoming = parents(p for p, news in remote.items() if not news.deleted)
        return folder_of(mark) in self.incoming

    async def transfer(self, later: list[Later]) -> None:
        gate = asyncio.Semaphore(DOWNLOAD_WINDOW)

        async def apply(item: Later) -> None:
            async with gate:
                await self.apply(*item)

        # downloads first: a file renamed on the server is copied from its old local name
        # before that name's delete arrives; then the rest, in the same window (deletes wait
        # for their folder's flush, which those in one folder share)
        self.actions.defer_bases()
        try:
            await asyncio.gather(*(apply(i) for i in later if i[1].do is Do.DOWNLOAD))
        finally:
            self.actions.write_deferred(stop=True)
        await asyncio.gather(*(apply(i) for i in later if i[1].do is not Do.DOWNLOAD))

    async def apply(self, path: str, decision: Decision, local: LocalFile | None,
                    remote: RemoteState | None) -> None:  # fmt: skip
        outcome = await self.actions.carry_out(path, decision, local, remote)
        if outcome is not Outcome.DONE:
            self.undone[path] = outcome


def changed_paths(base: dict[str, tuple[str, int, int, int, int, int]], local: dict[str, Stat],
                  remote: dict[str, RemoteState], reseed: bool) -> list[str]:  # fmt: skip
    """The paths that may need something done, in order. A file whose stat (permissions
    too) matches its base (a row of ``StateDB.stats``: path, size, mtime_ns, mode, inode,
    version), with no news from the server and a known version, is skipped here:
    ``decide`` would say NOTHING (content and bookkeeping agree), and a no-change run is
    mostly that."""
    if reseed:
        paths = list(local)
    else:
        paths = [path for path, (size, mtime_ns, inode, mode) in local.items()
                 if (here := base.get(path)) is None or not here[5] or path in remote
                 or size != here[1] or mtime_ns != here[2] or inode != here[4]
                 or (mode ^ here[3]) & PERMISSIONS]  # fmt: skip
    paths += [path for path in base if path not in local]  # (no set of every path made)
    paths += [path for path in remote if path not in local and path not in base]
    paths.sort()
    return paths
