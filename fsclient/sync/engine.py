"""``SyncEngine``: keeps one folder in two-way sync with one share.

A session: connect; compare the server's store id with the one this folder last saw (a new
store means the server restarted empty: everything is sent again, nothing deleted); subscribe
from the last version seen and read the backlog; reconcile every path (``reconcile``); then,
unless ``--once``, live: folder events (debounced per path) and server notifications each
settle their path, one path at a time. A lost connection starts a new session after a back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from common import messages as m
from common.errors import Conflict, FSError, InvalidPath
from common.paths import is_canonical
from fsclient.access import Access
from fsclient.client import ChangeStream, Client
from fsclient.progress import SyncProgress
from fsclient.protocol import ConnectionLost
from fsclient.sync.actions import Actions, FolderGone
from fsclient.sync.ignore import IGNORE_FILE, IgnoreRules
from fsclient.sync.plan import Decision, Do, LocalFile, RemoteState, decide
from fsclient.sync.scan import FolderWalk, Scanner, Stat, same_stat
from fsclient.sync.state import BaseEntry, StateDB

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
GUARD_EVERY = 1.0
RESCAN_EVERY = 600.0
"""A stat-only rescan catches what the watcher missed (inotify drops events when overrun)."""
DOWNLOAD_WINDOW = 32
KEEPALIVE_EVERY = 60.0


def remote_state(note: m.ChangeNotification) -> RemoteState:
    e = note.entry
    return RemoteState(e.version, note.deleted, e.size, e.mtime_ns, e.mode, e.digest)


class SyncEngine:
    def __init__(self, folder: Path, db: StateDB, server: str, share: str, client_id: str,
                 debounce: float = 2.0, once: bool = False,
                 access: Access | None = None) -> None:  # fmt: skip
        self.folder = folder
        self.access = access or Access()
        self.db = db
        self.server = server
        self.share = share
        self.client_id = client_id
        self.debounce = debounce
        self.once = once
        self.scanner = Scanner(folder, IgnoreRules.load(folder))
        self.actions = Actions(folder, db, self.scanner, client_id)
        self.pending: dict[str, RemoteState] = {}
        self.unapplied: set[int] = set()
        self.seen = int(db.meta("last_seq", "0"))
        self.stored_seq = self.seen
        """The ``last_seq`` this engine last wrote to the state."""
        self.busy: set[str] = set()
        self.again: set[str] = set()
        self.timers: dict[str, asyncio.TimerHandle] = {}

    # -- sessions ----------------------------------------------------------------------------

    async def run(self) -> int:
        """Sync until stopped (or once); the exit code: 0, or 1 if anything failed."""
        delay = BACKOFF_FIRST
        walking: FolderWalk | None = None
        while True:
            self.actions.guard()
            if walking is None or walking.finished:  # a walk still running is fresh enough
                if walking is not None:
                    walking.drop()
                walking = FolderWalk(self.scanner)
            try:
                client = await Client.connect(
                    self.server, self.share, client_id=self.client_id, access=self.access
                )
            except BaseException as exc:
                if self.once or not isinstance(exc, (OSError, ConnectionLost)):
                    walking.drop()  # refused (a bad token, TLS), stopped, or --once: the end
                    raise
                log.warning("cannot reach %s (%s); retrying in %.1f s", self.server, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            try:
                await self.session(client, walking)
                if self.once:
                    return 1 if self.actions.tally.failed else 0
            except (FSError, OSError) as exc:
                if self.once or client.proto.failure is None:  # not a lost connection
                    raise
                reason = exc.message if isinstance(exc, FSError) else str(exc)
                log.warning("connection to %s lost (%s); reconnecting", self.server, reason)
            finally:
                walking.drop()
                walking = None
                await client.close()
            delay = BACKOFF_FIRST
            await asyncio.sleep(delay)

    async def session(self, client: Client, walking: FolderWalk) -> None:
        self.actions.client = client
        reseed = self.check_store(client.store_id)
        since = 0 if reseed else int(self.db.meta("last_seq", "0"))
        try:
            stream = await client.subscribe(since)
        except Conflict:  # the server has fewer versions than this folder saw: a new store
            log.warning("the server's history is behind this folder's; sending everything again")
            self.db.forget_versions()
            reseed, since = True, 0
            stream = await client.subscribe(0)
        remote = await self.backlog(stream, since)
        failed = len(self.actions.tally.failed)
        await self.reconcile(remote, reseed, await walking.take())
        # Others' changes made while we worked: the server sends them on this connection
        # before its reply to any later change of ours, so once they are applied every
        # version up to our own last one is accounted for.
        for note in stream.arrived():
            self.note(note)
        for path in list(self.pending):
            await self.settle(path)
        if len(self.actions.tally.failed) == failed:  # else the backlog is read again next time
            self.seen = max(self.seen, stream.seq, self.actions.highest,
                            *(r.version for r in remote.values()))  # fmt: skip
            self.mark_synced(self.seen)
            self.db.set_meta(reseed=0)
        if not self.once:
            await self.live(stream)

    def check_store(self, store_id: bytes) -> bool:
        """True if the server's store is not the one this folder last synced with."""
        known = self.db.meta("store_id")
        fresh = known != store_id.hex() or self.db.meta("reseed") == "1"
        if known and known != store_id.hex():
            log.warning("the server's store changed (restarted without its data?): "
                        "this folder's files are sent again; nothing is deleted")  # fmt: skip
            self.db.forget_versions()
        if fresh:
            self.db.set_meta(store_id=store_id.hex(), reseed=1, last_seq=0)
            self.seen = self.stored_seq = 0
        return fresh and bool(known)

    async def backlog(self, stream: ChangeStream, since: int) -> dict[str, RemoteState]:
        """Every path the server changed after *since*, at its latest state."""
        remote: dict[str, RemoteState] = {}
        last = since
        while last < stream.seq:
            note = await anext(stream)
            last = note.entry.version
            path = self.accept_remote_path(note.entry.path)
            if path is not None:
                remote[path] = remote_state(note)
        return remote

    def accept_remote_path(self, path: str) -> str | None:
        """A path from the server, if it is safe and not ignored. A malicious server must not
        make the client write outside its folder: no '..', no absolute path, no symlink."""
        try:
            if not is_canonical(path):
                raise InvalidPath(f"not in canonical form: {path!r}")
        except InvalidPath as exc:
            log.error("refused a path from the server: %s", exc.message)
            return None
        parent = self.folder
        for part in path.split("/")[:-1]:
            parent = parent / part
            if parent.is_symlink():
                log.error("refused %s from the server: %s is a symbolic link", path, parent)
                return None
        return None if self.scanner.rules.ignored(path) else path

    # -- reconcile ---------------------------------------------------------------------------

    async def reconcile(self, remote: dict[str, RemoteState], reseed: bool,
                        local: dict[str, Stat]) -> None:  # fmt: skip
        """Bring folder and server together, path by path (see ``plan.decide``)."""
        base = {entry.path: entry for entry in self.db.all()}
        for temp in self.scanner.stale:  # no download of ours is running yet
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.folder / temp)
        uploads: list[tuple[LocalFile, int]] = []
        later: list[tuple[str, Decision, LocalFile | None, RemoteState | None]] = []
        records = []
        ignored = self.scanner.rules.ignored
        for path in self.changed_paths(base, local, remote, reseed):
            if ignored(path):
                continue
            st, here, news = local.get(path), base.get(path), remote.get(path)
            current = self.scanner.local(path, st, here, lazy=news is None) if st else None
            decision = decide(here, current, news, reseed)
            if decision.do is Do.UPLOAD and current is not None:
                uploads.append((current, decision.expected))
            elif decision.do is Do.RECORD and current is not None:
                records.append((path, current.digest, decision.version))
            elif decision.do is not Do.NOTHING:
                later.append((path, decision, current, news))
        with self.db.transaction():
            for path, digest, version in records:
                self.actions.record(path, digest, version)
        transfers = [r for _, d, _, r in later if d.do is Do.DOWNLOAD and r is not None]
        self.actions.progress = SyncProgress(
            len(uploads) + len(transfers),
            sum(f.size for f, _ in uploads) + sum(r.size for r in transfers),
        )
        try:
            await self.transfer(uploads, later)
        finally:
            self.actions.progress.close()
            self.actions.progress = None

    @staticmethod
    def changed_paths(base: dict[str, BaseEntry], local: dict[str, Stat],
                      remote: dict[str, RemoteState], reseed: bool) -> list[str]:  # fmt: skip
        """The paths that may need something done, in order. A file whose stat matches its
        base, with no news from the server and a known version, is skipped here: ``decide``
        would say NOTHING (content and bookkeeping agree), and a no-change run is mostly that."""
        paths = []
        for path, st in local.items():
            here = base.get(path)
            if (here is None or reseed or not here.version or path in remote
                    or st[:3] != (here.size, here.mtime_ns, here.inode)):  # fmt: skip
                paths.append(path)
        paths.extend((base.keys() | remote.keys()) - local.keys())
        paths.sort()
        return paths

    async def transfer(self, uploads: list[tuple[LocalFile, int]],
                       later: list[tuple[str, Decision, LocalFile | None, RemoteState | None]]
                       ) -> None:  # fmt: skip
        await self.actions.upload(uploads)
        gate = asyncio.Semaphore(DOWNLOAD_WINDOW)

        async def apply(item: tuple[str, Decision, LocalFile | None, RemoteState | None]) -> None:
            async with gate:
                await self.apply(*item)

        # downloads first: a file renamed on the server is copied from its old local name
        # before that name's delete arrives
        await asyncio.gather(*(apply(i) for i in later if i[1].do is Do.DOWNLOAD))
        for item in later:
            if item[1].do is not Do.DOWNLOAD:
                await self.apply(*item)

    async def apply(self, path: str, decision: Decision, local: LocalFile | None,
                    remote: RemoteState | None) -> None:  # fmt: skip
        do = decision.do
        try:
            if do is Do.UPLOAD and local is not None:
                await self.actions.upload([(local, decision.expected)])
            elif do is Do.DOWNLOAD and remote is not None:
                await self.actions.download(path, remote, local)
            elif do is Do.DELETE_LOCAL and local is not None:
                self.actions.delete_local(path, local)
            elif do is Do.DELETE_REMOTE:
                await self.actions.delete_remote(path, decision.expected)
            elif do is Do.CONFLICT and local is not None and remote is not None:
                await self.actions.conflict(local, remote)
            elif do is Do.RECORD and local is not None:
                self.actions.record(path, local.digest, decision.version)
            elif do is Do.FORGET:
                self.db.remove([path])
        except (FolderGone, ConnectionLost):
            raise
        except (FSError, OSError) as exc:
            self.actions.fail(path, exc)

    # -- live --------------------------------------------------------------------------------

    async def live(self, stream: ChangeStream) -> None:
        from fsclient.sync.watch import FolderWatcher

        loop = asyncio.get_running_loop()
        watcher = FolderWatcher(self.folder, loop, self.local_changed)
        watcher.start()
        log.info("watching %s", self.folder)
        tasks = [loop.create_task(self.follow(stream)), loop.create_task(self.watch_guard()),
                 loop.create_task(self.rescans()), loop.create_task(self.keepalive())]  # fmt: skip
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            watcher.stop()
            for task in tasks:
                task.cancel()
            for timer in self.timers.values():
                timer.cancel()
            self.timers.clear()

    async def follow(self, stream: ChangeStream) -> None:
        async for note in stream:
            path = self.note(note)
            if path is not None and path not in self.timers:  # a local change about to
                self.settle_soon(path)  # settle will take it

    def note(self, note: m.ChangeNotification) -> str | None:
        """Remember a server change for its path; the path, if it is one to sync."""
        self.seen = max(self.seen, note.entry.version)
        path = self.accept_remote_path(note.entry.path)
        if path is not None:
            self.pending[path] = remote_state(note)
            self.unapplied.add(note.entry.version)
        return path

    async def keepalive(self) -> None:
        """A quiet connection is closed by the server's idle timeout; a ping keeps it."""
        client = self.actions.client
        assert client is not None
        while True:
            await asyncio.sleep(KEEPALIVE_EVERY)
            await client.ping()

    async def watch_guard(self) -> None:
        while True:
            self.actions.guard()
            await asyncio.sleep(GUARD_EVERY)

    async def rescans(self) -> None:
        while True:
            await asyncio.sleep(RESCAN_EVERY)
            base = {entry.path: entry for entry in self.db.all()}
            seen = set()
            for path, st in self.scanner.walk():
                seen.add(path)
                if not same_stat(st, base.get(path)):
                    self.settle_soon(path)
            for path in base:  # the walk just saw the others there
                if path not in seen and self.scanner.stat(path) is None:
                    self.settle_soon(path)

    def local_changed(self, path: str, is_dir: bool) -> None:
        """A watcher event (on the loop): settle the path once it has been quiet a while."""
        if path == IGNORE_FILE:
            self.scanner.rules = IgnoreRules.load(self.folder)
        if is_dir:
            paths = {e.path for e in self.db.under(path)}
            paths |= {p for p, _ in self.scanner.walk(path)}
        else:
            paths = {path}
        for one in paths:
            if self.scanner.rules.ignored(one):
                continue
            timer = self.timers.pop(one, None)
            if timer is not None:
                timer.cancel()
            self.timers[one] = asyncio.get_running_loop().call_later(
                self.debounce, self.debounced, one
            )

    def debounced(self, path: str) -> None:
        self.timers.pop(path, None)
        self.settle_soon(path)

    def settle_soon(self, path: str) -> None:
        if path in self.busy:
            self.again.add(path)
        else:
            asyncio.get_running_loop().create_task(self.settle(path))

    async def settle(self, path: str) -> None:
        """Decide and act on one path, as often as news about it keeps coming."""
        self.busy.add(path)
        try:
            while True:
                self.again.discard(path)
                remote = self.pending.pop(path, None)
                base = self.db.get(path)
                st = self.scanner.stat(path)
                local = self.scanner.local(path, st, base) if st else None
                await self.apply(path, decide(base, local, remote), local, remote)
                if remote is not None:
                    self.unapplied.discard(remote.version)
                if path not in self.again:
                    break
        finally:
            self.busy.discard(path)
        self.save_progress()

    def save_progress(self) -> None:
        """Persist the highest version below which every change has been applied."""
        self.seen = max(self.seen, self.actions.highest)
        upto = min(self.unapplied) - 1 if self.unapplied else self.seen
        if upto > self.stored_seq:
            self.mark_synced(upto)

    def mark_synced(self, seq: int) -> None:
        self.db.mark_synced(seq)
        self.stored_seq = seq


def default_client_id() -> str:
    host = "".join(c for c in os.uname().nodename if c.isalnum() or c in "-_")[:24] or "host"
    return f"{host}-{os.urandom(3).hex()}"
