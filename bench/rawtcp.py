"""Baseline A: raw TCP over loopback with uvloop, no protocol and no hashing.

The receiver (``python -m bench.rawtcp``, its own process like the fsserver) reads every
connection into one preallocated buffer through an ``asyncio.BufferedProtocol`` and throws the
bytes away. Each connection starts with an 8-byte big-endian length; once that many bytes have
arrived the receiver answers one byte, so the sender's clock covers the whole transfer.

The sender writes slices of a ``bytes`` object already in memory, honouring
``pause_writing``/``resume_writing`` with the same buffer limits as the FS client.
"""

from __future__ import annotations

import asyncio
import struct
import sys
import time
from typing import cast

import uvloop

HEADER = struct.Struct(">Q")
RECV_BUFFER = 1 << 20
SEND_SLICE = 1 << 20
WRITE_HIGH_WATER = 8 * 1024 * 1024
WRITE_LOW_WATER = 2 * 1024 * 1024
ACK = b"k"


class Sink(asyncio.BufferedProtocol):
    def __init__(self, buffer: memoryview) -> None:
        self.buffer = buffer
        self.header = bytearray()
        self.expected = -1
        self.received = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        data = self.buffer[:nbytes]
        if self.expected < 0:
            take = min(HEADER.size - len(self.header), nbytes)
            self.header += data[:take]
            nbytes -= take
            if len(self.header) < HEADER.size:
                return
            (self.expected,) = HEADER.unpack(self.header)
        self.received += nbytes
        if self.received >= self.expected and self.transport is not None:
            self.transport.write(ACK)
            self.header, self.expected, self.received = bytearray(), -1, 0


async def serve() -> None:
    buffer = memoryview(bytearray(RECV_BUFFER))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Sink(buffer), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    print(f"rawtcp ready on {port}", flush=True)
    await server.serve_forever()


class Source(asyncio.Protocol):
    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.writable = asyncio.Event()
        self.writable.set()
        self.acked: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        cast(asyncio.Transport, transport).set_write_buffer_limits(
            high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER
        )

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        if ACK in data and not self.acked.done():
            self.acked.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.writable.set()
        if not self.acked.done():
            self.acked.set_exception(ConnectionError(f"receiver closed the connection: {exc}"))


async def send_once(port: int, data: bytes) -> float:
    """Connect (untimed), then time writing *data* until the receiver acknowledges it."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_connection(Source, "127.0.0.1", port)
    view = memoryview(data)
    try:
        start = time.perf_counter()
        transport.write(HEADER.pack(len(data)))
        for pos in range(0, len(view), SEND_SLICE):
            if not proto.writable.is_set():
                await proto.writable.wait()
            if proto.acked.done():  # the receiver went away
                break
            transport.write(view[pos : pos + SEND_SLICE])
        await proto.acked
        return time.perf_counter() - start
    finally:
        transport.close()


def send(port: int, data: bytes) -> float:
    return uvloop.run(send_once(port, data))


if __name__ == "__main__":
    try:
        uvloop.run(serve())
    except KeyboardInterrupt:
        sys.exit(0)
