"""``Relay``: a TCP relay between clients and a real server, for tests that need a connection
to be in a given state when the server goes away.

It passes bytes both ways and counts the client's packets by type (it reads their headers
only). Once the client has sent a packet of the type ``hold_from`` names, it stops passing on
what the server sends (it drops it), so from then on the client's sessions stay open however
fast the server is. When the server closes a connection, the relay closes the client's side.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections import Counter
from types import TracebackType

HEADER = struct.Struct(">IB")


class Relay:
    def __init__(self, server: str, hold_from: int | None = None) -> None:
        host, port = server.rsplit(":", 1)
        self.target = (host, int(port))
        self.hold_from = hold_from
        self.holding = threading.Event()
        self.sent: Counter[int] = Counter()
        """The client's packets so far, by type."""
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
            for target, args in ((self._upward, (client, upstream)),
                                 (self._downward, (upstream, client))):  # fmt: skip
                thread = threading.Thread(target=target, args=args, daemon=True)
                self.threads.append(thread)
                thread.start()

    def _upward(self, client: socket.socket, upstream: socket.socket) -> None:
        """Client to server: count packets, and start holding at the first ``hold_from``."""
        pending = b""
        skip = 0
        while data := self._recv(client):
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
        self._shutdown(upstream)

    def _downward(self, upstream: socket.socket, client: socket.socket) -> None:
        """Server to client, until holding; the server's close is passed on."""
        while data := self._recv(upstream):
            if not self.holding.is_set() and not self._send(client, data):
                break
        self._shutdown(client)

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
