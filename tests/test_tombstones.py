"""Tombstones are kept for ``--tombstone-days``, then forgotten; a client that was away longer
is told so (``EXPIRED``) and compares every file instead of trusting its state: it deletes what
the server deleted while it was away, and does not bring it back."""

from __future__ import annotations

import pytest

from common.errors import HistoryExpired
from fsclient import Client
from tests.conftest import run
from tests.serverproc import start_server, wait_for
from tests.syncproc import files, started, status

KEEP_DAYS = "0.00001"  # under a second


def listing(address: str) -> list[str]:
    async def ls() -> list[str]:
        async with await Client.connect(address) as client:
            return sorted(e.path for e in await client.ls())

    return run(ls())


def test_a_subscription_older_than_the_kept_tombstones_is_refused_as_expired(server_factory):
    server = server_factory("--tombstone-days", KEEP_DAYS, "--store-size", "8MiB")

    async def scenario() -> int:
        async with await Client.connect(server.address) as client:
            first = (await client.put_bytes(b"x", "x.txt")).version
            await client.put_bytes(b"y", "y.txt")
            await client.rm("x.txt")
            await client.put_bytes(b"z", "z.txt")  # (a share's latest change is always kept)
        return first

    first = run(scenario())
    wait_for(lambda: "forgot 1 tombstones" in server.log.text(), 10, "the tombstone pruned")

    async def subscribe(since: int) -> int:
        async with await Client.connect(server.address) as client:
            stream = await client.subscribe(since)
            return stream.seq

    with pytest.raises(HistoryExpired, match="older than the oldest delete"):
        run(subscribe(first))
    assert run(subscribe(0)) == 4  # from 0, the whole state: nothing missed
    assert run(subscribe(3)) == 4  # a client that saw the delete goes on as usual


@pytest.mark.parametrize("restart", [False, True], ids=["live", "across-a-restart"])
def test_a_client_away_longer_than_the_tombstones_deletes_what_was_deleted(tmp_path, restart):
    args = ("--tombstone-days", KEEP_DAYS, "--store-size", "16MiB",
            "--data-dir", str(tmp_path / "data"))  # fmt: skip
    server = start_server(*args)
    a, b = started(tmp_path, server.address, "A", "B")
    try:
        (a.folder / "keep.txt").write_text("kept")
        (a.folder / "gone.txt").write_text("deleted while B is away")
        wait_for(lambda: sorted(files(b.folder)) == ["gone.txt", "keep.txt"], 15, "B in sync")
        # and recorded in its state (a file is renamed into place a moment before that)
        wait_for(lambda: "files in sync:   2" in status(b.folder), 15, "B's state")
        b.stop()
        (a.folder / "gone.txt").unlink()
        wait_for(lambda: listing(server.address) == ["keep.txt"], 15, "the delete on the server")
        (a.folder / "later.txt").write_text("a change after the delete")
        wait_for(lambda: "forgot 1 tombstones" in server.log.text(), 15, "the tombstone pruned")
        if restart:
            server.stop()
            server = start_server(*args)
            a.stop()
        b.rebind(server.address)
        b.start()
        try:
            wait_for(lambda: sorted(files(b.folder)) == ["keep.txt", "later.txt"], 15,
                     "B to delete gone.txt")  # fmt: skip
        except AssertionError:
            raise AssertionError(f"B: {b.log.text()}\nserver: {server.log.text()}") from None
        assert listing(server.address) == ["keep.txt", "later.txt"]
        assert "away longer than the server keeps deletes" in b.log.text()
    finally:
        a.stop()
        b.stop()
        server.stop()
        server.kill_group()


def test_a_client_away_longer_keeps_a_file_it_changed(tmp_path, server_factory):
    """The full rescan still lets a local edit win over a delete it never saw."""
    server = server_factory("--tombstone-days", KEEP_DAYS, "--store-size", "8MiB")
    a, b = started(tmp_path, server.address, "A", "B")
    try:
        (a.folder / "doc.txt").write_text("v1")
        wait_for(lambda: files(b.folder).get("doc.txt") == b"v1", 15, "B in sync")
        wait_for(lambda: "files in sync:   1" in status(b.folder), 15, "B's state")
        b.stop()
        (a.folder / "doc.txt").unlink()
        wait_for(lambda: listing(server.address) == [], 15, "the delete on the server")
        (a.folder / "later.txt").write_text("a change after the delete")
        (b.folder / "doc.txt").write_text("edited on B while away")
        wait_for(lambda: "forgot 1 tombstones" in server.log.text(), 15, "the tombstone pruned")
        b.start()
        wait_for(lambda: files(a.folder).get("doc.txt") == b"edited on B while away", 15,
                 "B's edit on A")  # fmt: skip
    finally:
        a.stop()
        b.stop()


def test_pruning_frees_index_entries(server_factory):
    server = server_factory("--tombstone-days", KEEP_DAYS, "--store-size", "8MiB",
                            "--max-files", "2")  # fmt: skip

    async def churn() -> None:
        async with await Client.connect(server.address) as client:
            await client.put_bytes(b"1", "one.txt")
            await client.put_bytes(b"2", "two.txt")
            await client.rm("one.txt")  # its tombstone still takes a place in the index
            await client.put_bytes(b"2 again", "two.txt")

    run(churn())
    wait_for(lambda: "forgot 1 tombstones" in server.log.text(), 10, "the tombstone pruned")

    async def third() -> int:
        async with await Client.connect(server.address) as client:
            return (await client.put_bytes(b"3", "three.txt")).version

    assert run(third()) == 5
