"""Uploads on the server: the state of one (``Upload``), the sink that reports its progress to
the hasher digesting it and to the supervisor (``UploadSink``), and the handlers
(``UploadHandlers``, a mixin of ``ClientConnection``): reserve an extent, take the bytes in,
verify, commit. A big upload cut short is parked, not freed, so that it can be resumed (see
``fsserver.store.parking``)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from common import messages as m
from common.connection import FSConnection
from common.errors import ErrorCode
from common.sinks import ViewSink
from fsserver import telemetry
from fsserver.connlog import ConnectionLog
from fsserver.context import WorkerContext, checked_path
from fsserver.hashing import STREAM_MIN, HashStream
from fsserver.store import Busy, Linked, Refused, Reserved
from fsserver.store.parking import RESUME_MIN

log = logging.getLogger(__name__)

MAX_HASH_RETRIES = 3
PROGRESS_STEP = 4 * 1024 * 1024
"""A big upload tells the supervisor how far it is after this many new bytes: what a worker
killed mid-upload leaves to resume."""
BUSY_POLL = 0.05
BUSY_WAIT = 3.0
"""An upload that finds the same upload in progress (most likely one whose connection has
just ended) asks again for this long before it starts afresh."""


@dataclass(slots=True)
class Upload:
    file_id: int
    path: str
    size: int
    mtime_ns: int
    mode: int
    base_version: int
    ticket: int
    offset: int
    attempts: int = 0
    committing: bool = False
    stream: HashStream | None = None
    sink: UploadSink | None = None
    started: float = 0.0
    """``time.monotonic()`` at its reservation (``fs_upload_duration_seconds``)."""


class UploadSink(ViewSink):
    """An extent filled from *start*. Its filled part is reported, as it grows, to the
    hasher digesting it (*stream*, big uploads) and now and then to the supervisor
    (*report*, uploads that can be resumed)."""

    __slots__ = ("report", "reported", "stream")

    def __init__(self, view: memoryview, start: int, stream: HashStream | None,
                 report: Callable[[int], None] | None) -> None:  # fmt: skip
        super().__init__(view)
        self.pos = self.reported = start
        self.stream = stream
        self.report = report

    def advance(self, nbytes: int) -> None:
        self.pos += nbytes
        if self.stream is not None:
            self.stream.advanced(self.pos)
        if self.report is not None and self.pos - self.reported >= PROGRESS_STEP:
            self.reported = self.pos
            self.report(self.pos)


def refusal(result: Refused) -> str:
    """The reason label of an upload the store refused: the limit, or the status."""
    return result.cause or m.InitStatus(result.status).name.lower()


class UploadHandlers:
    ctx: WorkerContext
    conn: FSConnection
    share: str
    closing: bool
    origin: int
    writer: str
    read_only: bool
    uploads: dict[int, Upload]
    opening: dict[int, m.FileSyncInit | m.DownloadRequest]
    loop: asyncio.AbstractEventLoop
    activity: ConnectionLog
    send: Callable[[m.Message], None]
    call_store: Callable[..., None]

    def ended(self, outcome: str, path: str, size: int, why: str = "") -> None:
        """Count the session's outcome; log it (a file received, at debug; a failure, info)."""
        telemetry.SESSIONS.labels("upload", outcome).inc()
        if outcome == "ok":
            self.activity.uploaded(path, size, why)
        else:
            self.activity.transfer_failed("upload", path, why or outcome)

    def on_init(self, msg: m.FileSyncInit) -> None:
        fid = msg.file_id
        path = self.session_path(msg)
        if path is None:
            self.ended("error", msg.path, msg.size, "invalid path")
            return
        if self.read_only:
            self.ended("error", path, msg.size, "the token is read-only")
            telemetry.refused("read_only")
            self.refuse(msg, m.Error(ErrorCode.PERMISSION_DENIED, fid, "this token is read-only"))
            return
        too_large = self.ctx.too_large(msg.size)
        if too_large:
            self.ended("no_space", path, msg.size, too_large)
            telemetry.refused("too_large")
            self.refuse(msg, m.FileSyncInitResponse(fid, m.InitStatus.TOO_LARGE, 0, 0,
                                                    f"{path}: {too_large}"))  # fmt: skip
            return
        self.opening[fid] = msg
        self.reserve(msg, path, BUSY_WAIT)

    def reserve(self, msg: m.FileSyncInit, path: str, patience: float) -> None:
        """Ask the store for room; while the same upload seems in progress (``Busy``), ask
        again for *patience* more seconds, then take a fresh extent."""
        self.call_store(
            lambda result: self.on_reserved(msg, path, result, patience),
            "reserve", self.share, path, msg.size, msg.mtime_ns, msg.mode, msg.digest,
            msg.base_version, self.origin, patience > 0, self.writer,
        )  # fmt: skip

    def session_path(self, msg: m.FileSyncInit | m.DownloadRequest) -> str | None:
        """The canonical form of a path a file session names; a bad one ends the session with
        a file-scoped Error (the connection and the client's other files carry on)."""

        def invalid(text: str) -> None:
            telemetry.refused("invalid_path")
            self.refuse(msg, m.Error(ErrorCode.INVALID_PATH, msg.file_id, text))

        return checked_path(msg.path, invalid)

    def refuse(self, msg: m.FileSyncInit | m.DownloadRequest, reply: m.Message) -> None:
        """Refuse a session without asking the store, yet like the store's answers (see
        ``claim``): the rest of the packets read with *msg* were parsed already, and may end
        its session, or end it and open its file id again."""
        self.opening[msg.file_id] = msg
        self.loop.call_soon(lambda: self.claim(msg) and self.send(reply))

    def claim(self, msg: m.FileSyncInit | m.DownloadRequest) -> bool:
        """True if *msg* still opens its session: the connection is open, and the client did
        not end the session (or end it and reuse its id) while the store answered."""
        if self.opening.get(msg.file_id) is not msg:
            return False
        del self.opening[msg.file_id]
        return not self.closing

    def on_reserved(self, msg: m.FileSyncInit, path: str, result: Any, patience: float) -> None:
        fid = msg.file_id
        if isinstance(result, Busy):
            if self.opening.get(fid) is msg and not self.closing:
                self.loop.call_later(BUSY_POLL, self.reserve, msg, path, patience - BUSY_POLL)
            return
        if not self.claim(msg):
            if isinstance(result, Reserved):  # a resumed extent stays resumable
                self.give_back(result.ticket, result.held if self.closing else None)
            return
        if isinstance(result, Linked):
            self.ended("ok", path, msg.size, ", content already there")
            self.send(
                m.FileSyncInitResponse(
                    fid, m.InitStatus.ALREADY_HAVE_CONTENT, result.version, 0, ""
                )
            )
            self.send(m.FileSyncFinish(fid, result.version))
        elif isinstance(result, Refused):
            conflict = result.status == m.InitStatus.CONFLICT
            self.ended("conflict" if conflict else "no_space", path, msg.size, result.message)
            telemetry.refused(refusal(result))
            self.send(
                m.FileSyncInitResponse(
                    fid, m.InitStatus(result.status), result.version, 0, result.message
                )
            )
        else:
            upload = Upload(
                fid,
                path,
                msg.size,
                msg.mtime_ns,
                msg.mode,
                msg.base_version,
                result.ticket,
                result.offset,
                started=time.monotonic(),
            )
            self.uploads[fid] = upload
            self.arm(upload, result.held)
            self.send(m.FileSyncInitResponse(fid, m.InitStatus.ACCEPTED, 0, result.held, ""))

    def arm(self, upload: Upload, start: int) -> None:
        """Point the file's payload at its extent, from byte *start* (the bytes before it are
        there already); a big upload is hashed while it arrives, from the first byte."""
        extent = self.ctx.arena[upload.offset : upload.offset + upload.size]
        if upload.size >= STREAM_MIN:
            upload.stream = self.ctx.hashes.stream(upload.offset, upload.size)
        report = None
        if upload.size >= RESUME_MIN:
            report = partial(self.ctx.rpc.call, "progress", upload.ticket)
            if upload.sink is not None and upload.sink.reported:  # a retry starts over
                report(0)
        upload.sink = UploadSink(extent, start, upload.stream, report)
        self.conn.attach_sink(upload.file_id, upload.sink)

    def drop(self, upload: Upload, *, park: bool = False) -> None:
        """Give back what an upload that will not be committed holds; with *park* (its
        connection ended), a big one's extent is kept a while, to be resumed."""
        if upload.stream is not None:
            upload.stream.abort()
            upload.stream = None
        if not upload.committing:
            done = upload.sink.pos if upload.sink is not None else 0
            self.give_back(upload.ticket, done if park else None)

    def give_back(self, ticket: int, done: int | None) -> None:
        """Free a reservation (*done* None), or park it with *done* bytes in its extent."""
        if done is None:
            self.ctx.rpc.call("abort", ticket)
        else:
            self.ctx.rpc.call("park", ticket, done)

    def on_check_hash(self, msg: m.FileSyncCheckHash) -> None:
        upload = self.uploads[msg.file_id]
        if upload.stream is not None:
            verdict, upload.stream = upload.stream.finish(), None
        else:
            verdict = self.ctx.hashes.digest(upload.offset, upload.size)
        verdict.add_done_callback(lambda fut: self.on_verified(upload, msg.digest, fut.result()))

    def on_verified(self, upload: Upload, claimed: bytes, actual: bytes) -> None:
        if self.closing or self.uploads.get(upload.file_id) is not upload:
            return
        fid = upload.file_id
        if actual == claimed:
            self.send(m.FileSyncCheckHashResponse(fid, m.HashStatus.OK, actual))
            upload.committing = True
            self.call_store(
                lambda result: self.on_committed(upload, result),
                "commit",
                upload.ticket,
                self.share,
                upload.path,
                upload.mtime_ns,
                upload.mode,
                actual,
                upload.base_version,
                self.origin,
                self.writer,
            )
            return
        self.send(m.FileSyncCheckHashResponse(fid, m.HashStatus.MISMATCH, actual))
        upload.attempts += 1
        if upload.attempts <= MAX_HASH_RETRIES:
            self.arm(upload, 0)
            self.send(m.FileSyncRetryUpload(fid, upload.attempts))
            return
        del self.uploads[fid]
        self.drop(upload)
        self.ended("mismatch", upload.path, upload.size, f"digest mismatch {upload.attempts} times")
        self.send(
            m.Error(
                ErrorCode.HASH_MISMATCH,
                fid,
                f"{upload.path}: digest mismatch {upload.attempts} times, giving up",
            )
        )

    def on_committed(self, upload: Upload, result: Any) -> None:
        if self.uploads.get(upload.file_id) is not upload:
            return
        del self.uploads[upload.file_id]
        if isinstance(result, Refused):
            self.ended("conflict", upload.path, upload.size, result.message)
            telemetry.refused("conflict")
            self.send(m.Error(ErrorCode.CONFLICT, upload.file_id, result.message))
        else:
            self.ended("ok", upload.path, upload.size)
            telemetry.UPLOAD_SECONDS.observe(time.monotonic() - upload.started)
            self.send(m.FileSyncFinish(upload.file_id, result.version))

    def on_cancel(self, msg: m.FileSyncCancel) -> None:
        upload = self.uploads.pop(msg.file_id)
        self.drop(upload)
        self.ended("cancelled", upload.path, upload.size, "cancelled by the client")
