"""``GET /api/v1/shares/{share}/changes``: the change feed as Server-Sent Events.

The FS protocol's ``Subscription`` does the work (backlog since *since*, then live changes,
each version once and in order); ``EventFeed`` stands in for its connection and writes each
of its packets as an event: ``ready`` (the share's latest version), then ``change``s.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from common import messages as m
from common.errors import ErrorCode
from fsserver.feed import Subscription

if TYPE_CHECKING:
    from fsserver.web.api import Call
    from fsserver.web.httpconn import HttpConnection

KEEP_ALIVE = 15.0
"""A comment line this often: proxies and browsers keep an idle stream open."""
CHECK_EVERY = 1.0
"""How often a stream checks that its token still opens the share (an FS connection is
checked as often)."""
LAG_BYTES = 4 << 20
"""A client that leaves this much unread is cut off (as an FS subscriber is)."""


class EventFeed:
    """The ``feed.Connection`` of one event stream."""

    def __init__(self, http: HttpConnection, share: str) -> None:
        self.http = http
        self.share = share
        self.origin = http.ctx.new_origin()
        self.ended = asyncio.Event()
        http.on_lost = self.ended.set  # (the stream ends at once, not at its next keep-alive)

    @property
    def closing(self) -> bool:
        return self.http.closed or self.ended.is_set()

    def send(self, msg: m.Message) -> None:
        if isinstance(msg, m.ChangeNotification):
            e = msg.entry
            self.event("change", {"path": e.path, "version": e.version, "size": e.size,
                                  "digest": e.digest.hex(), "deleted": msg.deleted})  # fmt: skip
        elif isinstance(msg, m.SubscribeResponse) and msg.status is m.LookupStatus.OK:
            self.event("ready", {"seq": msg.seq})
        elif isinstance(msg, m.SubscribeResponse):
            self.event("error", {"code": msg.status.name, "message": msg.message})
            self.ended.set()

    def event(self, kind: str, data: dict[str, Any]) -> None:
        self.write(f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode())

    def write(self, raw: bytes) -> None:
        self.http.send_data(raw)

    def call_store(self, on_result: Callable[[Any], None], op: str, *args: Any) -> None:
        def done(fut: asyncio.Future[Any]) -> None:
            if fut.exception() is None and not self.closing:
                on_result(fut.result())
            elif fut.exception() is not None:
                self.ended.set()

        self.http.ctx.rpc.call(op, *args).add_done_callback(done)

    def when_writable(self, callback: Callable[[], None]) -> None:
        async def later() -> None:
            await self.http.writable.wait()
            if not self.closing:
                callback()

        asyncio.get_running_loop().create_task(later())

    def lagging(self) -> bool:
        transport = self.http.transport
        return transport is not None and transport.get_write_buffer_size() > LAG_BYTES

    def fail(self, code: ErrorCode, message: str) -> None:
        self.event("error", {"code": code.name, "message": message})
        self.ended.set()


def revoked(call: Call) -> bool:
    tokens = call.ctx.tokens
    return tokens is not None and tokens.grant_of(call.token, call.share) is None


async def stream(call: Call) -> int:
    since = call.number("since", 0)
    http = call.req.conn
    http.start(200, [("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache"),
                     ("X-Accel-Buffering", "no")])  # fmt: skip
    feed = EventFeed(http, call.share)
    subscription = Subscription(feed, http.ctx.feed, 0, since)  # type: ignore[arg-type]
    subscription.start()
    quiet = 0.0
    try:
        while not feed.closing and not http.stopping:
            try:
                await asyncio.wait_for(feed.ended.wait(), CHECK_EVERY)
            except TimeoutError:
                quiet += CHECK_EVERY
            if revoked(call):
                feed.fail(ErrorCode.PERMISSION_DENIED, "the token was revoked")
            elif quiet >= KEEP_ALIVE:
                feed.write(b": keep-alive\n\n")
                quiet = 0.0
    finally:
        feed.ended.set()  # (a store reply still on its way writes nothing now)
        subscription.stop()
    if not http.closed:
        http.end()
    return 200
