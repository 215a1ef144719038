"""``StoreCalls``: the supervisor answering the workers' store calls, and the change feed.

Workers batch their calls (``fsserver.rpc``); here each call runs on the ``Store``, its journal
records go to the persisting process (with a data dir), and its reply and the changes it made
go back to the workers in the order the store made them, and (``--fsync always``) only once
they are on disk (``Durability.deliver``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from fsserver.children import Child
from fsserver.durability import Durability
from fsserver.rpc import serve_call
from fsserver.store import Change, Store

CALL_SLICE = 256
REPLY_DELAY = 0.0001
"""Seconds a store reply may wait for others to share its control message."""


def reply_too_large(reply: tuple[int, bool, Any]) -> tuple[int, bool, Any]:
    return (reply[0], False, "store reply too large for the control channel")


class StoreCalls:
    def __init__(self, store: Store, workers: dict[int, Child],
                 durability: Durability | None) -> None:  # fmt: skip
        self.store = store
        self.workers = workers
        self.durability = durability
        self.loop = asyncio.get_running_loop()
        self.calls: deque[tuple[Child, list[Any]]] = deque()

    def queue(self, child: Child, batch: list[Any]) -> None:
        if not self.calls:
            self.loop.call_soon(self.serve)
        self.calls.append((child, batch))

    def serve(self) -> None:
        """Answer up to CALL_SLICE queued store calls, then let the loop run (accepts, other
        workers) before the next slice: a flood of calls from one client cannot stall it.

        A call's changes go out to the watching workers after every reply up to its own, and
        before the replies to later calls, so each worker sees changes and replies in the
        order the store made them (a sync client counts every version below its own latest
        as seen). Replies share a message only while they come quickly: once REPLY_DELAY has
        passed since the first reply of a message (checked after each call), the message
        leaves, so a worker can answer its client while the calls queued behind it run (a
        window of batches flows through the store one by one, not as a convoy)."""
        budget = CALL_SLICE
        clock = time.perf_counter
        while self.calls and budget > 0:
            child, batch = self.calls[0]
            now, rest = batch[:budget], batch[budget:]
            if rest:
                self.calls[0] = (child, rest)
            else:
                self.calls.popleft()
            budget -= len(now)
            replies: list[tuple[int, bool, Any]] = []
            started = clock()
            for call in now:
                if not (child.channel is not None and child.alive):
                    break
                replies.append(serve_call(self.store, child.index, call))
                self.log_changes()
                changes = self.store.take_changes(self.wanted)
                if changes or clock() - started >= REPLY_DELAY:
                    self.answer(child, replies)
                    replies, started = [], clock()
                self.publish(changes)
            if replies:
                self.answer(child, replies)
        if self.durability is not None:
            self.durability.send_log()
        if self.calls:
            self.loop.call_soon(self.serve)

    def log_changes(self) -> None:
        """The journal records of the store's last change, for the disk."""
        if self.durability is not None:
            self.durability.log_changes()

    def deliver(self, send: Callable[[], None]) -> None:
        """Send an answer now, or (--fsync always) once every change so far is on disk."""
        if self.durability is None:
            send()
        else:
            self.durability.deliver(send)

    def answer(self, child: Child, replies: list[tuple[int, bool, Any]]) -> None:
        def send() -> None:
            if child.channel is not None and child.alive:
                child.channel.send_batch("rpc", replies, oversize=reply_too_large)

        self.deliver(send)

    @staticmethod
    def takes(worker: Child, share: str, origin: int) -> bool:
        """*worker* is to be sent a change of *share* made by connection *origin*: it watches
        the share, and not only through that very connection (a client is not sent its own
        changes)."""
        watching = worker.watching
        return share in watching and origin != watching[share]

    def wanted(self, share: str, origin: int) -> bool:
        """Some worker is to be sent this change (see ``publish``)."""
        return any(w.alive and self.takes(w, share, origin) for w in self.workers.values())

    def publish(self, changes: list[Change]) -> None:
        """The change feed: each worker gets the changes of the shares it watches."""
        if not changes:
            return
        for worker in self.workers.values():
            if worker.watching and worker.channel is not None and worker.alive:
                mine = [c for c in changes if self.takes(worker, c.share, c.origin)]
                if mine:
                    self.deliver(lambda w=worker, m=mine: w.channel and w.channel.send_batch(
                        "feed", m))  # fmt: skip
