"""The receive low-water mark (``common.sockqueues``): a reader waits for many payload bytes at
a time, but never for more than are sure to come, or a connection would stall.

The stall it guards against was real: a mark set when a buffer was handed out, for the whole
rest of a payload, outlived a short read (libuv goes back to waiting without asking for
another buffer), and the server waited for bytes the client had no reason to send.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import struct
import sys
import termios
import threading
import time

import pytest

from common import messages as m
from common.digest import digest_of
from common.limits import ANY_VERSION
from common.sockqueues import CAP, MIN, RecvWater
from fsclient import Client
from tests.conftest import run
from tests.rawclient import RawClient
from tests.serverproc import wait_for

KiB = 1024


class Recorder:
    def __init__(self, fail: bool = False) -> None:
        self.marks: list[int] = []
        self.fail = fail

    def setsockopt(self, level: int, option: int, value: int, /) -> None:
        assert (level, option) == (socket.SOL_SOCKET, socket.SO_RCVLOWAT)
        if self.fail:
            raise OSError("not here")
        self.marks.append(value)


def test_the_mark_is_the_payload_due_capped_and_set_only_when_it_changes():
    sock = Recorder()
    water = RecvWater(sock)
    for due in (0, MIN - 1, MIN, 10 * CAP, CAP + 1, 3 * KiB, 0):
        water.expect(due)
    assert sock.marks == [MIN, CAP, 1]  # (small rests and "anything" read as they come)
    failing = Recorder(fail=True)
    water = RecvWater(failing)
    water.expect(CAP)
    water.expect(2 * CAP)
    assert water.sock is None and water.current == 1  # gave up quietly: reads as it comes


class Transport:
    def __init__(self, tls: bool) -> None:
        self.extra = {"socket": Recorder(), "ssl_object": object() if tls else None}

    def get_extra_info(self, name: str) -> object:
        return self.extra[name]


def test_no_mark_on_tls():
    """On TLS the socket's bytes are ciphertext, and the TLS layer may hold part of a record:
    a mark counted in plaintext could wait for bytes that never come (a TLS test stalled)."""
    plain, tls = RecvWater.of(Transport(tls=False)), RecvWater.of(Transport(tls=True))
    plain.expect(CAP)
    tls.expect(CAP)
    assert plain.current == CAP and tls.sock is None and tls.current == 1


def in_flight(sock: socket.socket) -> int:
    """Bytes *sock* has sent that the peer's kernel has not acknowledged yet, or not sent."""
    return int.from_bytes(fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, bytes(4)), sys.byteorder)


@pytest.mark.parametrize("first, size", [(250 * KiB, 300 * KiB), (600 * KiB, 700 * KiB),
                                         (CAP + 1, 2 * CAP), (MIN, MIN + 1)])  # fmt: skip
def test_a_payload_that_pauses_short_of_the_mark_still_completes(server, first, size):
    """The client sends part of one data packet, waits until all of it is in the server's
    kernel (whether the server reads it at once or waits for more), and only then the rest
    and the CheckHash: the server must not wait for more than the rest."""
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    raw = RawClient(server.address, max_packet=1 << 20)
    raw.send(m.FileSyncInit(1, size, 0, 0o644, ANY_VERSION, None, "paused.bin"))
    assert raw.expect(m.FileSyncInitResponse).status is m.InitStatus.ACCEPTED
    wire = raw.conn.frame_data(1, memoryview(data))
    assert len(wire) < size + 64  # one data packet
    cut = len(wire) - size + first
    raw.send_raw(wire[:cut])
    wait_for(lambda: in_flight(raw.sock) == 0, 10.0, "the first part to reach the server")
    started = time.monotonic()
    raw.send_raw(wire[cut:])
    raw.send(m.FileSyncCheckHash(1, digest_of(data)))
    assert raw.expect(m.FileSyncCheckHashResponse, timeout=10.0).status is m.HashStatus.OK
    raw.expect(m.FileSyncFinish)
    assert time.monotonic() - started < 10.0
    raw.close()


class PausingRelay:
    """Passes one connection's bytes both ways; from the server, it stops *first* bytes into
    the payload of the first data packet, until the client's kernel holds all it was sent,
    then passes the rest."""

    def __init__(self, server: str, first: int) -> None:
        host, port = server.rsplit(":", 1)
        self.target = (host, int(port))
        self.first = first
        self.paused = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            client, _ = self.listener.accept()
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream), daemon=True).start()
            self._down(upstream, client)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(1 << 16):
                dst.sendall(data)

    def _down(self, src: socket.socket, dst: socket.socket) -> None:
        stream = bytearray()  # what came and is not passed on yet, from a packet's start
        cut = None
        with contextlib.suppress(OSError):
            while cut is None and (data := src.recv(1 << 16)):
                stream += data
                whole, cut = self._scan(stream)
                dst.sendall(stream[:whole])
                del stream[:whole]
                if cut is not None:
                    cut -= whole
            if cut is None:
                return
            dst.sendall(stream[:cut])
            wait_for(lambda: in_flight(dst) == 0, 10.0, "the first part to reach the client")
            self.paused.set()
            dst.sendall(stream[cut:])
            self._pipe(src, dst)

    def _scan(self, stream: bytearray) -> tuple[int, int | None]:
        """(bytes of whole packets before the first data packet, where to pause once the
        stream holds that far) in *stream* (packets: u32 length, u8 type)."""
        pos = 0
        while pos + 5 <= len(stream):
            length, ptype = struct.unpack_from(">IB", stream, pos)
            if ptype == m.PacketType.FILE_SYNC_DATA:
                cut = pos + 9 + self.first
                return pos, cut if cut <= len(stream) else None
            if pos + length > len(stream):
                break
            pos += length
        return pos, None

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


@pytest.mark.parametrize("first, size", [(250 * KiB, 300 * KiB), (CAP + 1, 2 * CAP)])
def test_a_download_that_pauses_short_of_the_mark_still_completes(server, tmp_path, first, size):
    """The client's side: the server's bytes stop partway through a data packet until the
    client's kernel holds them, then the rest comes; the download must not wait for more."""
    data = os.urandom(size)

    async def main() -> None:
        async with await Client.connect(server.address) as client:
            await client.put_bytes(data, "paused.bin")
        relay = PausingRelay(server.address, first)
        try:
            async with await Client.connect(relay.address) as client:
                await asyncio.wait_for(client.get("paused.bin", tmp_path / "back.bin"), 10.0)
        finally:
            relay.close()
        assert relay.paused.is_set()

    run(main())
    assert (tmp_path / "back.bin").read_bytes() == data
