"""Fan-out: one share, many subscribed connections, every change to each of them once and in
version order (issue 13). The figures (how soon they all hold a new file) are the bench's
(``python -m bench --suite latency``), not this test's."""

from __future__ import annotations

import asyncio

from fsclient import Client
from tests.conftest import run
from tests.serverproc import eventually

SUBSCRIBERS = 200
CHANGES = 100


async def take_until(stream, last: int, timeout: float = 60.0) -> list:
    """The notifications up to the one of version *last*, in the order they came."""

    async def take():
        notes = []
        while not notes or notes[-1].entry.version < last:
            notes.append(await anext(stream))
        return notes

    return await asyncio.wait_for(take(), timeout)


def test_200_subscribers_each_get_every_change_once_in_order(server_factory):
    server = server_factory("--workers", "2", "--store-size", "64MiB")

    async def main():
        readers = await asyncio.gather(*(Client.connect(server.address, share="fan")
                                         for _ in range(SUBSCRIBERS)))  # fmt: skip
        assert {r.worker_id for r in readers} == {0, 1}  # both workers fan out
        streams = await asyncio.gather(*(r.subscribe() for r in readers))
        await eventually(lambda: server.metric_total("fs_subscribers") == SUBSCRIBERS, 10.0,
                         f"the server to count {SUBSCRIBERS} subscribers")  # fmt: skip
        async with await Client.connect(server.address, share="fan") as writer:
            expected = []
            for i in range(CHANGES):
                if i % 10 == 9:  # deletes travel the same way
                    path = f"f{i - 1:03d}.txt"
                    expected.append((path, True, await writer.rm(path)))
                else:
                    entry = await writer.put_bytes(b"%d" % i, f"f{i:03d}.txt")
                    expected.append((entry.path, False, entry.version))
            # a last change marks the end: what came before it is every notification sent
            end = await writer.put_bytes(b"end", "end.txt")
            got = await asyncio.gather(*(take_until(s, end.version) for s in streams))
        for notes in got:
            assert [(n.entry.path, n.deleted, n.entry.version) for n in notes[:-1]] == expected
            assert notes[-1].entry.version == end.version
        await asyncio.gather(*(r.close() for r in readers))

    run(main())


def test_a_download_buffer_fits_the_file(tmp_path):
    """Each subscriber downloads every new file: a small one must not cost a 1 MiB buffer,
    and a big one still gets a whole chunk once the server says how big it is."""
    from common import messages as m
    from fsclient.localfiles import CHUNK
    from fsclient.transfer import FIRST_BUFFER, DownloadTarget

    sizes = {}
    for size in (0, 4096, 5 * CHUNK):
        target = DownloadTarget(tmp_path / f"f{size}")
        target.open()
        assert len(target.sink.buffer) == FIRST_BUFFER < CHUNK
        target.entry = m.FileEntry(size, 1, 0, 0o644, bytes(16), f"f{size}")
        sizes[size] = len(target.begin(0).buffer)
        target.discard()
    assert sizes == {0: FIRST_BUFFER, 4096: FIRST_BUFFER, 5 * CHUNK: CHUNK}
    assert list(tmp_path.iterdir()) == []  # discarded: no temp file left
