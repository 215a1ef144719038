"""A hashing process: it digests extents of the arena, straight from shared memory.

Two kinds of job arrive on the job socket that every hasher shares (the kernel hands each message
to one idle hasher), each with the worker's reply socket as a passed descriptor:

- ``hash``: a batch of ``(job id, offset, length)``, digested one-shot (xxhash releases the GIL
  and reads the memoryview in place).
- ``stream``: one upload still in progress, with a second descriptor, a private progress socket.
  The worker writes "bytes 0..n are final" there as data arrives; the hasher digests each new
  region at once, so when the upload's last byte lands only the tail is left to hash. The hasher
  keeps serving other jobs meanwhile (one ``selectors`` loop over the job socket and every open
  stream). If the worker closes the progress socket, the stream is dropped.
"""

from __future__ import annotations

import logging
import pickle
import selectors
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

from common.digest import StreamingDigest, digest_of
from fsserver import telemetry
from fsserver.channel import recv_message, unpack
from fsserver.store.arena import ArenaRef

log = logging.getLogger(__name__)

PROGRESS = struct.Struct("=Q")
REPLY_TIMEOUT = 5.0


def hash_jobs(arena: memoryview, jobs: list[tuple[Any, ...]]) -> list[tuple[int, bytes]]:
    """Each job is (id, offset, length), or (id, offset, length, piece lengths) for a run of
    small files: the run's answer is their digests, concatenated."""
    results = []
    seconds = []
    total = 0
    clock = time.perf_counter
    digest = digest_of
    for job_id, offset, size, *pieces in jobs:
        started = clock()
        if pieces:
            found, at = [], offset
            for n in pieces[0]:
                with arena[at : at + n] as view:
                    found.append(digest(view))
                at += n
            results.append((job_id, b"".join(found)))
        else:
            with arena[offset : offset + size] as view:
                results.append((job_id, digest(view)))
        seconds.append(clock() - started)
        total += size
    telemetry.observe_many(telemetry.HASH_SECONDS, seconds)  # once per batch of jobs
    telemetry.HASH_BYTES.inc(total)
    return results


def reply(fd: int, results: list[tuple[int, bytes]]) -> None:
    with socket.socket(fileno=fd) as sock:
        sock.settimeout(REPLY_TIMEOUT)  # one stuck worker must not stall the whole pool
        try:
            sock.send(pickle.dumps(results, pickle.HIGHEST_PROTOCOL))
        except OSError as exc:  # the worker went away; its jobs die with it
            log.debug("hash reply lost: %s", exc)


@dataclass
class Stream:
    job_id: int
    offset: int
    size: int
    reply_fd: int
    progress: socket.socket
    done: int = 0
    busy: float = 0.0
    """Seconds spent digesting this stream (its share of the hasher's time)."""
    digest: StreamingDigest = field(default_factory=StreamingDigest)


class Hasher:
    def __init__(self, arena: memoryview, jobs: socket.socket, index: int) -> None:
        self.arena = arena
        self.jobs = jobs
        self.sampler = telemetry.ProcessSampler("hasher", index)
        self.selector = selectors.DefaultSelector()
        self.selector.register(jobs, selectors.EVENT_READ)
        self.running = True

    def serve(self) -> None:
        while self.running:
            if self.sampler.due():
                self.sampler.sample()
            for key, _ in self.selector.select(telemetry.SAMPLE_EVERY):
                if key.fileobj is self.jobs:
                    self.take_job()
                else:
                    self.advance(key.data)

    def take_job(self) -> None:
        try:
            # MSG_DONTWAIT: another hasher may have taken the message we were woken for
            data, fds = recv_message(self.jobs, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            self.running = False
            return
        kind, batch = unpack(data)
        if not fds:
            log.error("hash job without a reply socket dropped")
        elif kind == "stream" and len(fds) == 2:
            job_id, offset, size = batch[0]
            progress = socket.socket(fileno=fds[1])
            progress.setblocking(False)
            stream = Stream(job_id, offset, size, fds[0], progress)
            self.selector.register(progress, selectors.EVENT_READ, stream)
            return
        else:
            reply(fds[0], hash_jobs(self.arena, batch))
        for fd in fds[1:]:
            socket.close(fd)

    def advance(self, stream: Stream) -> None:
        """Digest what became final since last time; answer once the extent is complete."""
        upto = stream.done
        while True:
            try:
                message = stream.progress.recv(PROGRESS.size * 64)
            except BlockingIOError:
                break
            if not message:  # the worker gave the upload up
                self.close(stream, answer=False)
                return
            upto = max(upto, PROGRESS.unpack_from(message, len(message) - PROGRESS.size)[0])
        upto = min(upto, stream.size)
        start = stream.offset + stream.done
        started = time.perf_counter()
        with self.arena[start : stream.offset + upto] as view:
            stream.digest.update(view)
        stream.busy += time.perf_counter() - started
        telemetry.HASH_BYTES.inc(upto - stream.done)
        stream.done = upto
        if upto == stream.size:
            self.close(stream, answer=True)

    def close(self, stream: Stream, answer: bool) -> None:
        self.selector.unregister(stream.progress)
        stream.progress.close()
        if answer:
            telemetry.HASH_SECONDS.observe(stream.busy)
            reply(stream.reply_fd, [(stream.job_id, stream.digest.digest())])
        else:
            socket.close(stream.reply_fd)


def serve_jobs(ref: ArenaRef, jobs: socket.socket, index: int) -> None:
    """Body of a hasher process: serve jobs until the job socket closes."""
    arena = ref.attach()
    assert arena.view is not None
    try:
        Hasher(arena.view, jobs, index).serve()
    finally:
        arena.close()
