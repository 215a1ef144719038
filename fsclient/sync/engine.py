"""``SyncEngine``: keeps one folder in two-way sync with one share.

A session: connect; compare the server's store id with the one this folder last saw (a new
store means the server restarted empty: everything is sent again, nothing deleted); subscribe
from the last version seen and read the backlog; reconcile every path (``reconcile``); settle
again what did not apply; then, unless ``--once``, live: folder events (debounced per path) and
server notifications put their path on the ``SettleQueue``, which a few settlers work through,
one path at a time each. A lost connection starts a new session after a back-off.

The sync position saved in the state only moves past a server change once it is applied
(``ServerNews``); see ``fsclient.sync.pending``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

from common import messages as m
from common.errors import Conflict, FSError, HistoryExpired, NotFound
from fsclient.access import Access
from fsclient.client import ChangeStream, Client
from fsclient.protocol import ConnectionLost
from fsclient.sync.actions import Actions, Outcome
from fsclient.sync.candidates import Ask
from fsclient.sync.folders import mark_of
from fsclient.sync.ignore import IGNORE_FILE, IgnoreRules
from fsclient.sync.pending import ServerNews, SettleQueue
from fsclient.sync.plan import RemoteState, decide
from fsclient.sync.reconcile import Reconcile
from fsclient.sync.remote import accept, remote_state
from fsclient.sync.report import Tally
from fsclient.sync.scan import Scanner
from fsclient.sync.state import StateDB
from fsclient.sync.survey import FolderSurvey

log = logging.getLogger(__name__)

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
GUARD_EVERY = 1.0
RESCAN_EVERY = 600.0
"""A stat-only rescan catches what the watcher missed (inotify drops events when overrun)."""
SETTLERS = 16
"""Paths settled at once in live mode (each may be a download or an upload)."""
KEEPALIVE_EVERY = 60.0
RETRY_FIRST = 1.0
RETRY_MAX = 60.0
"""A path whose action failed is tried again after a back-off, doubling up to this."""
TRIES_AT_ONCE = 5
"""A path that keeps moving while it is acted on is decided again at once this many times,
then it waits like a failure."""


class SyncEngine:
    def __init__(self, folder: Path, db: StateDB, server: str, share: str, client_id: str,
                 debounce: float = 2.0, once: bool = False, access: Access | None = None,
                 tally: Tally | None = None) -> None:  # fmt: skip
        self.folder = folder
        self.access = access or Access()
        self.db = db
        self.server = server
        self.share = share
        self.client_id = client_id
        self.debounce = debounce
        self.once = once
        self.create_share = True
        """False: a share that does not exist is refused, until the folder first synced."""
        self.scanner = Scanner(folder, IgnoreRules.load(folder))
        self.actions = Actions(folder, db, self.scanner, client_id, tally)
        self.on_connect: Callable[[], None] = lambda: None  # the CLI saves the server then
        self.last_error = ""  # why the last connection attempt failed
        self.stored_seq = int(db.meta("last_seq", "0"))
        """The ``last_seq`` this engine last wrote to the state."""
        self.news = ServerNews(self.stored_seq)
        self.queue = SettleQueue()
        self.stream: ChangeStream | None = None
        self.timers: dict[str, asyncio.TimerHandle] = {}
        """Per path: a debounce of a local change, or the back-off after a failure."""
        self.tries: dict[str, int] = {}
        """Per path: how many times in a row it was acted on without getting DONE."""
        self.reseeding = db.meta("reseed") == "1"
        """Every file is being sent again (a new store): until all went, a restart resends."""

    # -- sessions ----------------------------------------------------------------------------

    async def run(self, survey: FolderSurvey | None = None) -> int:
        """Sync until stopped (or once); the exit code: 0, or 1 if anything failed. *survey*:
        one already started, for the first session."""
        delay = BACKOFF_FIRST
        while True:
            self.actions.guard()
            survey = survey or await FolderSurvey.started(self.folder)  # walks meanwhile
            try:
                client = await Client.connect(
                    self.server, self.share, client_id=self.client_id, access=self.access,
                    create_share=self.create_share or bool(self.db.meta("store_id")),
                )  # fmt: skip
            except BaseException as exc:
                self.last_error = exc.message if isinstance(exc, FSError) else str(exc)
                if self.once or not isinstance(exc, (OSError, ConnectionLost)):
                    survey.drop()  # refused (a bad token, TLS), stopped, or --once: the end
                    raise
                survey.drop()
                survey = None
                log.warning("cannot reach %s (%s); retrying in %.1f s", self.server, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            started = time.monotonic()
            self.on_connect()
            try:
                await self.session(client, survey)
                if self.once:
                    return 1 if self.actions.tally.failed else 0
            except (FSError, OSError) as exc:
                if self.once or client.proto.failure is None:  # not a lost connection
                    raise
                reason = exc.message if isinstance(exc, FSError) else str(exc)
                log.warning("connection to %s lost (%s); reconnecting", self.server, reason)
            finally:
                survey.drop()
                survey = None
                self.stream = None
                await client.close()
            # a server that takes the connection and drops it at once is not hammered with a
            # walk and a reconcile each time
            lasted = time.monotonic() - started
            delay = BACKOFF_FIRST if lasted > BACKOFF_MAX else min(delay * 2, BACKOFF_MAX)
            await asyncio.sleep(delay)

    async def session(self, client: Client, survey: FolderSurvey) -> None:
        self.actions.client = client
        self.news.clear()  # what did not apply is read again: the position is before it
        self.queue.clear()
        self.tries.clear()
        reseed = self.check_store(client.store_id)
        since = 0 if reseed else self.stored_seq
        rescan = False
        try:
            self.stream = await client.subscribe(since)
        except Conflict:  # the server has fewer versions than this folder saw: a new store
            log.warning("the server's history is behind this folder's; sending everything again")
            with self.db.transaction():
                self.db.forget_versions()
                self.read_from_start()
            reseed, since = True, 0
            self.stream = await client.subscribe(0)
        except HistoryExpired:  # away longer than the server keeps deletes
            log.warning("this folder was away longer than the server keeps deletes: "
                        "comparing every file with the server's")  # fmt: skip
            rescan, since = True, 0
            self.stream = await client.subscribe(0)
        remote = await self.backlog(self.stream, since)
        if rescan:  # a path the server does not know any more was deleted there long ago
            for entry in self.db.all():
                remote.setdefault(entry.path, RemoteState(0, deleted=True))
        undone = await Reconcile(self.scanner, self.db, self.actions).run(remote, reseed, survey)
        self.actions.tally.end_batch()
        for path in undone:
            if path in remote:
                self.news.add(path, remote[path])
        self.news.seen = max(self.news.seen, self.stream.seq)
        self.schedule_retries(undone)
        self.absorb()  # others' changes made while we worked
        self.save_progress()  # else a start that finds nothing to settle live never saves it
        if self.once:
            await self.settle_all()
        else:
            await self.live(self.stream)

    def check_store(self, store_id: bytes) -> bool:
        """Start over if the server's store is not the one this folder last synced with, or
        a start-over did not finish; True if local files are to be sent again whatever the
        server says (not on a first sync: there is no earlier store to make up for)."""
        known = self.db.meta("store_id")
        fresh = known != store_id.hex() or self.reseeding
        # one transaction: a crash between its writes would leave the new store's id with
        # the old store's position, and the changes below that position unread for good
        with self.db.transaction():
            if known and known != store_id.hex():
                log.warning("the server's store changed (restarted without its data?): "
                            "this folder's files are sent again; nothing is deleted")  # fmt: skip
                self.db.forget_versions()
            if fresh:
                self.db.set_meta(store_id=store_id.hex())
                self.read_from_start()
        return fresh and bool(known)

    def read_from_start(self) -> None:
        """A store this folder has not fully synced with: every file is sent (until all went,
        a restart does it again), and the server's history is read from 0."""
        self.db.set_meta(reseed=1, last_seq=0)
        self.reseeding = True
        self.stored_seq = 0
        self.news = ServerNews(0)
        self.actions.highest = 0  # versions of the old store say nothing about the new one

    async def backlog(self, stream: ChangeStream, since: int) -> dict[str, RemoteState]:
        """Every path the server changed after *since*, at its latest state."""
        remote: dict[str, RemoteState] = {}
        last = since
        while last < stream.seq:
            note = await anext(stream)
            last = note.entry.version
            path = accept(self.folder, self.scanner.rules, note.entry.path)
            if path is not None:
                remote[path] = remote_state(note)
        return remote

    # -- live --------------------------------------------------------------------------------

    async def live(self, stream: ChangeStream) -> None:
        from fsclient.sync.watch import FolderWatcher

        loop = asyncio.get_running_loop()
        watcher = FolderWatcher(self.folder, loop, self.local_changed)
        watcher.start()
        log.info("watching %s", self.folder)
        tasks = [loop.create_task(self.follow(stream)), loop.create_task(self.watch_guard()),
                 loop.create_task(self.rescans()), loop.create_task(self.keepalive())]  # fmt: skip
        tasks += [loop.create_task(self.settler()) for _ in range(SETTLERS)]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            watcher.stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)  # none left running
            for timer in self.timers.values():
                timer.cancel()
            self.timers.clear()

    async def follow(self, stream: ChangeStream) -> None:
        async for note in stream:
            self.take_news(note)

    def take_news(self, note: m.ChangeNotification) -> None:
        """A server change: remember it for its path and settle that path (at once, unless
        a local change to it is about to be settled anyway)."""
        self.news.seen = max(self.news.seen, note.entry.version)
        path = accept(self.folder, self.scanner.rules, note.entry.path)
        if path is not None:
            self.news.add(path, remote_state(note))
            if path not in self.timers:
                self.queue.put(path)

    def absorb(self) -> None:
        """Take in the notifications that have arrived but are not read yet. The server sends
        others' changes before its reply to any later call of ours, so after a reply these
        are what the server held when it answered."""
        if self.stream is not None:
            for note in self.stream.arrived():
                self.take_news(note)

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
            survey = await FolderSurvey.started(self.folder)
            try:
                async for part in survey.parts(Ask()):
                    for path, _, _ in part:
                        self.queue.put(path)
            finally:
                survey.drop()
            for path, why in survey.end.warnings:
                self.scanner.warn(path, why)

    def local_changed(self, path: str, is_dir: bool) -> None:
        """A watcher event (on the loop): settle the path once it has been quiet a while."""
        if path == IGNORE_FILE:
            self.scanner.rules = IgnoreRules.load(self.folder)
        paths = {mark_of(path.rpartition("/")[0])} if "/" in path else set()  # emptied now?
        if is_dir:
            paths |= {e.path for e in self.db.under(path)}
            paths |= {p for p, _ in self.scanner.walk(path)}
        else:
            paths.add(path)
        for one in paths:
            if not self.scanner.rules.ignored(one):
                self.settle_later(one, self.debounce)

    def settle_later(self, path: str, delay: float) -> None:
        """Settle *path* after *delay* seconds (a later call starts the wait again)."""
        timer = self.timers.pop(path, None)
        if timer is not None:
            timer.cancel()
        self.timers[path] = asyncio.get_running_loop().call_later(delay, self._due, path)

    def _due(self, path: str) -> None:
        self.timers.pop(path, None)
        self.queue.put(path)

    # -- settling ----------------------------------------------------------------------------

    async def settler(self) -> None:
        while True:
            path = await self.queue.take()
            try:
                await self.settle(path)
            finally:
                self.queue.done(path)
                if self.queue.idle:  # a batch of changes is over
                    self.actions.tally.end_batch()

    async def settle_all(self) -> None:
        """--once: settle what the reconcile left until nothing is waiting."""
        tasks = [asyncio.ensure_future(self.queue.drained())]
        tasks += [asyncio.ensure_future(self.settler()) for _ in range(SETTLERS)]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # a settler ends only by raising (a lost connection)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self.save_progress()

    async def settle(self, path: str) -> None:
        """Decide and act on one path, from a fresh look at the folder and the server's news."""
        self.absorb()
        remote = self.news.get(path)
        if self.scanner.rules.ignored(path):  # ignored since it was queued: neither side
            self.forget(path, remote)  # is touched (a delete on the server would be wrong)
            return
        try:
            base = self.db.get(path)
            st = self.scanner.stat(path)
            local = self.scanner.local(path, st, base) if st else None
            decision = decide(base, local, remote)
            outcome = await self.actions.carry_out(path, decision, local, remote)
        except OSError as exc:  # an unreadable file, say: this path fails, not the client
            outcome = self.actions.fail(path, exc)
        if outcome is Outcome.DONE:
            if remote is None or self.news.mark_applied(path, remote):
                self.tries.pop(path, None)
            else:
                outcome = Outcome.CHANGED_THERE  # newer news came meanwhile: settle it too
        if outcome is not Outcome.DONE:
            if outcome is Outcome.CHANGED_THERE:
                await self.look_again(path)
            self.schedule_retries({path: outcome})
        self.save_progress()

    def forget(self, path: str, remote: RemoteState | None) -> None:
        if remote is not None:
            self.news.mark_applied(path, remote)
        self.tries.pop(path, None)
        self.actions.tally.ok(path)

    async def look_again(self, path: str) -> None:
        """The server's version of *path* moved under an action: take in its news, which is
        on its way before the reply that said so. If none is there (it was read in a session
        that could not apply it, say), ask the server for the path as it is."""
        self.absorb()
        client = self.actions.client
        if self.news.get(path) is not None or client is None:
            return
        try:
            entry = await client.stat(path)
        except NotFound:
            self.news.add(path, RemoteState(self.news.seen, deleted=True))
            return
        except FSError as exc:  # the retry looks again
            self.actions.fail(path, exc)
            return
        self.news.add(path, RemoteState(entry.version, False, entry.size, entry.mtime_ns,
                                        entry.mode, entry.digest))  # fmt: skip

    def schedule_retries(self, undone: dict[str, Outcome]) -> None:
        """Settle again the paths whose action was not DONE: a path that moved at once (a
        few times in a row), a changed local file once it is quiet, a failure after a
        back-off (--once: not at all; it is reported, and read again next run)."""
        for path, outcome in undone.items():
            tries = self.tries[path] = self.tries.get(path, 0) + 1
            if outcome is Outcome.FAILED or tries > TRIES_AT_ONCE:
                if not self.once:
                    self.settle_later(path, min(RETRY_FIRST * 2 ** (tries - 1), RETRY_MAX))
                elif outcome is not Outcome.FAILED:
                    self.actions.fail(path, RuntimeError("it keeps changing while it is synced"))
            elif outcome is Outcome.CHANGED_HERE and not self.once:
                self.settle_later(path, self.debounce)
            else:
                self.queue.put(path)

    def save_progress(self) -> None:
        """Persist the highest version below which every change has been applied."""
        self.absorb()  # a change of others older than our own last one is not skipped
        self.news.seen = max(self.news.seen, self.actions.highest)
        upto = self.news.position()
        if upto > self.stored_seq:
            self.db.mark_synced(upto)
            self.stored_seq = upto
        if self.reseeding and not self.news and not self.actions.tally.failed:
            self.db.set_meta(reseed=0)
            self.reseeding = False
