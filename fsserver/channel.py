"""``MessageChannel``: pickled messages, optionally carrying file descriptors, over a
non-blocking ``SOCK_SEQPACKET`` socket driven by an asyncio loop.

SEQPACKET keeps message boundaries, so a message and the descriptors sent with it arrive
together. Descriptors are received with ``MSG_CMSG_CLOEXEC`` (``socket.recv_fds`` ignores its
flags on 3.11) so later children never inherit client sockets, and a truncated control message
is an error because the kernel silently drops descriptors that did not fit.
"""

from __future__ import annotations

import array
import asyncio
import logging
import pickle
import socket
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)

MAX_MESSAGE = 256 * 1024
"""Largest message read at once; senders keep theirs well below it (see ``split_batches``)."""
SPLIT_AT = 64 * 1024
MAX_FDS = 16
SOCKET_BUFFER = 4 * 1024 * 1024
BATCH = "batch"

Handler = Callable[[Any, list[int]], None]


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """A connected SEQPACKET pair with large buffers (the kernel caps them at its maximum)."""
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    for sock in (left, right):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    return left, right


MAX_ITEM = MAX_MESSAGE - 4096
"""No single item may be larger: a message that does not fit the receiver's buffer would be
truncated, and the channel would have to be dropped."""


class ItemTooLarge(ValueError):
    """One item of a batch does not fit in a message."""


def pack_batches(kind: str, items: list[Any],
                 oversize: Callable[[Any], Any] | None = None) -> list[bytes]:  # fmt: skip
    """Messages of ``(BATCH, kind, [pickled item, ...])``, each at most about SPLIT_AT bytes.

    Items are pickled once each and packed greedily, so the cost is linear in the batch. An
    item too large for any message is replaced by ``oversize(item)``, or raises ItemTooLarge.
    """
    messages: list[bytes] = []
    group: list[bytes] = []
    size = 0
    for item in items:
        blob = pickle.dumps(item, pickle.HIGHEST_PROTOCOL)
        if len(blob) > MAX_ITEM:
            if oversize is None:
                raise ItemTooLarge(f"a {kind} item of {len(blob)} bytes")
            blob = pickle.dumps(oversize(item), pickle.HIGHEST_PROTOCOL)
        if group and size + len(blob) > SPLIT_AT:
            messages.append(pickle.dumps((BATCH, kind, group), pickle.HIGHEST_PROTOCOL))
            group, size = [], 0
        group.append(blob)
        size += len(blob)
    if group:
        messages.append(pickle.dumps((BATCH, kind, group), pickle.HIGHEST_PROTOCOL))
    return messages


def unpack(data: bytes) -> Any:
    """A message as sent: ``(kind, items)`` for a batch, else the object itself."""
    obj = pickle.loads(data)
    if isinstance(obj, tuple) and obj and obj[0] == BATCH:
        return obj[1], [pickle.loads(blob) for blob in obj[2]]
    return obj


def recv_message(sock: socket.socket, flags: int = 0) -> tuple[bytes, list[int]]:
    """One message and its descriptors; raises BlockingIOError when none is waiting."""
    fds = array.array("i")
    data, ancdata, msg_flags, _ = sock.recvmsg(
        MAX_MESSAGE, socket.CMSG_SPACE(MAX_FDS * fds.itemsize), flags | socket.MSG_CMSG_CLOEXEC
    )
    for level, ctype, cdata in ancdata:
        if level == socket.SOL_SOCKET and ctype == socket.SCM_RIGHTS:
            fds.frombytes(cdata[: len(cdata) - (len(cdata) % fds.itemsize)])
    if msg_flags & socket.MSG_TRUNC:
        for fd in fds:
            socket.close(fd)
        raise OSError("control channel message truncated")
    if msg_flags & socket.MSG_CTRUNC:
        # The kernel dropped descriptors that did not fit (out of descriptors): the message
        # itself is whole. Its receiver sees fewer fds than were sent and copes with that.
        log.warning("descriptors of a control message were dropped (descriptor limit?)")
    return data, list(fds)


def fds_ancillary(fds: Sequence[int]) -> list[tuple[int, int, bytes]]:
    if not fds:
        return []
    return [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]


class SendQueue:
    """Messages, each with the sockets it passes along, waiting their turn on a socket that
    must not block the loop: sent in order as the socket takes them. A passed socket is
    closed here once its message has left (the receiver owns its duplicate then).

    *flags* go to every ``sendmsg`` (``MSG_DONTWAIT`` for a socket whose blocking mode other
    processes share); *extra_fds* travel with every message; *on_error(exc)* runs when a send
    fails, and without it the error propagates to the caller.
    """

    def __init__(self, sock: socket.socket, *, flags: int = 0, extra_fds: Sequence[int] = (),
                 on_error: Callable[[OSError], None] | None = None) -> None:  # fmt: skip
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.flags = flags
        self.extra_fds = list(extra_fds)
        self.on_error = on_error
        self.waiting: deque[tuple[bytes, list[socket.socket]]] = deque()
        self.closed = False

    def push(self, messages: list[tuple[bytes, list[socket.socket]]]) -> None:
        if self.closed:
            for _, socks in messages:
                for sock in socks:
                    sock.close()
            return
        was_idle = not self.waiting
        self.waiting.extend(messages)
        if was_idle:
            self._drain()

    def _drain(self) -> None:
        while self.waiting:
            data, socks = self.waiting[0]
            fds = [*self.extra_fds, *(s.fileno() for s in socks)]
            try:
                self.sock.sendmsg([data], fds_ancillary(fds), self.flags)
            except BlockingIOError:
                self.loop.add_writer(self.sock.fileno(), self._writable)
                return
            except OSError as exc:
                if self.on_error is None:
                    raise
                self.on_error(exc)
                return
            self.waiting.popleft()
            for sock in socks:
                sock.close()  # the receiver owns its duplicate now

    def _writable(self) -> None:
        self.loop.remove_writer(self.sock.fileno())
        self._drain()

    def close(self) -> None:
        """Send nothing more, and close the sockets that were still to be passed."""
        self.closed = True
        self.loop.remove_writer(self.sock.fileno())
        for _, socks in self.waiting:
            for sock in socks:
                sock.close()
        self.waiting.clear()


class MessageChannel:
    """One end of a control channel. ``on_message(obj, fds)`` runs on the loop."""

    def __init__(
        self, sock: socket.socket, on_message: Handler, on_close: Callable[[], None]
    ) -> None:
        self.sock = sock
        self.sock.setblocking(False)
        self.on_message = on_message
        self.on_close = on_close
        self.loop = asyncio.get_running_loop()
        self._out = SendQueue(sock, on_error=self._send_failed)
        self._closed = False
        self.loop.add_reader(sock.fileno(), self._readable)

    def send(self, obj: Any, socks: Sequence[socket.socket] = ()) -> None:
        """Queue one message; *socks* are passed along and closed here once sent."""
        self.send_raw(pickle.dumps(obj, pickle.HIGHEST_PROTOCOL), list(socks))

    def send_batch(self, kind: str, items: list[Any],
                   oversize: Callable[[Any], Any] | None = None) -> None:  # fmt: skip
        for data in pack_batches(kind, items, oversize):
            self.send_raw(data, [])

    def send_raw(self, data: bytes, socks: list[socket.socket]) -> None:
        self._out.push([(data, socks)])

    def _send_failed(self, exc: OSError) -> None:
        log.debug("control channel send failed: %s", exc)
        self.close()

    def _readable(self) -> None:
        while not self._closed:
            try:
                data, fds = recv_message(self.sock)
            except BlockingIOError:
                return
            except ConnectionResetError:
                self.close()
                return
            except OSError as exc:
                log.warning("control channel receive failed: %s", exc)
                self.close()
                return
            if not data and not fds:
                self.close()
                return
            self.on_message(unpack(data), fds)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.loop.remove_reader(self.sock.fileno())
        self._out.close()
        self.sock.close()
        self.on_close()
