"""Requests that once took a worker or the supervisor down: a list page too big for the
control channel, a subscription backlog of long paths, a flood of requests from one client."""

from __future__ import annotations

import asyncio
import contextlib
import time

from common import messages as m
from common.codec import HEADER, decode_body
from fsclient import Client
from tests.conftest import run
from tests.rawclient import RawClient
from tests.serverproc import worker_pids

FLOOD = 4000
"""Requests in the flood: about 4 s of the store's time on a quiet 2-core machine, all of it
a margin for the other client to arrive in the middle."""


def test_huge_list_page_and_long_backlog_keep_the_worker(server_factory, tmp_path):
    server = server_factory("--workers", "1", "--store-size", "16MiB")
    before = worker_pids(server.pid)
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
    assert worker_pids(server.pid) == before


def last_of(raw: RawClient, count: int, timeout: float = 120.0) -> m.Message:
    """Read *count* packets off *raw* by their headers alone, and decode only the last one
    (decoding a flood of 1000-entry listings would take seconds)."""
    buf, pos, seen, last = bytearray(), 0, 0, b""
    deadline = time.monotonic() + timeout
    while True:
        while len(buf) - pos >= HEADER.size:
            length, _ = HEADER.unpack_from(buf, pos)
            if len(buf) - pos < length:
                break
            last, pos, seen = bytes(buf[pos : pos + length]), pos + length, seen + 1
        if seen == count:
            _, ptype = HEADER.unpack_from(last)
            return decode_body(ptype, memoryview(last)[HEADER.size :])
        del buf[:pos]
        pos = 0
        raw.sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = raw.sock.recv(1 << 20)
        assert chunk, f"the server closed the connection after {seen} of {count} replies"
        buf += chunk


def test_a_flood_of_requests_does_not_stall_other_clients(server_factory):
    """One client asks for FLOOD listings at once (seconds of the store's time); another
    client's upload is served in the middle of them, not after: the listings served after it
    (the last one at least) begin with its file. No clock decides: a server that served the
    whole flood first fails however fast it is."""
    server = server_factory("--workers", "1", "--store-size", "16MiB")

    async def fill():
        async with await Client.connect(server.address) as client:
            await asyncio.gather(*(client.put_bytes(b"%d" % n, f"f{n:04d}") for n in range(1000)))

    run(fill())
    flood = RawClient(server.address, max_packet=1 << 20)
    with contextlib.closing(flood):
        flood.send_raw(b"".join(flood.conn.send(m.ListRequest(rid, 10_000, "", ""))
                                for rid in range(1, FLOOD + 1)))  # fmt: skip

        async def meanwhile() -> float:
            start = time.monotonic()
            async with await Client.connect(server.address) as client:
                await client.put_bytes(b"still served", "another.txt")
                assert (await client.stat("another.txt")).size == 12
            return time.monotonic() - start

        took = run(meanwhile())
        last = last_of(flood, FLOOD)
        assert isinstance(last, m.ListResponse) and last.status is m.LookupStatus.OK, last
        assert last.entries[0].path == "another.txt", (
            f"the other client ({took:.1f} s) was served only after the whole flood"
        )
    assert server.stop() < 5.0
