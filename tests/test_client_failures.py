"""The client when things go wrong: the connection drops, the caller gives up, a download
fails verification, the local file is no regular file."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from common.errors import FSError, HashMismatch
from fsclient import Client
from fsclient.protocol import ConnectionLost
from tests.conftest import run
from tests.serverproc import ServerProcess, eventually, server_children


def kill_workers(server, sig: int = signal.SIGKILL) -> None:
    for child in server_children(server.pid):
        if child.name().startswith("fs-worker"):
            os.kill(child.pid, sig)


def test_every_pending_and_later_call_fails_when_the_connection_drops(server, tmp_path):
    pairs = []
    for n in range(300):
        local = tmp_path / f"{n}"
        local.write_bytes(os.urandom(2000))
        pairs.append((local, f"f{n}"))

    async def main():
        client = await Client.connect(server.address)
        client.dial = None  # no reconnecting (tests/test_resume.py has that)
        kill_workers(server, signal.SIGSTOP)  # nothing is answered now: every upload pends
        uploads = asyncio.ensure_future(client.put_many(pairs, window=8))
        await asyncio.sleep(0)  # let the first uploads go out
        kill_workers(server)
        results = await asyncio.wait_for(uploads, 10)
        assert len(results) == len(pairs)
        assert all(isinstance(r, FSError) for r in results)
        for call in (client.ls(), client.stat("f0"), client.put_bytes(b"x", "x"), client.ping()):
            with pytest.raises(ConnectionLost):
                await asyncio.wait_for(call, 5)
        await client.close()

    run(main())


def cancelled_sessions(server: ServerProcess) -> float:
    """Upload sessions the server saw cancelled by the client."""
    return server.metric('fs_sync_sessions_total{direction="upload",outcome="cancelled"}', 0.0)


def test_a_cancelled_put_gives_its_reservation_back(server_factory, tmp_path):
    server = server_factory("--store-size", "48MiB")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(40 * 1024 * 1024))

    async def main():
        async with await Client.connect(server.address) as client:
            task = asyncio.ensure_future(client.put(big, "big.bin"))
            await asyncio.sleep(0)  # the Init is on its way; cancel before the answer
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # the late answer is handled: the session is cancelled, then its space freed
            await eventually(lambda: cancelled_sessions(server)
                             and server.metric("fs_store_used_bytes") == 0,
                             10, "the space to come back")  # fmt: skip
            other = tmp_path / "other.bin"
            other.write_bytes(os.urandom(40 * 1024 * 1024))
            assert (await client.put(other, "other.bin")).size == 40 * 1024 * 1024

    run(main())


def test_a_download_that_fails_verification_leaves_no_file(server, tmp_path, monkeypatch):
    import fsclient.transfer as transfer

    async def main():
        async with await Client.connect(server.address) as client:
            await client.put_bytes(b"genuine bytes", "doc.txt")
            real_finish = transfer.DownloadTarget.finish
            monkeypatch.setattr(transfer.DownloadTarget, "finish",
                                lambda self: (real_finish(self), b"\0" * 16)[1])  # fmt: skip
            with pytest.raises(HashMismatch):
                await client.get("doc.txt", tmp_path / "doc.txt")

    run(main())
    assert os.listdir(tmp_path) == []


def test_put_refuses_a_fifo_without_blocking(server, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    async def main():
        async with await Client.connect(server.address) as client:
            with pytest.raises(IsADirectoryError, match="not a regular file"):
                await asyncio.wait_for(client.put(fifo, "pipe"), 5)

    run(main())
