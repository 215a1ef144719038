"""``Relay``: a TCP relay between clients and a real server, for tests that need a connection
to be in a given state when the server goes away.

It passes bytes both ways and counts the client's packets by type (it reads their headers
only). Once the client has sent a packet of the type ``hold_from`` names, it stops passing on
what the server sends (it drops it), so from then on the client's sessions stay open however
fast the server is. When the server closes a connection, the relay closes the client's side.

It can also cut connections: the first ``cuts`` connections are closed (both sides) once
``cut_up`` bytes went from the client to the server, or ``cut_down`` bytes the other way; and
slow them down to ``rate`` bytes a second each way. ``up`` and ``down`` count the bytes each
connection passed, in the order the connections came.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections import Counter
from types import TracebackType

HEADER = struct.Struct(">IB")


class Relay:
    def __init__(self, server: str, hold_from: int | None = None, *, cut_up: int | None = None,
                 cut_down: int | None = None, cuts: int = 1,
                 rate: float | None = None) -> None:  # fmt: skip
        host, port = server.rsplit(":", 1)
        self.target = (host, int(port))
        self.hold_from = hold_from
        self.holding = threading.Event()
        self.sent: Counter[int] = Counter()
        """The client's packets so far, by type."""
        self.cut_up, self.cut_down, self.cuts, self.rate = cut_up, cut_down, cuts, rate
        self.up: list[int] = []
        self.down: list[int] = []
        self.upstream_ports: list[int] = []
        """The local port of each connection to the server (which tells its worker)."""
        self.lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def count(self, ptype: int) -> int:
        with self.lock:
            return self.sent[ptype]

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.sockets += [client, upstream]
                index = len(self.up)
                self.up.append(0)
                self.down.append(0)
                self.upstream_ports.append(upstream.getsockname()[1])
            for target, args in ((self._upward, (client, upstream, index)),
                                 (self._downward, (upstream, client, index))):  # fmt: skip
                thread = threading.Thread(target=target, args=args, daemon=True)
                self.threads.append(thread)
                thread.start()

    def _upward(self, client: socket.socket, upstream: socket.socket, index: int) -> None:
        """Client to server: count packets, and start holding at the first ``hold_from``."""
        pending = b""
        skip = 0
        started = time.monotonic()
        while data := self._recv(client):
            data, cut = self._pass(data, self.up, index, self.cut_up, started)
            if cut:
                self._send(upstream, data)
                self._cut(client, upstream)
                break
            pending += data
            while True:
                if skip:
                    taken = min(skip, len(pending))
                    pending, skip = pending[taken:], skip - taken
                if skip or len(pending) < HEADER.size:
                    break
                length, ptype = HEADER.unpack_from(pending)
                with self.lock:
                    self.sent[ptype] += 1
                if ptype == self.hold_from:
                    self.holding.set()  # before the packet leaves: no answer to it gets back
                skip = max(length, HEADER.size)
            if not self._send(upstream, data):
                break
        self._end(client, upstream)

    def _downward(self, upstream: socket.socket, client: socket.socket, index: int) -> None:
        """Server to client, until holding; the server's close is passed on."""
        started = time.monotonic()
        while data := self._recv(upstream):
            data, cut = self._pass(data, self.down, index, self.cut_down, started)
            if cut:
                self._send(client, data)
                self._cut(client, upstream)
                break
            if not self.holding.is_set() and not self._send(client, data):
                break
        self._end(client, upstream)

    def _pass(self, data: bytes, counts: list[int], index: int, cut: int | None,
              started: float) -> tuple[bytes, bool]:  # fmt: skip
        """What of *data* goes on (all of it, at ``rate``), and whether the connection is to
        be cut after it (its count reaches ``cut``)."""
        with self.lock:
            done = counts[index]
        cutting = cut is not None and index < self.cuts and done + len(data) >= cut
        if cutting:
            data = data[: max(0, cut - done)]  # type: ignore[operator]
        with self.lock:
            counts[index] += len(data)
        if self.rate:
            ahead = (done + len(data)) / self.rate - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)  # (pacing, not waiting for anything)
        return data, cutting

    @classmethod
    def _cut(cls, *socks: socket.socket) -> None:
        """End a connection the hard way, both sides: a reset, as a broken network or a dead
        peer would."""
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        cls._end(*socks)

    @classmethod
    def _end(cls, *socks: socket.socket) -> None:
        """Close both sides when either ends, as a closed server would: what the peer still
        sends is answered with a reset (a client blocked in a write learns at once)."""
        for sock in socks:
            cls._shutdown(sock)  # (wakes the other direction's thread first)
        for sock in socks:
            sock.close()

    @staticmethod
    def _recv(sock: socket.socket) -> bytes:
        try:
            return sock.recv(1 << 16)
        except OSError:
            return b""

    @staticmethod
    def _send(sock: socket.socket, data: bytes) -> bool:
        try:
            sock.sendall(data)
            return True
        except OSError:
            return False

    @staticmethod
    def _shutdown(sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._shutdown(self.listener)  # (wakes the accepting thread; close alone may not)
        self.listener.close()
        with self.lock:
            sockets = list(self.sockets)
        for sock in sockets:
            self._shutdown(sock)
            sock.close()
        for thread in self.threads:
            thread.join(5)

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.close()
