"""``Acceptor``: the listening socket, and each accepted connection handed to a worker.

The supervisor accepts (so a restarted worker needs no re-wiring), turns away addresses that
failed authentication too often (``Throttle``), and passes the socket to the next ready worker,
round robin, over that worker's control channel (``SCM_RIGHTS``; the channel closes its own copy
once sent, so the worker's close is the connection's end).
"""

from __future__ import annotations

import asyncio
import logging
import socket

from fsserver import telemetry
from fsserver.auth import Throttle
from fsserver.children import Child

log = logging.getLogger(__name__)

ACCEPT_BATCH = 64
ACCEPT_BACKOFF = 0.1


class ListenError(RuntimeError):
    """The address cannot be listened on; the message says why."""


def bind_listener(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class Acceptor:
    def __init__(self, host: str, port: int, workers: dict[int, Child],
                 kind: str = "conn") -> None:  # fmt: skip
        self.listener = bind_listener(host, port)
        self.kind = kind
        """What the worker serves on the sockets: ``conn`` (the FS protocol) or ``http``."""
        self.port: int = self.listener.getsockname()[1]
        self.workers = workers
        self.throttle = Throttle()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.closed = False
        self._next = 0

    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.listener.fileno(), self.accept)

    def close(self) -> None:
        if self.loop is not None and not self.closed:
            self.loop.remove_reader(self.listener.fileno())
        self.closed = True
        self.listener.close()

    def accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: keep serving what we have
                log.warning("accept failed: %s; pausing accepts for %.1f s", exc, ACCEPT_BACKOFF)
                self.pause()
                return
            if self.throttle.refused(addr[0]):
                telemetry.THROTTLED.inc()
                telemetry.refused("throttled")
                sock.close()
                continue
            worker = self.pick_worker()
            if worker is None or worker.channel is None:
                sock.close()
                continue
            worker.channel.send((self.kind,), [sock])
            telemetry.CONNECTIONS.labels("worker", str(worker.index)).inc()

    def pause(self) -> None:
        """Stop the level-triggered reader from spinning while accept keeps failing."""
        assert self.loop is not None
        loop, fd = self.loop, self.listener.fileno()
        loop.remove_reader(fd)

        def resume() -> None:
            if not self.closed:
                loop.add_reader(fd, self.accept)

        loop.call_later(ACCEPT_BACKOFF, resume)

    def pick_worker(self) -> Child | None:
        """Round robin over the workers that are alive and ready."""
        slots = len(self.workers)  # keyed 0..workers-1; a restart reuses its index
        for step in range(slots):
            worker = self.workers[(self._next + step) % slots]
            if worker.ready and worker.alive:
                self._next = (self._next + step + 1) % slots
                return worker
        return None
