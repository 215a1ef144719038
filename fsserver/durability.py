"""``Durability``: the supervisor's half of ``--data-dir``. It loads the data dir at start,
runs the persisting process, feeds it the store's journal, and holds back the answers that
must wait for the disk (see ``fsserver.store.journal``).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fsserver.channel import MessageChannel, channel_pair
from fsserver.children import Child, Role, spawn, stop_all
from fsserver.config import ServerConfig
from fsserver.process import profiled, setup_child
from fsserver.store import Store
from fsserver.store.arena import ArenaRef
from fsserver.store.journal import Journal
from fsserver.store.recovery import Loaded, identity, load

log = logging.getLogger(__name__)

DRAIN_TIMEOUT = 30.0
"""At a graceful stop, how long the journal may take to reach the disk."""


def persister_main(config: ServerConfig, sock: socket.socket, arena: ArenaRef,
                   segment: int) -> None:  # fmt: skip
    from fsserver.store.persister import serve_journal

    setup_child("persister-0", config.log_level)
    profiled("persister-0", lambda: serve_journal(config.data_dir, config.fsync, sock,
                                                  arena, segment))  # fmt: skip


class Durability:
    def __init__(self, config: ServerConfig, store: Store, arena: ArenaRef,
                 on_exit: Callable[[Child], None]) -> None:  # fmt: skip
        self.config = config
        self.store = store
        self.arena = arena
        self.on_exit = on_exit
        self.journal = Journal(hold_answers=config.fsync == "always")
        self.child: Child | None = None
        self.outgoing: list[tuple[int, list[Any]]] = []
        self.loaded = Loaded()
        self.next_segment = 1
        self.drained: asyncio.Event | None = None

    def identify(self) -> None:
        """The server's identity from the data dir (before the workers start, who give it
        to clients); CatalogError if the catalog cannot be read."""
        self.store.store_id, self.next_segment = identity(Path(self.config.data_dir))

    def load(self) -> Loaded:
        """The data dir into the store (before the arena is marked filled): RecoveryError if it
        cannot be."""
        assert self.store.arena is not None, "the arena comes before the data dir"
        self.loaded = load(Path(self.config.data_dir), self.store, self.arena.path,
                           self.config.repair)  # fmt: skip
        self.journal.lsn = self.journal.applied = self.loaded.lsn
        self.store.journal = []
        return self.loaded

    # -- the persisting process --------------------------------------------------------------

    def start(self) -> None:
        ours, theirs = channel_pair()
        args = (self.config, theirs, self.arena, self.next_segment)
        child = spawn(Role.PERSISTER, 0, persister_main, args, self.on_exit)
        theirs.close()
        child.channel = MessageChannel(ours, lambda msg, fds: self.on_message(child, msg),
                                       on_close=lambda: None)  # fmt: skip
        self.next_segment += 1  # a restarted persister opens a segment of its own
        self.child = child

    def exited(self, child: Child) -> None:
        """The persisting process died: what it had not applied is sent to the next one."""
        if child.channel is not None:
            child.channel.close()
        if self.child is child:
            self.child = None

    @property
    def ready(self) -> bool:
        return self.child is not None and self.child.ready and self.child.alive

    def on_message(self, child: Child, msg: Any) -> None:
        kind = msg[0]
        if kind == "ready":
            child.ready = True
            self.outgoing.clear()  # every unsent entry is among those it still needs
            resend = self.journal.unapplied(msg[1])
            if resend and child.channel is not None:
                log.info("sending %d journal entries again to the new persister", len(resend))
                child.channel.send_batch("log", resend)
            self.applied(msg[1], msg[2])  # (what that frees goes after them, once)
        elif kind == "applied":
            self.applied(msg[1], msg[2])
        elif kind in ("failed", "room"):  # a full disk; the room now, once a second
            self.store.disk_room = msg[-1] - self.journal.waiting_bytes

    def applied(self, lsn: int, room: int) -> None:
        self.store.unpin(self.journal.mark_applied(lsn))
        self.store.disk_room = room - self.journal.waiting_bytes
        self.log_changes()  # the unpinned blobs that nothing needs any more are freed
        self.send_log()
        if self.drained is not None and self.journal.idle:
            self.drained.set()

    # -- the journal -------------------------------------------------------------------------

    def log_changes(self) -> None:
        """After a store call: its journal records become the next entry."""
        entry = self.journal.add(self.store.take_journal(), self.store.blobs)
        if entry is not None:
            self.outgoing.append(entry)

    def send_log(self) -> None:
        """Send the new entries (a persister that is not ready gets them when it is)."""
        outgoing, self.outgoing = self.outgoing, []
        if outgoing and self.ready and self.child is not None and self.child.channel:
            self.child.channel.send_batch("log", outgoing)

    def deliver(self, send: Callable[[], None]) -> None:
        self.journal.send(send)

    async def stop(self) -> None:
        """Let the journal reach the disk, then stop the persisting process."""
        self.log_changes()
        self.send_log()
        if not self.journal.idle and self.ready:
            self.drained = asyncio.Event()
            try:
                await asyncio.wait_for(self.drained.wait(), DRAIN_TIMEOUT)
            except TimeoutError:
                log.error("%d journal entries did not reach the disk in %.0f s",
                          len(self.journal.pending), DRAIN_TIMEOUT)  # fmt: skip
        child = self.child
        if child is not None:
            if child.channel is not None:
                child.channel.send(("stop",))
            await stop_all([child], 5.0)
            if child.channel is not None:
                child.channel.close()

    def stats(self) -> dict[str, float]:
        return {"waiting_bytes": self.journal.waiting_bytes,
                "pending_entries": len(self.journal.pending)}  # fmt: skip
