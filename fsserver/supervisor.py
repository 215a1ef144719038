"""``Supervisor``: the acceptor process. It owns the listening socket, the store index and the
arena, hands every accepted connection to a worker, answers the workers' store calls, and keeps
the workers and hashers alive.

Lifecycle, top to bottom: ``serve()`` -> ``startup()`` -> wait for a stop signal -> ``shutdown()``.
Signal handlers only set an event; all the work happens on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import socket
import sys
import time
from multiprocessing.connection import Connection
from typing import Any

from prometheus_client import multiprocess

from fsserver import telemetry
from fsserver.acceptor import Acceptor, ListenError
from fsserver.auth import TokenFileError, check_tokens_file
from fsserver.calls import StoreCalls
from fsserver.channel import MessageChannel, channel_pair
from fsserver.children import (
    CHILDREN,
    Child,
    RestartPolicy,
    Role,
    spawn,
    stop_all,
)
from fsserver.config import HTTP_OFF, ServerConfig
from fsserver.durability import Durability
from fsserver.hasher import serve_jobs
from fsserver.health import BearerToken, HealthServer, MetricsTokenError, Response
from fsserver.metrics import render_metrics
from fsserver.process import profiled, setup_child
from fsserver.store import Store
from fsserver.store.arena import ArenaRef, BlobArena, clean_stale_segments
from fsserver.store.catalog import CatalogError
from fsserver.store.recovery import RecoveryError
from fsserver.store.staging import arena_size
from fsserver.worker import worker_main

log = logging.getLogger(__name__)

READY_TIMEOUT = 60.0
PRUNE_EVERY = 3600.0
EXPIRE_EVERY = 5.0
"""Seconds between looks for parked uploads past their time (``--resume-timeout``)."""


class StartupError(RuntimeError):
    """The server cannot start; the message says what to change."""


def hasher_main(index: int, config: ServerConfig, jobs: socket.socket, arena: ArenaRef) -> None:
    setup_child(f"hasher-{index}", config.log_level)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop in recvmsg, run finally blocks
    profiled(f"hasher-{index}", lambda: serve_jobs(arena, jobs, index))


def raise_fd_limit() -> None:
    """Every connection costs descriptors in the supervisor (briefly) and a worker: use the
    hard limit, not the often much lower soft one. Children inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Supervisor:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.loop: asyncio.AbstractEventLoop | None = None
        self.stop_requested = asyncio.Event()
        self.stop_signal = 0
        self.stopping = False
        self.exit_code = 0
        self.arena: BlobArena | None = None
        self.arena_ref: ArenaRef | None = None
        self.arena_filled: Connection | None = None
        """The pipe's write end: closed once the arena is filled (see ``ArenaRef``)."""
        self.store: Store | None = None
        self.durability: Durability | None = None
        self.acceptor: Acceptor | None = None
        self.http_acceptor: Acceptor | None = None
        self.jobs_worker_end: socket.socket | None = None
        self.jobs_hasher_end: socket.socket | None = None
        self.workers: dict[int, Child] = {}
        self.hashers: dict[int, Child] = {}
        self.restarts = RestartPolicy()
        token = BearerToken(config.metrics_token_file) if config.metrics_token_file else None
        routes = {"/healthz": lambda: Response(200, b"ok\n"), "/readyz": self.readiness,
                  "/metrics": self.metrics}  # fmt: skip
        self.health = HealthServer(routes, token)
        self.calls: StoreCalls | None = None
        self.sampler: asyncio.Task[None] | None = None
        self.port = 0
        self.metrics_port = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def serve(self) -> int:
        self.loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.request_stop, sig)
        try:
            await self.startup()
            await self.stop_requested.wait()
        except StartupError as exc:
            log.error("%s", exc)
            self.exit_code = 1
        finally:
            await self.shutdown()
        return self.exit_code

    def request_stop(self, sig: int = signal.SIGTERM) -> None:
        if self.stop_requested.is_set() and sig == signal.SIGINT:
            log.warning("second interrupt: killing children now")
            for child in [*self.workers.values(), *self.hashers.values()]:
                child.process.kill()
        self.stop_signal = self.stop_signal or sig
        self.stop_requested.set()

    def stopped_early(self) -> bool:
        """A stop before the server is ready (even while Python loaded it) is no error: it
        ends quietly with the shell's code for that signal (130 for Ctrl-C)."""
        if not self.stop_signal:
            return False
        log.info("stopped by %s before it was ready", signal.Signals(self.stop_signal).name)
        self.exit_code = 128 + self.stop_signal
        return True

    async def startup(self) -> None:
        if self.stopped_early():
            return
        cfg = self.config
        raise_fd_limit()
        self.check_tokens()
        clean_stale_segments()
        try:
            self.arena = BlobArena.create(arena_size(cfg.store_size, cfg.workers),
                                          reserve=not cfg.data_dir)  # fmt: skip
        except (OSError, RuntimeError) as exc:
            raise StartupError(str(exc)) from None
        filled, self.arena_filled = CHILDREN.Pipe(duplex=False)
        self.arena_ref = ArenaRef(self.arena.name, filled)
        self.store = Store(cfg.store_size, cfg.max_files, cfg.share_quota, cfg.resume_timeout,
                           cfg.keep_versions)  # fmt: skip
        self.store.arena = self.arena.view
        self.open_data_dir()
        self.calls = StoreCalls(self.store, self.workers, self.durability)
        try:
            self.acceptor = Acceptor(cfg.host, cfg.port, self.workers)
            if cfg.http_port != HTTP_OFF:
                self.http_acceptor = Acceptor(cfg.host, cfg.http_port, self.workers, "http")
                self.http_acceptor.throttle = self.acceptor.throttle  # one count of failures
        except ListenError as exc:
            raise StartupError(str(exc)) from None
        self.port = self.acceptor.port
        host = cfg.metrics_address
        try:
            self.metrics_port = await self.health.start(host, cfg.metrics_port)
        except (OSError, MetricsTokenError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else exc
            raise StartupError(
                f"cannot serve metrics on {host}:{cfg.metrics_port}: {why}"
            ) from None
        self.jobs_worker_end, self.jobs_hasher_end = channel_pair()
        for index in range(cfg.hash_workers):  # they start Python while the data dir loads
            self.start_hasher(index)
        for index in range(cfg.workers):
            self.start_worker(index)
        if self.durability is not None:
            self.durability.start()
        self.load_data_dir()
        self.arena_filled.close()
        await self.wait_ready()
        if self.stopped_early():
            return
        if self.stop_requested.is_set():  # a child kept failing to start
            raise StartupError("stopped before the workers were ready")
        assert self.loop is not None
        self.acceptor.start()
        if self.http_acceptor is not None:
            self.http_acceptor.start()
            log.info("fsserver http on %s:%d", cfg.host, self.http_acceptor.port)
        self.sampler = self.loop.create_task(telemetry.ProcessSampler("acceptor").run())
        self.prune_tombstones()
        self.loop.call_later(EXPIRE_EVERY, self.expire_parked)
        children = [*self.workers.values(), *self.hashers.values()]
        persister = [(Role.PERSISTER.value, 0)] if self.durability is not None else []
        telemetry.start_at_zero([(c.role.value, c.index) for c in children] + persister)
        log.info("fsserver metrics on %s:%d", cfg.metrics_address, self.metrics_port)
        log.info("fsserver ready on %s:%d", cfg.host, self.port)

    def open_data_dir(self) -> None:
        """With --data-dir: the server's identity, which the workers need from their start."""
        cfg = self.config
        assert self.store is not None and self.arena_ref is not None
        if not cfg.data_dir:
            log.warning("memory-only store: nothing survives a restart (--data-dir keeps it)")
            return
        self.durability = Durability(cfg, self.store, self.arena_ref, self.on_child_exit)
        try:
            self.durability.identify()
        except (CatalogError, OSError) as exc:
            raise StartupError(f"cannot open data dir {cfg.data_dir}: {exc}") from None

    def load_data_dir(self) -> None:
        """With --data-dir: the store as it was, before anything is served; then the rest of
        the arena is reserved (the load took the pages it wrote)."""
        if self.durability is None:
            return
        assert self.arena is not None
        cfg = self.config
        try:
            done = self.durability.load()
        except (RecoveryError, CatalogError, OSError) as exc:
            raise StartupError(f"cannot load data dir {cfg.data_dir}: {exc}") from None
        try:
            self.arena.reserve()
        except (OSError, RuntimeError) as exc:
            raise StartupError(str(exc)) from None
        log.info("loaded %d files (%d bytes in %d blobs) from %s in %.2f s; --fsync %s",
                 done.files, done.bytes, done.blobs, cfg.data_dir, done.seconds,
                 cfg.fsync)  # fmt: skip

    def prune_tombstones(self) -> None:
        """Forget tombstones past --tombstone-days and versions past --keep-days; again every
        hour (or half the shorter period)."""
        assert self.store is not None and self.loop is not None
        cfg = self.config
        keep, keep_versions = cfg.tombstone_days * 86400, cfg.keep_days * 86400
        gone = self.store.prune_tombstones(time.time() - keep)
        if gone:
            log.info("forgot %d tombstones older than %g days", gone, cfg.tombstone_days)
        dropped = self.store.prune_versions(time.time() - keep_versions)
        if dropped:
            log.info("gave up %d versions replaced over %g days ago", dropped, cfg.keep_days)
        if gone or dropped:
            self.log_changes()
        if not self.stopping:
            every = min(PRUNE_EVERY, keep / 2, keep_versions / 2)
            self.loop.call_later(every, self.prune_tombstones)

    def check_tokens(self) -> None:
        """A broken tokens file stops the start (the CLI refused a missing one already; only
        ``fsserver add-token`` creates it: a mistyped path must not make a new file whose one
        new token is the only one that works)."""
        path = self.config.tokens
        if not path:
            return
        try:
            check_tokens_file(path)
        except (TokenFileError, OSError, ValueError, KeyError) as exc:
            raise StartupError(f"tokens file {path}: {exc}") from None

    async def wait_ready(self) -> None:
        async def all_ready() -> None:
            while not all(w.ready for w in self.workers.values()) or (
                self.durability is not None and not self.durability.ready
            ):
                if self.stop_requested.is_set():
                    return
                await asyncio.sleep(0.01)

        try:
            await asyncio.wait_for(all_ready(), READY_TIMEOUT)
        except TimeoutError:
            raise StartupError(f"workers not ready within {READY_TIMEOUT:.0f} s") from None

    async def shutdown(self) -> None:
        self.stopping = True
        if self.arena_filled is not None:  # children still waiting for it go on, and stop
            self.arena_filled.close()
        if self.sampler is not None:
            self.sampler.cancel()
        if self.acceptor is not None:
            self.acceptor.close()
        if self.http_acceptor is not None:
            self.http_acceptor.close()
        for worker in self.workers.values():
            if worker.channel is not None:
                worker.channel.send(("stop",))
        await stop_all(list(self.workers.values()), self.config.shutdown_grace + 0.5)
        if self.durability is not None:
            await self.durability.stop()
        await stop_all(list(self.hashers.values()), 1.0)
        for worker in self.workers.values():
            if worker.channel is not None:
                worker.channel.close()
        await self.health.close()
        for sock in (self.jobs_worker_end, self.jobs_hasher_end):
            if sock is not None:
                sock.close()
        if self.arena is not None:
            self.arena.close()
        log.info("fsserver stopped")

    # -- children ----------------------------------------------------------------------------

    def start_worker(self, index: int) -> None:
        assert self.arena_ref is not None and self.store is not None
        ours, theirs = channel_pair()
        args = (
            index,
            self.config,
            theirs,
            self.jobs_worker_end,
            self.arena_ref,
            self.store.store_id,
        )
        child = spawn(Role.WORKER, index, worker_main, args, self.on_child_exit)
        theirs.close()
        child.channel = MessageChannel(
            ours,
            lambda msg, fds: self.on_worker_message(child, msg, fds),
            on_close=lambda: None,
        )
        self.workers[index] = child

    def start_hasher(self, index: int) -> None:
        assert self.arena_ref is not None
        args = (index, self.config, self.jobs_hasher_end, self.arena_ref)
        self.hashers[index] = spawn(Role.HASHER, index, hasher_main, args, self.on_child_exit)

    def on_child_exit(self, child: Child) -> None:
        if child.process.pid:  # its live gauges (memory, connections) go with it
            multiprocess.mark_process_dead(child.process.pid)
        if self.stopping:
            return
        assert self.loop is not None and self.store is not None
        code = child.exited.result()
        log.error("%s (pid %s) exited with code %s", child.name, child.process.pid, code)
        if child.role is Role.WORKER:
            if child.channel is not None:
                child.channel.close()
            dropped = self.store.drop_owner(child.index)
            log.info("released %d reservations and leases of %s (big uploads parked, to be "
                     "resumed)", dropped, child.name)  # fmt: skip
            self.log_changes()
        elif child.role is Role.PERSISTER:
            assert self.durability is not None
            self.durability.exited(child)
        else:
            self.broadcast(("hasher_died",))
        delay = self.restarts.delay(child)
        if delay is None:
            log.error("%s keeps failing to start; stopping the server", child.name)
            self.exit_code = 1
            self.stop_requested.set()
            return
        start = {Role.WORKER: self.start_worker, Role.HASHER: self.start_hasher,
                 Role.PERSISTER: lambda _: self.durability and self.durability.start()}  # fmt: skip
        telemetry.RESTARTS.labels(child.role.value, str(child.index)).inc()
        self.loop.call_later(
            delay, lambda: None if self.stopping else start[child.role](child.index)
        )

    def on_worker_message(self, child: Child, msg: Any, fds: list[int]) -> None:
        for fd in fds:
            socket.close(fd)
        kind = msg[0]
        if kind == "rpc":
            assert self.calls is not None
            self.calls.queue(child, msg[1])
        elif kind == "watch":
            child.watching = dict(msg[1])
        elif kind == "auth_failed":
            if self.acceptor is not None:
                self.acceptor.throttle.failed(msg[1])
        elif kind == "ready":
            child.ready = True
            log.debug("%s ready (pid %s)", child.name, msg[1])

    def log_changes(self) -> None:
        """After a store change outside a call (a dead worker's holds, pruning): to disk."""
        if self.calls is not None:
            self.calls.log_changes()
            if self.durability is not None:
                self.durability.send_log()

    def broadcast(self, msg: Any) -> None:
        for worker in self.workers.values():
            if worker.channel is not None and worker.alive:
                worker.channel.send(msg)

    def expire_parked(self) -> None:
        """Give back the extents of uploads cut short that were not resumed in time."""
        if self.stopping or self.store is None or self.loop is None:
            return
        expired = self.store.expire_parked()
        if expired:
            log.info("gave up %d uploads cut short (not resumed in time)", expired)
        self.loop.call_later(EXPIRE_EVERY, self.expire_parked)

    # -- health ------------------------------------------------------------------------------

    def readiness(self) -> Response:
        alive = [w for w in self.workers.values() if w.alive and w.ready]
        if self.stopping or not self.acceptor or len(alive) < self.config.workers:
            return Response(503, f"{len(alive)}/{self.config.workers} workers ready\n".encode())
        if self.durability is not None and not self.durability.ready:
            return Response(503, b"the persisting process is starting\n")
        return Response(200, b"ready\n")

    def metrics(self) -> Response:
        if self.store is None:
            return Response(503, b"starting\n")
        persist = self.durability.stats() if self.durability is not None else None
        body, content_type = render_metrics(self.store.stats(), persist)
        return Response(200, body, content_type)
