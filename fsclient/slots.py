"""``Slots``: a client connection's share of the server's in-flight limits.

The server announces how many file sessions, and apart from them how many requests, one
connection may hold open (``VersionHandshakeResponse.max_in_flight``); it holds at most
``MAX_BATCHES_IN_FLIGHT`` small-file batches too. One more ends the whole connection with
``LIMIT_EXCEEDED``, so every call on a connection (``put``, ``get``, ``ls``, ``put_many``'s
windows, ...) waits here for a free slot instead. Slots free up when the server answers, and
when this client ends a session itself (a cancel, a download's verdict): the protocol calls
``wake`` then.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

from common import messages as m
from common.connection import FSConnection

ENDS_SESSION = (m.FileSyncCancel, m.FileSyncCheckHashResponse, m.Error)
"""What a client sends that may end one of its sessions, and so free a slot."""


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class Slots:
    def __init__(self, conn: FSConnection, loop: asyncio.AbstractEventLoop) -> None:
        self.conn = conn
        self.loop = loop
        self.waiters: dict[Callable[[], None], None] = {}
        """Callbacks waiting for a slot, in order."""
        self.failed = False

    def session_room(self) -> bool:
        """Another file session may be opened within the server's limit."""
        sessions = self.conn.sessions
        return len(sessions) < sessions.max_in_flight

    def request_room(self) -> bool:
        requests = self.conn.requests
        return len(requests) < requests.max_in_flight

    def batch_room(self) -> bool:
        """Another small-file batch may be sent: it is a request, and batches have a limit."""
        return not self.conn.batches.full and self.request_room()

    def when_room(self, callback: Callable[[], None]) -> None:
        """Run *callback* once a slot may have been freed; it checks again, and asks again
        if it must wait longer."""
        self.waiters[callback] = None

    def wake(self) -> None:
        waiting = list(self.waiters)
        self.waiters.clear()
        for callback in waiting:
            callback()

    def sent(self, msg: m.Message) -> None:
        """This client sent *msg*: if it ended a session, the waiters look again (soon, not
        from inside the caller's send)."""
        if self.waiters and isinstance(msg, ENDS_SESSION):
            self.loop.call_soon(self.wake)

    async def wait(self, room: Callable[[], bool]) -> None:
        """Return once *room()* (``session_room`` or ``request_room``), or the connection
        failed: the caller's send then raises its reason."""
        while not room() and not self.failed:
            fut: asyncio.Future[None] = self.loop.create_future()
            self.when_room(functools.partial(_resolve, fut))
            await fut

    def fail(self) -> None:
        """The connection is over: nobody waits any longer."""
        self.failed = True
        self.wake()
