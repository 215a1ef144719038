"""Peers that stop reading, over real sockets with small receive windows.

- A subscriber that never reads while many changes are made is dropped once 64 MiB wait
  unread for it; the server says so in its log and goes on serving the others (the unit test
  of ``test_change_feed`` uses a stand-in connection; this one is a real socket).
- A download's lease outlives its session until its bytes are on the wire (see
  ``fsserver/downloads.py``): while a slow client still reads a download, a delete or an
  overwrite of its file neither changes the bytes it reads nor frees their space for another
  upload; the space comes back once the download is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import random
import socket
import threading

import pytest

from common import messages as m
from common.codec import HEADER, decode_body
from common.digest import digest_of
from common.errors import ErrorCode, StoreFull
from common.limits import NO_FILE
from fsclient import Client
from fsserver.store.allocator import aligned
from tests.conftest import run
from tests.serverproc import ServerProcess, wait_for
from tests.test_limits import SlowReader

KiB = 1024
MiB = 1024 * KiB
USED = "fs_store_used_bytes"
ACTIVE = "fs_connections_active"
CHECK_HASHES_SENT = 'fs_sent_packets_total{packet_type="file_sync_check_hash"}'


class Frames:
    """Packets split by their headers only, for a client whose own state machine would drop
    what it must look at (the data of a session it ended)."""

    def __init__(self) -> None:
        self.pending = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, memoryview]]:
        """(packet type, body) of every packet *data* completes."""
        self.pending += data
        found, pos = [], 0
        view = memoryview(bytes(self.pending))
        while len(view) - pos >= HEADER.size:
            length, ptype = HEADER.unpack_from(view, pos)
            if len(view) - pos < length:
                break
            found.append((ptype, view[pos + HEADER.size : pos + length]))
            pos += length
        del self.pending[:pos]
        return found


# -- a subscriber that stops reading ---------------------------------------------------------

LONG_PATHS = [f"{n:03d}/" + "/".join(["x" * 254] * 15) for n in range(1000)]
"""3828 bytes each: one notification is about 3.9 KB, so 64 MiB are some 17 000 of them."""


def healthy_subscriber(address: str, seen: queue.Queue[object], ready: threading.Event) -> None:
    """A library client in its own thread (its own loop) that reads every notification,
    until the one for ``marker.txt``; puts how many it read (or what failed) on *seen*."""

    async def main() -> int:
        async with await Client.connect(address) as client:
            stream = await client.subscribe()
            ready.set()
            count = 0
            async for note in stream:
                count += 1
                if note.entry.path == "marker.txt":
                    return count
        raise AssertionError("unreachable")

    try:
        seen.put(asyncio.run(asyncio.wait_for(main(), 120)))
    except BaseException as exc:
        seen.put(exc)


def drain(sock: socket.socket) -> tuple[bool, tuple[int, memoryview] | None]:
    """Read *sock* to its end: whether it ended with a clean close (not a reset), and its last
    whole packet."""
    frames, last = Frames(), None
    sock.settimeout(10)
    while True:
        try:
            data = sock.recv(1 << 20)
        except ConnectionResetError:
            return False, last
        if not data:
            return True, last
        for packet in frames.feed(data):
            last = packet


def test_a_subscriber_that_never_reads_is_dropped_and_the_others_are_served(
    server_factory, tmp_path
):
    server = server_factory("--workers", "1", "--store-size", "64MiB")
    stalled = SlowReader(server.address)  # a small receive window, and it never reads again
    stalled.send(m.SubscribeRequest(1, 0))
    assert stalled.expect(m.SubscribeResponse).status is m.LookupStatus.OK
    seen: queue.Queue[object] = queue.Queue()
    ready = threading.Event()
    reader = threading.Thread(target=healthy_subscriber, args=(server.address, seen, ready))
    reader.start()
    small = tmp_path / "small.txt"
    small.write_bytes(b"same")
    gone = (f"closing connection from 127.0.0.1:{stalled.sock.getsockname()[1]}: "
            "the client does not read its notifications")  # fmt: skip

    async def flood() -> int:
        async with await Client.connect(server.address) as writer:
            written = 0
            while gone not in server.log.text():
                assert written < 40_000, "64 MiB of notifications went unread, and no drop"
                results = await writer.put_many([(small, path) for path in LONG_PATHS])
                assert all(isinstance(r, m.FileEntry) for r in results), results[:3]
                written += len(results)
            await writer.put_bytes(b"after the drop", "marker.txt")
            assert len(await writer.ls()) == len(LONG_PATHS) + 1
            return written + 1

    try:
        assert ready.wait(30), "the healthy subscriber did not start"
        written = run(flood())
        count = seen.get(timeout=120)
    finally:
        reader.join(130)
    assert count == written, count  # every change reached the subscriber that reads
    clean, last = drain(stalled.sock)
    stalled.sock.close()
    if clean:  # it took everything before the server gave up on it: the Error comes last
        assert last is not None
        assert decode_body(last[0], last[1]) == m.Error(
            ErrorCode.LIMIT_EXCEEDED, NO_FILE, "the client does not read its notifications"
        )
    wait_for(lambda: server.metric_total(ACTIVE) == 0, 10, "every connection to be gone")

    async def still_serving() -> None:
        async with await Client.connect(server.address) as client:
            assert (await client.stat("marker.txt")).digest == digest_of(b"after the drop")

    run(still_serving())


# -- download leases and a slow reader -------------------------------------------------------


def put(server: ServerProcess, data: bytes, path: str) -> m.FileEntry:
    async def main() -> m.FileEntry:
        async with await Client.connect(server.address) as client:
            return await client.put_bytes(data, path)

    return run(main())


def refused_for_space(server: ServerProcess, size: int) -> None:
    with pytest.raises(StoreFull):
        put(server, os.urandom(size), "does-not-fit.bin")


def rm(server: ServerProcess, path: str) -> None:
    async def main() -> None:
        async with await Client.connect(server.address) as client:
            await client.rm(path)

    run(main())


def answered(reader: SlowReader) -> None:
    """Wait until the server's answer to a DownloadRequest is here, without taking it: the
    server has opened the download (its lease is taken) and is sending."""
    reader.sock.settimeout(10)
    assert reader.sock.recv(1, socket.MSG_PEEK), "the server closed the connection"


def used_bytes_reach(server: ServerProcess, expected: int, what: str) -> None:
    wait_for(lambda: server.metric(USED) == expected, 10, what)


def test_an_overwrite_and_a_delete_during_a_slow_download_neither_change_nor_free_its_bytes(
    server_factory,
):
    """A 64 MiB store. While a slow client downloads the 24 MiB of x.bin, x.bin gets a new
    version (two copies are held now: a third does not fit), then is deleted (the new version
    goes; the one being read stays, so 48 MiB in one piece do not fit). The client reads the
    first version, whole; then its space comes back, and the 48 MiB fit where it was."""
    server = server_factory("--workers", "1", "--store-size", "64MiB", "--keep-versions", "0")
    first = random.Random(1).randbytes(24 * MiB)
    put(server, first, "x.bin")
    reader = SlowReader(server.address)
    with contextlib.closing(reader.sock):
        reader.send(m.DownloadRequest(1, 0, None, "x.bin"))
        answered(reader)
        second = random.Random(2).randbytes(24 * MiB)
        assert put(server, second, "x.bin").digest == digest_of(second)
        assert server.metric(USED) == 2 * aligned(24 * MiB)  # the first is still held
        refused_for_space(server, 24 * MiB)
        rm(server, "x.bin")
        assert server.metric(USED) == aligned(24 * MiB)  # the second went, the first stays
        refused_for_space(server, 48 * MiB)
        received, _ = reader.download(1, 1 << 40)  # reads the rest, verifies, answers OK
        assert received == first
    used_bytes_reach(server, 0, "the first version's space to come back")
    put(server, os.urandom(48 * MiB), "big.bin")


def test_a_download_ended_early_holds_its_bytes_until_they_are_sent(server_factory):
    """The server has written a whole 7 MiB file (under its 8 MiB write high-water mark, so
    it keeps reading) to a client that reads nothing; the kernel's buffers hold at most about
    4 MiB of it, the transport the rest. The client ends the session with an Error and the
    file is deleted: the session is over, but the transport still holds views of the file's
    extent, so the extent stays taken (a 12 MiB upload that needs it is refused) until the
    client has read what was sent. What it reads is the file's own bytes; then the space is
    free."""
    server = server_factory("--workers", "1", "--store-size", "16MiB", "--keep-versions", "0")
    content = random.Random(3).randbytes(7 * MiB)
    put(server, content, "x.bin")
    reader = SlowReader(server.address)
    frames, received, pong = Frames(), bytearray(), None
    with contextlib.closing(reader.sock):
        reader.send(m.DownloadRequest(1, 0, None, "x.bin"))
        wait_for(lambda: server.metric(CHECK_HASHES_SENT, 0.0) == 1, 10,
                 "the server to have written the whole file")  # fmt: skip
        reader.send(m.Error(ErrorCode.INTERNAL, 1, "enough"))  # ends the session, unread
        wait_for(lambda: "reported error INTERNAL: enough" in server.log.text(), 10,
                 "the server to end the session")  # fmt: skip
        rm(server, "x.bin")
        assert server.metric(USED) == aligned(7 * MiB)
        refused_for_space(server, 12 * MiB)
        reader.send(m.Ping(9, False))  # its answer follows whatever was queued before it
        reader.sock.settimeout(10)
        while pong is None:
            data = reader.sock.recv(1 << 20)
            assert data, "the server closed the connection"
            for ptype, body in frames.feed(data):
                if ptype == m.PacketType.FILE_SYNC_DATA:
                    assert int.from_bytes(body[:4], "big") == 1
                    received += body[4:]
                elif ptype not in (
                    m.PacketType.DOWNLOAD_RESPONSE,
                    m.PacketType.FILE_SYNC_CHECK_HASH,
                ):
                    pong = decode_body(ptype, body)
        assert pong == m.Ping(9, True)
        assert received == content
        used_bytes_reach(server, 0, "the extent to be released once its bytes were sent")
        put(server, os.urandom(12 * MiB), "big.bin")
