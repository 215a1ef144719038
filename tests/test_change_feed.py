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
