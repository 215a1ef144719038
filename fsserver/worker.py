"""A connection worker process: a uvloop event loop serving the connections the acceptor hands
it, with store calls to the supervisor and hash jobs to the hashing pool."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from typing import Any

import uvloop

from common.tls import server_context
from fsserver import telemetry
from fsserver.auth import TokenStore
from fsserver.channel import MessageChannel
from fsserver.config import ServerConfig
from fsserver.connection import ClientConnection
from fsserver.context import WorkerContext
from fsserver.feed import ChangeFeed
from fsserver.hashing import HashClient
from fsserver.process import profiled, setup_child
from fsserver.rpc import RpcClient
from fsserver.store.arena import ArenaRef
from fsserver.store.staging import Staging, staging_base
from fsserver.web.httpconn import HttpConnection

log = logging.getLogger(__name__)


def worker_main(
    worker_id: int,
    config: ServerConfig,
    ctrl: socket.socket,
    jobs: socket.socket,
    arena: ArenaRef,
    store_id: bytes,
) -> None:
    setup_child(f"worker-{worker_id}", config.log_level)
    worker = Worker(worker_id, config, ctrl, jobs, arena, store_id)
    profiled(f"worker-{worker_id}", lambda: uvloop.run(worker.run()))


class Worker:
    def __init__(
        self,
        worker_id: int,
        config: ServerConfig,
        ctrl: socket.socket,
        jobs: socket.socket,
        arena: ArenaRef,
        store_id: bytes,
    ) -> None:
        self.worker_id = worker_id
        self.config = config
        self.ctrl = ctrl
        self.jobs = jobs
        self.arena_ref = arena
        self.store_id = store_id
        self.stopped: asyncio.Event | None = None
        self.ctx: WorkerContext | None = None
        self.tls = server_context(config.tls_cert, config.tls_key) if config.tls_cert else None

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        self.stopped = asyncio.Event()
        arena = self.arena_ref.attach()
        assert arena.view is not None
        loop.add_signal_handler(signal.SIGTERM, self.stopped.set)
        channel = MessageChannel(self.ctrl, self.on_control, on_close=self.stopped.set)
        hashes = HashClient(self.jobs)
        feed = ChangeFeed(lambda shares: channel.send(("watch", shares)))
        rpc = RpcClient(channel)
        tokens = TokenStore(self.config.tokens) if self.config.tokens else None
        staging = Staging(staging_base(self.config.store_size, self.worker_id))
        self.ctx = WorkerContext(self.worker_id, self.config, arena.view, self.store_id, rpc,
                                 hashes, feed, tokens, channel.send, staging)  # fmt: skip
        chores = [loop.create_task(telemetry.ProcessSampler("worker", self.worker_id).run()),
                  loop.create_task(self.publish_traffic())]  # fmt: skip
        await asyncio.sleep(0)  # the first samples are written before the worker says ready
        channel.send(("ready", os.getpid()))
        log.debug("worker %d ready (pid %d)", self.worker_id, os.getpid())
        await self.stopped.wait()
        for chore in chores:
            chore.cancel()
        await self.close_connections()
        self.ctx.rpc.fail_all("worker stopping")
        hashes.close()
        channel.close()
        self.ctx = None
        arena.close()

    def on_control(self, msg: Any, fds: list[int]) -> None:
        assert self.ctx is not None and self.stopped is not None
        kind = msg[0]
        if kind in ("conn", "http"):
            if not fds:  # lost on the way (descriptor limit): the client sees a reset
                log.warning("a passed connection arrived without its socket")
                return
            for extra in fds[1:]:
                os.close(extra)
            sock = socket.socket(fileno=fds[0])
            asyncio.get_running_loop().create_task(self.adopt(sock, kind == "http"))
            return
        for fd in fds:
            os.close(fd)
        if kind == "rpc":
            self.ctx.rpc.on_replies(msg[1])
        elif kind == "feed":
            self.ctx.feed.publish(msg[1])
        elif kind == "hasher_died":
            self.ctx.hashes.resubmit_all()
        elif kind == "stop":
            self.stopped.set()

    async def adopt(self, sock: socket.socket, http: bool = False) -> None:
        """Take over an accepted socket; from here its transport owns and closes it."""
        assert self.ctx is not None
        ctx = self.ctx
        serve: Any = (lambda: HttpConnection(ctx)) if http else (lambda: ClientConnection(ctx))
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                serve, sock=sock, ssl=self.tls,
                ssl_handshake_timeout=self.config.handshake_timeout if self.tls else None,
            )  # fmt: skip
        except (OSError, TimeoutError) as exc:  # a failed TLS handshake, a vanished client
            log.info("could not take over a connection: %s", exc or type(exc).__name__)
            sock.close()

    async def publish_traffic(self) -> None:
        """Once a second: deadlines and tokens of every connection, then its packet counts and
        the hash queue, as metrics."""
        assert self.ctx is not None
        loop = asyncio.get_running_loop()
        telemetry.show_coding()
        while True:
            now = loop.time()
            if self.ctx.tokens is not None:
                self.ctx.tokens.reload()  # a revoked token ends its open connections
            for conn in list(self.ctx.connections):
                conn.check_deadlines(now)
                conn.check_token()
                conn.traffic.add(conn.conn)
            telemetry.flush_traffic()
            telemetry.HASH_QUEUE.set(self.ctx.hashes.in_flight)
            subscribers = sum(map(len, self.ctx.feed.subscribers.values()))
            telemetry.SUBSCRIBERS.labels("worker", str(self.worker_id)).set(subscribers)
            await asyncio.sleep(telemetry.SAMPLE_EVERY)

    async def close_connections(self) -> None:
        assert self.ctx is not None
        for http in list(self.ctx.http):
            http.shutdown()
        for conn in list(self.ctx.connections):
            conn.shutdown()
        deadline = time.monotonic() + self.config.shutdown_grace
        while (self.ctx.connections or self.ctx.http) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
