"""Requests that once took a worker or the supervisor down: a list page too big for the
control channel, a subscription backlog of long paths, a flood of requests from one client."""

from __future__ import annotations

import asyncio
import time

import psutil

from common import messages as m
from fsclient import Client
from tests.conftest import run
from tests.rawclient import RawClient


def worker_pids(server) -> set[int]:
    return {p.pid for p in psutil.Process(server.pid).children() if p.name().startswith("fs-w")}


def test_huge_list_page_and_long_backlog_keep_the_worker(server_factory, tmp_path):
    server = server_factory("--workers", "1", "--store-size", "16MiB")
    before = worker_pids(server)
    long = "d" * 200
    pairs = []
    for n in range(3000):
        local = tmp_path / f"{n}.txt"
        local.write_bytes(b"same tiny content")  # stored once: only the index grows
        pairs.append((local, f"{long}/{n:05d}-{'x' * 30}.txt"))

    async def main():
        async with await Client.connect(server.address) as client:
            results = await client.put_many(pairs)
            assert not [r for r in results if isinstance(r, Exception)]
            stream = await client.subscribe(since=0)
            paths = [(await anext(stream)).entry.path for _ in range(3000)]
            assert paths == [remote for _, remote in pairs]
            assert len(await client.ls()) == 3000

    run(main())
    raw = RawClient(server.address, max_packet=1 << 20)
    raw.send(m.ListRequest(1, 10_000, "", ""))
    page = raw.expect(m.ListResponse)
    assert page.status is m.LookupStatus.OK and page.more and 0 < len(page.entries) < 3000
    raw.close()
    assert worker_pids(server) == before


def test_a_flood_of_requests_does_not_stall_other_clients(server_factory):
    server = server_factory("--workers", "1", "--store-size", "16MiB")

    async def fill():
        async with await Client.connect(server.address) as client:
            await asyncio.gather(*(client.put_bytes(b"%d" % n, f"f{n:04d}") for n in range(1000)))

    run(fill())
    flood = RawClient(server.address, max_packet=1 << 20)
    flood.send_raw(b"".join(flood.conn.send(m.ListRequest(rid, 10_000, "", ""))
                            for rid in range(1, 2001)))  # fmt: skip

    async def meanwhile() -> float:
        start = time.monotonic()
        async with await Client.connect(server.address) as client:
            await client.put_bytes(b"still served", "other.txt")
            assert (await client.stat("other.txt")).size == 12
        return time.monotonic() - start

    took = run(meanwhile())
    assert took < 3.0, f"another client waited {took:.1f} s"
    flood.close()
    assert server.stop() < 5.0
