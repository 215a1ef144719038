"""What a live client reads when the server gets SIGTERM: ``Error(SHUTTING_DOWN, 0xFFFFFFFF,
"server is shutting down")``, then the end of the connection (PROTOCOL.md section 5.10). A
subscribed client, a client half-way through an upload, one still busy sending (which must
not lose the Error to a reset), the library's typed error, and a live ``fsclient sync``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal

import pytest

from common import messages as m
from common.errors import ErrorCode, RemoteError
from common.limits import ANY_VERSION, NO_FILE
from fsclient import Client
from tests.conftest import run
from tests.rawclient import Closed, RawClient
from tests.serverproc import ServerProcess, eventually, wait_for
from tests.syncproc import SyncProcess

MiB = 1 << 20
BYE = m.Error(ErrorCode.SHUTTING_DOWN, NO_FILE, "server is shutting down")
BYE_TEXT = "server error SHUTTING_DOWN: server is shutting down"
SAID_BYE = ": server is shutting down\n"
"""The end of the worker's log line for a connection it ends so."""


@pytest.fixture
def server(server_factory) -> ServerProcess:
    return server_factory("--workers", "1", "--store-size", "256MiB")


def terminate(server: ServerProcess) -> None:
    server.proc.send_signal(signal.SIGTERM)


def stopped_cleanly(server: ServerProcess) -> None:
    assert server.proc.wait(10) == 0
    assert "fsserver stopped" in server.log.text()


def test_a_subscribed_client_reads_shutting_down_then_the_end(server):
    raw = RawClient(server.address)
    try:
        raw.send(m.SubscribeRequest(1, 0))
        assert raw.expect(m.SubscribeResponse) == m.SubscribeResponse(1, m.LookupStatus.OK, 0, "")
        terminate(server)
        assert raw.next_event() == BYE
        with pytest.raises(Closed):
            raw.next_event()
    finally:
        raw.close()
    stopped_cleanly(server)


def test_a_client_half_way_through_an_upload_reads_shutting_down(server):
    raw = RawClient(server.address, max_packet=MiB)
    try:
        raw.send(m.FileSyncInit(1, 4 * MiB, 0, 0o644, ANY_VERSION, None, "half.bin"))
        assert raw.expect(m.FileSyncInitResponse).status is m.InitStatus.ACCEPTED
        for _ in range(2):
            raw.send(m.FileSyncData(1, os.urandom(MiB - 9)))
        raw.send(m.Ping(5, False))  # answered once the server has read the data before it
        assert raw.expect(m.Ping) == m.Ping(5, True)
        terminate(server)
        assert raw.next_event() == BYE
        with pytest.raises(Closed):  # a close (FIN), not a reset
            raw.next_event()
    finally:
        raw.close()
    stopped_cleanly(server)


def test_a_client_whose_upload_bytes_wait_unread_gets_the_error_and_a_close_not_a_reset(server):
    """The client also downloads, and does not read it: the server's replies wait, so it
    stops reading the client (back-pressure), and upload bytes the client sent wait unread
    in the server's socket. A socket closed so is reset, and the reset would overtake the
    Error. The server lingers instead (it reads and drops them), so the client reads every
    byte it was sent, the Error last, then a clean close."""
    stored = os.urandom(24 * MiB)
    run(put_bytes(server, stored, "down.bin"))
    raw = RawClient(server.address, max_packet=MiB)
    try:
        raw.send(m.FileSyncInit(1, 32 * MiB, 0, 0o644, ANY_VERSION, None, "up.bin"))
        assert raw.expect(m.FileSyncInitResponse).status is m.InitStatus.ACCEPTED
        raw.send(m.DownloadRequest(2, 0, None, "down.bin"))
        piece = raw.conn.data_header(1, MiB - 9) + os.urandom(MiB - 9)
        raw.sock.setblocking(False)
        unread = 0
        with contextlib.suppress(BlockingIOError):  # until the server stops taking them
            while True:
                assert unread < 32 * MiB, "the server kept reading"
                unread += raw.sock.send(piece)
        raw.sock.setblocking(True)
        terminate(server)
        assert raw.error_or_close(timeout=30) == BYE  # after the download's bytes
        raw.sock.settimeout(10)
        assert raw.sock.recv(1 << 16) == b""  # a close; a reset would raise
    finally:
        raw.close()
    stopped_cleanly(server)


async def put_bytes(server: ServerProcess, data: bytes, path: str) -> None:
    async with await Client.connect(server.address) as client:
        await client.put_bytes(data, path)


def test_the_library_raises_the_servers_reason_mid_upload_and_stops_sending(
    server, tmp_path, caplog
):
    """The upload is mid-way when the server stops: ``put`` raises ``RemoteError`` with the
    code and message, not a state-machine complaint or a reset, and it stops writing at once
    (a transport that failed logs a warning per write it is still given)."""
    local = tmp_path / "big.bin"
    with open(local, "wb") as f:
        for _ in range(20):
            f.write(os.urandom(10 * MiB))
    signalled: list[int] = []

    def on_progress(done: int, size: int) -> None:
        if not signalled and done >= 20 * MiB:
            signalled.append(done)
            terminate(server)
            # the upload goes on only once the server has said goodbye: it is mid-way then
            wait_for(lambda: SAID_BYE in server.log.text(), 10, "the server's goodbye")

    async def main() -> None:
        async with await Client.connect(server.address) as client:
            with pytest.raises(RemoteError) as stopped:
                await client.put(local, "big.bin", progress=on_progress)
            assert (stopped.value.code, str(stopped.value)) == (ErrorCode.SHUTTING_DOWN, BYE_TEXT)

    with caplog.at_level(logging.WARNING):
        run(main())
    assert signalled and signalled[0] < 200 * MiB
    assert "socket.send() raised exception" not in caplog.text
    stopped_cleanly(server)


def test_the_library_fails_a_subscription_and_every_later_call_with_the_reason(server):
    async def main() -> None:
        subscriber = await Client.connect(server.address)
        idle = await Client.connect(server.address)
        stream = await subscriber.subscribe()
        terminate(server)
        with pytest.raises(RemoteError) as ended:
            await asyncio.wait_for(anext(stream), 10)
        assert (ended.value.code, str(ended.value)) == (ErrorCode.SHUTTING_DOWN, BYE_TEXT)
        await eventually(lambda: idle.proto.failure is not None, 10, "the idle client's Error")
        with pytest.raises(RemoteError, match=BYE_TEXT):
            await idle.ls()
        for client in (subscriber, idle):
            await client.close()

    run(main())
    stopped_cleanly(server)


def test_a_live_sync_client_says_why_and_keeps_trying(server, tmp_path):
    folder = tmp_path / "live"
    folder.mkdir()
    sync = SyncProcess(folder, server.address).start()
    try:
        terminate(server)
        stopped_cleanly(server)
        wait_for(lambda: BYE_TEXT in sync.log.text(), 10, "the sync client's line")
        wait_for(lambda: "cannot reach" in sync.log.text(), 10, "a retry")
        assert sync.proc is not None and sync.proc.poll() is None  # it waits for the server
    finally:
        assert sync.stop() == 0
    assert "Traceback" not in sync.log.text()
