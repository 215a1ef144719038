"""The hashing pool: hasher processes and the worker-side ``HashClient`` that feeds them.

All hashers read jobs from one shared SEQPACKET socket, so the kernel hands each job message to
whichever hasher is idle. A job is ``(job id, offset, length)`` in the arena; the hasher digests a
memoryview of shared memory (zero-copy, xxhash releases the GIL) and answers on the reply socket
that came with the job as a passed descriptor. So a worker that restarts, or a hasher that
restarts, needs no re-wiring; a worker resubmits its open jobs when the supervisor reports a
hasher death.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import socket
from collections import deque

import xxhash

from common.digest import EMPTY_DIGEST
from fsserver.arena import BlobArena
from fsserver.channel import channel_pair, fds_ancillary, recv_message, split_batches

log = logging.getLogger(__name__)

LARGE_JOB = 4 * 1024 * 1024
"""Jobs at least this big travel alone so that several hashers share big uploads."""


def hash_jobs(arena: memoryview, jobs: list[tuple[int, int, int]]) -> list[tuple[int, bytes]]:
    results = []
    for job_id, offset, size in jobs:
        with arena[offset : offset + size] as view:
            results.append((job_id, xxhash.xxh3_128_digest(view)))
    return results


def serve_jobs(arena_name: str, jobs: socket.socket) -> None:
    """Body of a hasher process: hash job batches until the job socket closes."""
    arena = BlobArena.attach(arena_name)
    assert arena.view is not None
    try:
        while True:
            try:
                data, fds = recv_message(jobs)
            except InterruptedError:
                continue
            if not data:
                return
            _kind, batch = pickle.loads(data)
            results = pickle.dumps(hash_jobs(arena.view, batch), pickle.HIGHEST_PROTOCOL)
            for fd in fds[1:]:
                socket.close(fd)
            if not fds:
                log.error("hash job without a reply socket dropped")
                continue
            with socket.socket(fileno=fds[0]) as reply:
                try:
                    reply.send(results)
                except OSError as exc:  # the worker went away; its jobs die with it
                    log.debug("hash reply lost: %s", exc)
    finally:
        arena.close()


class HashClient:
    """Worker side: ``await hashes.digest(offset, size)`` returns the XXH3-128 of an extent."""

    def __init__(self, jobs: socket.socket) -> None:
        self.loop = asyncio.get_running_loop()
        self.jobs = jobs
        self.reply_in, self.reply_out = channel_pair()
        self.reply_in.setblocking(False)
        self._next_id = 1
        self._pending: dict[int, tuple[asyncio.Future[bytes], int, int]] = {}
        self._batch: list[tuple[int, int, int]] = []
        self._unsent: deque[bytes] = deque()
        self.loop.add_reader(self.reply_in.fileno(), self._on_replies)

    def digest(self, offset: int, size: int) -> asyncio.Future[bytes]:
        fut: asyncio.Future[bytes] = self.loop.create_future()
        if size == 0:
            fut.set_result(EMPTY_DIGEST)
            return fut
        job_id = self._next_id
        self._next_id += 1
        self._pending[job_id] = (fut, offset, size)
        self._queue((job_id, offset, size))
        return fut

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def resubmit_all(self) -> None:
        """A hasher died: its jobs may be lost, so send every open job again."""
        for job_id, (_fut, offset, size) in self._pending.items():
            self._queue((job_id, offset, size))

    def _queue(self, job: tuple[int, int, int]) -> None:
        if job[2] >= LARGE_JOB:
            self._send_all(split_batches("hash", [job]))
            return
        if not self._batch:
            self.loop.call_soon(self._flush)
        self._batch.append(job)

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        self._send_all(split_batches("hash", batch))

    def _send_all(self, messages: list[bytes]) -> None:
        was_idle = not self._unsent
        self._unsent.extend(messages)
        if was_idle:
            self._drain()

    def _drain(self) -> None:
        ancillary = fds_ancillary([self.reply_out.fileno()])
        while self._unsent:
            try:
                # MSG_DONTWAIT, not O_NONBLOCK: the job socket's file status is shared with
                # every other worker.
                self.jobs.sendmsg([self._unsent[0]], ancillary, socket.MSG_DONTWAIT)
            except BlockingIOError:
                self.loop.add_writer(self.jobs.fileno(), self._writable)
                return
            self._unsent.popleft()

    def _writable(self) -> None:
        self.loop.remove_writer(self.jobs.fileno())
        self._drain()

    def _on_replies(self) -> None:
        while True:
            try:
                data = self.reply_in.recv(1 << 20)
            except BlockingIOError:
                return
            for job_id, digest in pickle.loads(data):
                fut = self._pending.pop(job_id, (None, 0, 0))[0]
                if fut is not None and not fut.done():
                    fut.set_result(digest)

    def close(self) -> None:
        self.loop.remove_reader(self.reply_in.fileno())
        self.loop.remove_writer(self.jobs.fileno())
        self.reply_in.close()
        self.reply_out.close()
