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
from collections.abc import Iterator

from fsclient.progress import SyncProgress
from fsclient.resume import kept_temps
from fsclient.sync.actions import Actions, Outcome
from fsclient.sync.candidates import Ask
from fsclient.sync.folders import folder_of, is_mark, parents
from fsclient.sync.items import UploadList
from fsclient.sync.plan import Decision, Do, LocalFile, RemoteState, decide
from fsclient.sync.scan import Scanner, Stat
from fsclient.sync.state import BaseEntry, StateDB
from fsclient.sync.survey import FolderSurvey

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
        self.remote: dict[str, RemoteState] = {}
        self.reseed = False
        self.uploads = UploadList()
        self.later: list[Later] = []
        self.records: list[tuple[str, bytes, int]] = []

    async def run(self, remote: dict[str, RemoteState], reseed: bool,
                  survey: FolderSurvey) -> dict[str, Outcome]:  # fmt: skip
        """Bring folder and server together, path by path; the paths that were not DONE.
        The folder was walked meanwhile, by the survey's processes: they hand over only the
        paths that may need something (all of them if *reseed*), a list at a time."""
        self.remote, self.reseed = remote, reseed
        async for part in survey.parts(Ask(reseed, list(remote))):
            for path, st, row in part:
                self.consider(path, st, BaseEntry._make(row) if row else None)
        found = survey.end
        for path, why in found.warnings:
            self.scanner.warn(path, why)
        kept = kept_temps()  # downloads cut short, to be resumed: not leftovers
        for temp in found.stale:  # no download of ours is running yet
            stale = os.path.abspath(os.path.join(self.scanner.root, temp))
            if stale not in kept:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(stale)
        uploads, later, records = self.uploads, self.later, self.records
        rows = found.rows
        with self.db.transaction():
            for path, digest, version in records:
                self.actions.record(path, digest, version)
        transfers = [r for _, d, _, r in later if d.do is Do.DOWNLOAD and r is not None]
        self.actions.progress = SyncProgress(
            len(uploads) + len(transfers),
            uploads.bytes + sum(r.size for r in transfers),
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

    def consider(self, path: str, st: Stat | None, here: BaseEntry | None) -> None:
        """Decide on one path: an upload, a record, or something for later."""
        if self.scanner.rules.ignored(path):
            return
        if st is None and is_mark(path):  # the walk yields only marks of empty folders
            st = self.scanner.stat(path)
        news = self.remote.get(path)
        try:
            current = self.scanner.local(path, st, here, lazy=news is None) if st else None
        except OSError as exc:  # unreadable: this path fails, not the session
            self.undone[path] = self.actions.fail(path, exc)
            return
        decision = decide(here, current, news, self.reseed)
        if decision.do is Do.UPLOAD and is_mark(path) and self.filling(path):
            return  # an empty folder that downloads fill (one cut short, say): no mark
        if decision.do is Do.UPLOAD and current is not None:
            self.uploads.append(current, decision.expected)
        elif decision.do is Do.RECORD and current is not None:
            self.records.append((path, current.digest, decision.version))
        elif decision.do is not Do.NOTHING:
            self.later.append((path, decision, current, news))

    def filling(self, mark: str) -> bool:
        if self.incoming is None:
            self.incoming = parents(p for p, news in self.remote.items() if not news.deleted)
        return folder_of(mark) in self.incoming

    async def transfer(self, later: list[Later]) -> None:
        """Downloads first: a file renamed on the server is copied from its old local name
        before that name's delete arrives; then the rest, in the same window (deletes wait
        for their folder's flush, which those in one folder share)."""
        self.actions.defer_bases()
        try:
            await self.in_window(i for i in later if i[1].do is Do.DOWNLOAD)
        finally:
            self.actions.write_deferred(stop=True)
        await self.in_window(i for i in later if i[1].do is not Do.DOWNLOAD)

    async def in_window(self, items: Iterator[Later]) -> None:
        """Apply *items*, DOWNLOAD_WINDOW at a time: as many tasks, each taking the next item
        when it is done with one (a task per item held a task and a coroutine per file from
        the start: 2 GB for a million downloads)."""

        async def worker() -> None:
            for item in items:  # shared: each worker takes the next one
                await self.apply(*item)

        await asyncio.gather(*(worker() for _ in range(DOWNLOAD_WINDOW)))

    async def apply(self, path: str, decision: Decision, local: LocalFile | None,
                    remote: RemoteState | None) -> None:  # fmt: skip
        outcome = await self.actions.carry_out(path, decision, local, remote)
        if outcome is not Outcome.DONE:
            self.undone[path] = outcome
