"""The change feed inside a worker: ``ChangeFeed`` fans the supervisor's commit and delete
broadcasts out to subscribed connections, and ``Subscription`` gives one client the backlog
since its sequence number, then the live changes, each version once and in order.

The supervisor only sends a worker the changes of shares it watches, less the changes made by
the connection that is a share's only subscriber there (it would drop them: a client is not
sent its own changes). A subscription starts watching *before* it asks for its backlog (the
watch message and the backlog call travel on one channel, in order), so no change can fall
between the two; changes that arrive while the backlog is on its way wait, and duplicates are
dropped by version.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from common import messages as m
from common.errors import ErrorCode
from fsserver.store import Change, ChangePage

log = logging.getLogger(__name__)

BACKLOG_PAGE = 1000


class Subscriber(Protocol):
    @property
    def origin(self) -> int: ...

    def deliver(self, change: Change) -> None: ...


Watched = dict[str, int | None]
"""Share -> the origin of its only subscriber in this worker, or None when it has several."""


class ChangeFeed:
    def __init__(self, on_watch: Callable[[Watched], None]) -> None:
        self.on_watch = on_watch
        self.subscribers: dict[str, set[Subscriber]] = {}

    def watched(self) -> Watched:
        """What the supervisor needs to know to send this worker only changes someone here
        will be sent: the shares, and for a share with one subscriber, its origin (a client
        is not sent its own changes, so a sync client's uploads need not come back at all)."""
        return {share: next(iter(group)).origin if len(group) == 1 else None
                for share, group in self.subscribers.items()}  # fmt: skip

    def add(self, share: str, subscriber: Subscriber) -> None:
        before = self.watched()
        self.subscribers.setdefault(share, set()).add(subscriber)
        after = self.watched()
        if after != before:
            self.on_watch(after)

    def remove(self, share: str, subscriber: Subscriber) -> None:
        group = self.subscribers.get(share)
        if group is None or subscriber not in group:
            return
        before = self.watched()
        group.discard(subscriber)
        if not group:
            del self.subscribers[share]
        after = self.watched()
        if after != before:
            self.on_watch(after)

    def publish(self, changes: list[Change]) -> None:
        for change in changes:
            for subscriber in list(self.subscribers.get(change.share, ())):
                subscriber.deliver(change)


class Connection(Protocol):
    share: str
    closing: bool
    origin: int

    def send(self, msg: m.Message) -> None: ...

    def call_store(self, on_result: Callable[[Any], None], op: str, *args: Any) -> None: ...

    def when_writable(self, callback: Callable[[], None]) -> None: ...

    def lagging(self) -> bool: ...

    def fail(self, code: ErrorCode, message: str) -> None: ...


class Subscription:
    """One client's subscription: backlog first, then live changes."""

    def __init__(self, conn: Connection, feed: ChangeFeed, request_id: int, since: int) -> None:
        self.conn = conn
        self.feed = feed
        self.request_id = request_id
        self.last = since
        self.live = False
        self.answered = False
        self.waiting: list[Change] = []

    @property
    def origin(self) -> int:
        return self.conn.origin

    def start(self) -> None:
        self.feed.add(self.conn.share, self)
        self._fetch()

    def stop(self) -> None:
        self.feed.remove(self.conn.share, self)

    def _fetch(self) -> None:
        self.conn.call_store(self._on_page, "changes_since", self.conn.share, self.last,
                             BACKLOG_PAGE)  # fmt: skip

    def _on_page(self, page: ChangePage) -> None:
        if self.conn.closing:
            return
        if not self.answered:
            self.answered = True
            if self.last > page.seq:
                self._refuse(page.seq)
                return
            if 0 < self.last < page.pruned:
                self._expired(page)
                return
            self.conn.send(m.SubscribeResponse(self.request_id, m.LookupStatus.OK, page.seq, ""))
        for change in page.changes:
            self._send(change)
        if page.more:  # the next page when the client has taken this one
            self.conn.when_writable(self._fetch)
            return
        self.live = True
        waiting, self.waiting = self.waiting, []
        for change in waiting:
            self._send(change)

    def deliver(self, change: Change) -> None:
        if self.live:
            self._send(change)
        else:
            self.waiting.append(change)

    def _refuse(self, seq: int) -> None:
        """A client ahead of the share saw another store (the server restarted empty)."""
        self.stop()
        self.conn.send(m.SubscribeResponse(
            self.request_id, m.LookupStatus.CONFLICT, seq,
            f"version {self.last} is ahead of this share's latest version {seq}: the store was "
            f"replaced; subscribe from 0",
        ))  # fmt: skip

    def _expired(self, page: ChangePage) -> None:
        """A client away longer than the tombstones are kept may have missed deletes."""
        self.stop()
        self.conn.send(m.SubscribeResponse(
            self.request_id, m.LookupStatus.EXPIRED, page.seq,
            f"version {self.last} is older than the oldest delete this share remembers "
            f"({page.pruned}): subscribe from 0 and compare every file",
        ))  # fmt: skip

    def _send(self, change: Change) -> None:
        if change.entry.version <= self.last or self.conn.closing:
            return
        if change.origin == self.conn.origin:
            # The client made this change and learnt its version from the reply; both reach
            # it in version order, so it still sees every version, once.
            self.last = change.entry.version
            return
        self.last = change.entry.version
        self.conn.send(m.ChangeNotification(change.deleted, change.entry))
        if self.conn.lagging():
            self.conn.fail(ErrorCode.LIMIT_EXCEEDED, "the client does not read its notifications")
