"""The supervisor's change feed, seen through subscriptions: the backlog since a version, then
live changes from uploads and deletes made through other connections and other workers."""

from __future__ import annotations

import asyncio

from fsclient import Client
from tests.conftest import run


async def collect(stream, count: int, timeout: float = 10.0) -> list:
    async def take():
        return [await anext(stream) for _ in range(count)]

    return await asyncio.wait_for(take(), timeout)


def test_backlog_then_live_changes_across_workers(server_factory):
    server = server_factory("--workers", "2", "--store-size", "16MiB")

    async def main():
        writer = await Client.connect(server.address)
        await writer.put_bytes(b"one", "a.txt")
        await writer.put_bytes(b"two", "b.txt")
        await writer.put_bytes(b"three", "a.txt")  # a.txt's latest state replaces its first
        await writer.rm("b.txt")
        readers = [await Client.connect(server.address) for _ in range(2)]
        assert {r.worker_id for r in readers} == {0, 1}

        streams = [await r.subscribe(since=0) for r in readers]
        for stream in streams:
            assert stream.seq == 4
            backlog = await collect(stream, 2)
            assert [(n.entry.path, n.deleted, n.entry.version) for n in backlog] == [
                ("a.txt", False, 3),
                ("b.txt", True, 4),
            ]

        entry = await writer.put_bytes(b"four", "dir/c.txt")
        await writer.rm("a.txt")
        for stream in streams:
            live = await collect(stream, 2)
            assert [(n.entry.path, n.deleted) for n in live] == [("dir/c.txt", False),
                                                                ("a.txt", True)]  # fmt: skip
            assert live[0].entry.digest == entry.digest
            assert live[0].entry.version < live[1].entry.version

        resumed = await Client.connect(server.address)
        stream = await resumed.subscribe(since=4)
        assert [n.entry.path for n in await collect(stream, 2)] == ["dir/c.txt", "a.txt"]
        for client in [writer, *readers, resumed]:
            await client.close()

    run(main())


def test_other_shares_are_not_seen(server_factory):
    server = server_factory("--store-size", "16MiB")

    async def main():
        reader = await Client.connect(server.address, share="alpha")
        stream = await reader.subscribe()
        other = await Client.connect(server.address, share="beta")
        await other.put_bytes(b"secret", "x.txt")
        mine = await Client.connect(server.address, share="alpha")
        await mine.put_bytes(b"public", "y.txt")
        [note] = await collect(stream, 1)
        assert note.entry.path == "y.txt"
        assert [e.path for e in await reader.ls()] == ["y.txt"]
        for client in [reader, other, mine]:
            await client.close()

    run(main())


def test_since_ahead_of_the_share_is_refused(server):
    """A client that saw version 100 of a share now at version 1 saw another store."""
    import pytest

    from common.errors import Conflict

    async def main():
        async with await Client.connect(server.address) as client:
            await client.put_bytes(b"x", "x.txt")
            with pytest.raises(Conflict, match="ahead of this share's latest version 1"):
                await client.subscribe(since=100)

    run(main())


def test_a_subscriber_that_stops_reading_is_disconnected():
    """Unit test of the feed's back-pressure rule, with a stand-in connection."""
    from common import messages as m
    from common.errors import ErrorCode
    from fsserver.feed import ChangeFeed, Subscription
    from fsserver.store import Change, ChangePage

    class Conn:
        share, closing, origin = "s", False, -1

        def __init__(self):
            self.sent, self.failed, self.lag = [], None, False

        def send(self, msg):
            self.sent.append(msg)

        def call_store(self, on_result, op, *args):
            on_result(ChangePage((), False, 0))

        def when_writable(self, callback):
            callback()

        def lagging(self):
            return self.lag

        def fail(self, code, message):
            self.failed = code
            self.closing = True

    conn = Conn()
    watched = []
    feed = ChangeFeed(watched.append)
    Subscription(conn, feed, 1, 0).start()
    entry = m.FileEntry(1, 1, 0, 0o644, bytes(16), "a")
    feed.publish([Change("s", entry, False)])
    assert isinstance(conn.sent[-1], m.ChangeNotification) and conn.failed is None
    conn.lag = True
    feed.publish([Change("s", m.FileEntry(1, 2, 0, 0o644, bytes(16), "b"), False)])
    assert conn.failed is ErrorCode.LIMIT_EXCEEDED
    assert watched == [{"s": -1}]  # one subscriber: the supervisor skips its own changes


def test_a_client_is_not_sent_its_own_changes_but_sees_every_version(server):
    async def main():
        mine = await Client.connect(server.address)
        other = await Client.connect(server.address)
        stream = await mine.subscribe()
        own = await mine.put_bytes(b"mine", "mine.txt")
        theirs = await other.put_bytes(b"theirs", "theirs.txt")
        own_again = await mine.put_bytes(b"mine 2", "mine.txt")
        [note] = await collect(stream, 1)
        assert note.entry.path == "theirs.txt"
        assert own.version < note.entry.version == theirs.version < own_again.version
        assert stream.arrived() == []
        for client in (mine, other):
            await client.close()

    run(main())
