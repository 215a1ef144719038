"""The worker's side of the hashing pool: ``HashClient`` sends jobs, ``HashStream`` reports an
upload's progress to the hasher that digests it while it arrives (see ``fsserver.hasher``).

Jobs go to the one job socket every hasher reads, with this worker's reply socket attached as a
passed descriptor, so a restarted worker or hasher needs no re-wiring. When the supervisor
reports a dead hasher, one-shot jobs are sent again and streams fall back to one-shot jobs (a
duplicate answer is harmless).
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import socket

from common.digest import EMPTY_DIGEST
from fsserver.channel import SendQueue, channel_pair, pack_batches
from fsserver.hasher import PROGRESS

log = logging.getLogger(__name__)

LARGE_JOB = 4 * 1024 * 1024
"""Jobs at least this big travel alone so that several hashers share big uploads."""
STREAM_MIN = 8 * 1024 * 1024
"""Uploads at least this big are hashed while they arrive."""
REPORT_STEP = 4 * 1024 * 1024
"""A stream reports progress after at least this many new bytes."""

Job = tuple[int, int, int] | tuple[int, int, int, tuple[int, ...]]
"""(job id, offset, length), or with the lengths of the pieces that fill the extent one after
another: a run of small files, digested in one job (their digests, concatenated)."""


class HashStream:
    """One upload being digested while it fills its extent."""

    def __init__(self, client: HashClient, job: Job, progress: socket.socket,
                 verdict: asyncio.Future[bytes]) -> None:  # fmt: skip
        self.client = client
        self.job = job
        self.verdict = verdict
        self.progress = progress
        self.reported = 0
        self.broken = False

    def advanced(self, upto: int) -> None:
        """Bytes 0..*upto* of the extent are final."""
        if self.broken or upto <= self.reported:
            return  # (the hasher may have answered and closed the stream already)
        if upto - self.reported < REPORT_STEP and upto < self.job[2]:
            return
        try:
            self.progress.send(PROGRESS.pack(upto))
            self.reported = upto
        except BlockingIOError:  # the hasher is behind; a later report says more
            return
        except OSError:
            self.give_up()

    def finish(self) -> asyncio.Future[bytes]:
        """The digest of the whole extent, once every byte is in it (the answer may be
        there already: the last report went out with the last byte)."""
        self.advanced(self.job[2])
        if self.reported < self.job[2]:
            self.give_up()
        if self.broken and not self.verdict.done():
            self.client.requeue(self.job)
        return self.verdict

    def give_up(self) -> None:
        """Stop streaming (the hasher went away, or cannot keep up); ``finish`` then hashes
        the extent in one job instead."""
        if not self.broken:
            self.broken = True
            self.progress.close()

    def abort(self) -> None:
        """The upload ended without a CheckHash (cancelled, or its connection closed)."""
        self.give_up()
        self.client.forget(self.job[0])


class HashClient:
    """``await hashes.digest(offset, size)``, or ``hashes.stream(offset, size)`` for uploads."""

    def __init__(self, jobs: socket.socket) -> None:
        self.loop = asyncio.get_running_loop()
        self.jobs = jobs
        self.reply_in, self.reply_out = channel_pair()
        self.reply_in.setblocking(False)
        self._next_id = 1
        self._pending: dict[int, tuple[asyncio.Future[bytes], Job]] = {}
        self._streams: dict[int, HashStream] = {}
        self._batch: list[Job] = []
        # MSG_DONTWAIT, not O_NONBLOCK: the job socket's file status is shared with every
        # other worker. Each job carries this worker's reply socket.
        self._out = SendQueue(jobs, flags=socket.MSG_DONTWAIT, extra_fds=[self.reply_out.fileno()])
        self.loop.add_reader(self.reply_in.fileno(), self._on_replies)

    def digest(self, offset: int, size: int) -> asyncio.Future[bytes]:
        fut: asyncio.Future[bytes] = self.loop.create_future()
        if size == 0:
            fut.set_result(EMPTY_DIGEST)
            return fut
        job = self._new_job(fut, offset, size)
        self.requeue(job)
        return fut

    def digest_run(self, offset: int, sizes: tuple[int, ...]) -> asyncio.Future[bytes]:
        """The digests of files that lie one after another from *offset*, concatenated: one
        job, one answer for a whole small-file batch."""
        total = sum(sizes)
        fut: asyncio.Future[bytes] = self.loop.create_future()
        if total == 0:
            fut.set_result(EMPTY_DIGEST * len(sizes))
            return fut
        self.requeue(self._new_job(fut, offset, total, sizes))
        return fut

    def stream(self, offset: int, size: int) -> HashStream:
        verdict: asyncio.Future[bytes] = self.loop.create_future()
        job = self._new_job(verdict, offset, size)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        self._send([(data, [theirs]) for data in pack_batches("stream", [job])])
        stream = self._streams[job[0]] = HashStream(self, job, ours, verdict)
        return stream

    def forget(self, job_id: int) -> None:
        self._pending.pop(job_id, None)
        self._streams.pop(job_id, None)

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def resubmit_all(self) -> None:
        """A hasher died: its jobs may be lost. Send one-shot jobs again; streams give up."""
        for job_id, (_fut, job) in self._pending.items():
            stream = self._streams.get(job_id)
            if stream is None:
                self.requeue(job)
            elif not stream.broken:
                stream.give_up()
                if stream.reported == job[2]:  # finished: its answer may be lost with it
                    self.requeue(job)

    def requeue(self, job: Job) -> None:
        """Send *job*: alone and at once if it is big or a batch's run of small files (its
        batch waits for nothing else), else with the other jobs of this loop iteration."""
        if job[2] >= LARGE_JOB or len(job) > 3:
            self._send([(data, []) for data in pack_batches("hash", [job])])
            return
        if not self._batch:
            self.loop.call_soon(self._flush)
        self._batch.append(job)

    def _new_job(self, fut: asyncio.Future[bytes], offset: int, size: int,
                 pieces: tuple[int, ...] = ()) -> Job:  # fmt: skip
        job: Job = (self._next_id, offset, size)
        if pieces:
            job = (*job, pieces)
        self._next_id += 1
        self._pending[job[0]] = (fut, job)
        return job

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        self._send([(data, []) for data in pack_batches("hash", batch)])

    def _send(self, messages: list[tuple[bytes, list[socket.socket]]]) -> None:
        self._out.push(messages)

    def _on_replies(self) -> None:
        while True:
            try:
                data = self.reply_in.recv(1 << 20)
            except BlockingIOError:
                return
            for job_id, digest in pickle.loads(data):
                fut = self._pending.pop(job_id, (None, None))[0]
                self._streams.pop(job_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(digest)

    def close(self) -> None:
        self.loop.remove_reader(self.reply_in.fileno())
        self._out.close()
        for stream in self._streams.values():
            stream.give_up()
        self.reply_in.close()
        self.reply_out.close()
