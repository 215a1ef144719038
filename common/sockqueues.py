"""What a TCP socket's queues hold, and how much its reader waits for before it is woken.

``unsent``: the bytes a socket holds not yet sent (``SIOCOUTQNSD``), which tell ``auto`` how
much waits for the link.

``RecvWater``: the receive low-water mark (``SO_RCVLOWAT``).

Over loopback the sender's CPU does the receiver's TCP work too, and each wake-up of a
sleeping reader costs it an inter-processor interrupt (a VM exit on a virtual machine). While
a big payload streams in, nothing can be done with a few kilobytes of it, so the reader asks
to be woken for ``CAP`` bytes at a time, or the rest of the payload if less: those bytes are
sure to come (or the connection ends, which wakes it too). Anything else gets the default, 1.
A raw TCP sender of 512 MiB took 0.112 s instead of 0.121-0.125 s of CPU so (bench.rawtcp), and
``Client.put`` of 512 MiB 0.178 s instead of 0.189 s (best of 20, 0.212 s against 0.224 s
median). The mark is set after each read, for the bytes due then: libuv may go back to
waiting without asking for another buffer, and a mark above what is sure to come would stall
the connection.

Not on TLS: the mark counts the socket's bytes, ciphertext, while what is due is plaintext,
and the TLS layer keeps a partly read record to itself, so the ciphertext still to come can
be less than the plaintext due, and the mark is never reached (a TLS test stalled so).

Shared by the server's and the client's I/O layers; the protocol core in ``common`` never sees
a socket, only this module does.
"""

from __future__ import annotations

import fcntl
import socket
import sys
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from common.connection import FSConnection

SIOCOUTQNSD = 0x894B
"""Linux's ioctl for the bytes a TCP socket holds not yet sent (``linux/sockios.h``): unlike
``TIOCOUTQ`` it leaves out those in flight, which any fast link with a queue has too."""


def unsent(fd: int) -> int:
    """Bytes in the TCP socket *fd*'s queue that have not left yet (0 if unknown)."""
    if fd < 0:
        return 0
    try:
        return int.from_bytes(fcntl.ioctl(fd, SIOCOUTQNSD, bytes(4)), sys.byteorder)
    except OSError:
        return 0


CAP = 256 << 10
"""The most to wait for: small enough that a slow link still shows progress often."""
MIN = 64 << 10
"""Payload rests smaller than this are read as they come."""


class _Settable(Protocol):
    def setsockopt(self, level: int, option: int, value: int, /) -> None: ...


class RecvWater:
    """The low-water mark of one connection's socket, set only when it changes."""

    __slots__ = ("current", "sock")

    def __init__(self, sock: _Settable | None) -> None:
        self.sock = sock
        self.current = 1

    @classmethod
    def of(cls, transport: Any) -> RecvWater:
        """The mark of *transport*'s socket; one that does nothing on TLS (see the module)."""
        if transport.get_extra_info("ssl_object") is not None:
            return cls(None)
        return cls(transport.get_extra_info("socket"))

    def after_read(self, conn: FSConnection, staged: bool) -> None:
        """A read was handled: the mark for the next, which goes straight into *conn*'s
        sink only if no bytes wait in the staging buffer (*staged*)."""
        target = None if staged else conn.direct_target()
        self.expect(len(target) if target is not None else 0)

    def expect(self, payload_left: int) -> None:
        """The next read goes straight into a payload of which *payload_left* bytes are due
        (0: anything may come next)."""
        want = min(payload_left, CAP) if payload_left >= MIN else 1
        if want == self.current or self.sock is None:
            return
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, want)
            self.current = want
        except OSError:  # not a TCP socket, or gone: read as it comes
            self.sock = None
