"""A deliberately simple blocking client built on the sans-IO core, for tests that must send
what a well-behaved ``fsclient.Client`` never would."""

from __future__ import annotations

import socket
import time

from common import messages as m
from common.codec import HEADER, decode_body
from common.connection import Event, FSConnection
from common.limits import DEFAULT_MAX_PACKET, MAGIC, PROTOCOL_VERSION
from common.state import Role


class Closed(Exception):
    """The server closed the connection."""


class RawClient:
    def __init__(self, address: str, *, share: str = "default",
                 max_packet: int = DEFAULT_MAX_PACKET, handshake: bool = True,
                 auth: bytes = b"") -> None:  # fmt: skip
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.conn = FSConnection(Role.CLIENT, max_packet_limit=max_packet)
        self.events: list[Event] = []
        self.hello: m.VersionHandshakeResponse | None = None
        if handshake:
            self.send(m.VersionHandshake(MAGIC, PROTOCOL_VERSION, max_packet, "raw", share, auth))
            self.hello = self.expect(m.VersionHandshakeResponse)

    def send(self, msg: m.Message) -> None:
        self.sock.sendall(self.conn.send(msg))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def next_event(self, timeout: float = 10.0) -> Event:
        deadline = time.monotonic() + timeout
        while not self.events:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no event from server")
            self.sock.settimeout(remaining)
            data = self.sock.recv(1 << 20)
            if not data:
                raise Closed()
            self.events.extend(self.conn.feed(data))
        return self.events.pop(0)

    def expect(self, kind: type, timeout: float = 10.0) -> m.Message:
        event = self.next_event(timeout)
        assert isinstance(event, kind), f"expected {kind.__name__}, got {event!r}"
        return event

    def error_or_close(self, timeout: float = 10.0) -> m.Error | None:
        """For a connection the server must end: its Error packet, or None if it just closed.

        Packets are split by their headers only, because this side's own state machine may
        disagree with what the server saw (that is the point of these tests).
        """
        deadline = time.monotonic() + timeout
        pending = b""
        while time.monotonic() < deadline:
            while len(pending) >= HEADER.size:
                length, ptype = HEADER.unpack_from(pending)
                if len(pending) < length:
                    break
                if ptype == m.PacketType.ERROR:
                    return decode_body(ptype, memoryview(pending)[HEADER.size : length])
                pending = pending[length:]
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(1 << 20)
            except ConnectionResetError:
                return None
            except TimeoutError:
                break
            if not data:
                return None
            pending += data
        raise TimeoutError("server neither sent an Error nor closed the connection")

    def close(self) -> None:
        self.sock.close()
