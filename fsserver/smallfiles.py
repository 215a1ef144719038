"""Small-file batches on the server (``BatchHandlers``, a mixin of ``ClientConnection``).

A ``SmallFileBatch`` carries several whole files, each with the digest its sender computed. They
take the same steps as a file session, batched, with one hop to each other process per batch:
the files' bytes are copied one after another into the worker's staging area of the arena
(``fsserver.store.staging``); one hash job has a hashing process digest every file from shared
memory; then one ``store_many`` call stores the files whose digest matched, copying each into an
extent of its own, or linking it to content the share holds already (``ALREADY_HAVE_CONTENT``);
then one reply carries a result per file. Batches of a connection are stored in the order they
arrived, so its files get their versions in the order they were sent. A file whose digest does
not match is not stored and is reported ``MISMATCH``: the client sends it again through a file
session, which has retries."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from common import messages as m
from common.errors import ErrorCode, InvalidPath
from common.limits import DIGEST_SIZE
from common.paths import normalize_path
from fsserver import telemetry
from fsserver.connlog import ConnectionLog
from fsserver.context import WorkerContext
from fsserver.store import BatchStored
from fsserver.uploads import refusal

log = logging.getLogger(__name__)

S = m.FileStatus
OUTCOMES = {
    S.STORED: "ok",
    S.ALREADY_HAVE_CONTENT: "ok",
    S.NO_SPACE: "no_space",
    S.TOO_LARGE: "no_space",
    S.CONFLICT: "conflict",
    S.MISMATCH: "mismatch",
}
"""Session outcome label (``fs_sessions_total``) of each file status; others count as error."""


@dataclass(slots=True)
class PendingBatch:
    request_id: int
    files: tuple[m.SmallFile, ...]
    results: list[m.FileResult | None]
    paths: list[str]
    where: list[int] = field(default_factory=list)
    """The files that go to the store (valid path, allowed size), in order."""
    staged: int = -1
    """Offset of the files' bytes in the staging area (-1: not there, or given back)."""
    size: int = 0
    digests: bytes = b""
    """What the hasher found for the files of ``where``, concatenated."""
    verified: bool = False
    started: float = field(default_factory=time.monotonic)


class BatchHandlers:
    ctx: WorkerContext
    share: str
    closing: bool
    origin: int
    writer: str
    read_only: bool
    batches: dict[int, PendingBatch]
    batch_order: deque[PendingBatch]
    activity: ConnectionLog
    send: Callable[[m.Message], None]
    fail: Callable[[ErrorCode, str], None]

    def on_batch(self, msg: m.SmallFileBatch) -> None:
        files = msg.files
        batch = PendingBatch(msg.request_id, files, [None] * len(files), [""] * len(files))
        if self.read_only:
            denied = m.FileResult(S.DENIED, 0, "this token is read-only")
            batch.results = [denied] * len(files)
            telemetry.refused("read_only", len(files))
            self.finish_batch(batch)
            return
        for index, f in enumerate(files):
            try:
                path = normalize_path(f.path)
            except InvalidPath as exc:
                batch.results[index] = m.FileResult(S.INVALID_PATH, 0, exc.message)
                telemetry.refused("invalid_path")
                continue
            size = len(f.data)
            too_large = self.ctx.too_large(size)
            if too_large:
                batch.results[index] = m.FileResult(S.TOO_LARGE, 0, too_large)
                telemetry.refused("too_large")
                continue
            batch.paths[index] = path
            batch.where.append(index)
            batch.size += size
        if not batch.where:
            self.finish_batch(batch)
            return
        self.batches[msg.request_id] = batch
        self.batch_order.append(batch)
        self.ctx.staging.take(batch.size, lambda offset: self.on_batch_staged(batch, offset))

    def live(self, batch: PendingBatch) -> bool:
        return not self.closing and self.batches.get(batch.request_id) is batch

    def on_batch_staged(self, batch: PendingBatch, offset: int) -> None:
        """Room in the staging area: copy the files there, one after another, and have them
        digested in one job."""
        if not self.live(batch):  # closed while it waited for room
            self.ctx.staging.give(offset, batch.size)
            return
        batch.staged = offset
        arena, files = self.ctx.arena, batch.files
        sizes = []
        for index in batch.where:
            data = files[index].data
            arena[offset : offset + len(data)] = data
            offset += len(data)
            sizes.append(len(data))
        self.ctx.hashes.digest_run(batch.staged, tuple(sizes)).add_done_callback(
            lambda fut: self.on_batch_hashed(batch, fut)
        )

    def on_batch_hashed(self, batch: PendingBatch, fut: asyncio.Future[bytes]) -> None:
        """Batches are stored in the order they arrived, so one that is verified before an
        earlier one waits for it."""
        if fut.cancelled() or not self.live(batch):
            self.unstage(batch)  # closing: no store call will read it (if drop_batches has not
            return  # given it back already)
        batch.digests = fut.result()
        batch.verified = True
        order = self.batch_order
        while order and order[0].verified:
            self.store_batch(order.popleft())

    def store_batch(self, batch: PendingBatch) -> None:
        """Store the files whose digest matched, in one call."""
        items: list[tuple[Any, ...]] = []
        stored: list[int] = []
        source = batch.staged
        for k, index in enumerate(batch.where):
            f = batch.files[index]
            actual = batch.digests[k * DIGEST_SIZE : (k + 1) * DIGEST_SIZE]
            if actual == f.digest:
                items.append((source, batch.paths[index], len(f.data), f.mtime_ns, f.mode,
                              actual, f.base_version))  # fmt: skip
                stored.append(index)
            else:
                batch.results[index] = m.FileResult(
                    S.MISMATCH, 0, f"digest mismatch: the bytes sent hash to {actual.hex()}"
                )
            source += len(f.data)
        if not items:
            self.unstage(batch)
            self.finish_batch(batch)
            return

        def deliver(fut: asyncio.Future[Any]) -> None:
            self.unstage(batch)  # the store has copied what it keeps (or the call failed)
            if fut.cancelled() or self.closing:
                return
            exc = fut.exception()
            if exc is not None:
                log.error("store call store_many failed: %s", exc)
                self.fail(ErrorCode.INTERNAL, "store unavailable")
                return
            self.on_batch_stored(batch, stored, fut.result())

        self.ctx.rpc.call(
            "store_many", self.share, items, self.origin, self.writer
        ).add_done_callback(deliver)

    def on_batch_stored(self, batch: PendingBatch, stored: list[int], done: BatchStored
                        ) -> None:  # fmt: skip
        for at, index in enumerate(stored):
            refused = done.refused.get(at)
            if refused is not None:
                telemetry.refused(refusal(refused))
                batch.results[index] = m.FileResult(S(refused.status), refused.version,
                                                    refused.message)  # fmt: skip
            else:
                status = S.ALREADY_HAVE_CONTENT if at in done.reused else S.STORED
                batch.results[index] = m.FileResult(status, done.versions[at], "")
        self.finish_batch(batch)

    def unstage(self, batch: PendingBatch) -> None:
        if batch.staged >= 0:
            self.ctx.staging.give(batch.staged, batch.size)
            batch.staged = -1

    def finish_batch(self, batch: PendingBatch) -> None:
        self.batches.pop(batch.request_id, None)
        results = tuple(r for r in batch.results if r is not None)
        assert len(results) == len(batch.files)
        for status, n in Counter(r.status for r in results).items():
            outcome = OUTCOMES.get(status, "error")
            telemetry.SESSIONS.labels("upload", outcome).inc(n)
            if outcome == "ok":
                elapsed = time.monotonic() - batch.started
                telemetry.observe_many(telemetry.UPLOAD_SECONDS, [elapsed] * n)
        for f, result in zip(batch.files, results, strict=True):
            if OUTCOMES.get(result.status) == "ok":
                self.activity.uploaded(f.path, len(f.data), ", in a batch")
            else:
                why = result.message or result.status.name
                self.activity.transfer_failed("upload", f.path, why)
        self.send(m.SmallFileBatchResponse(batch.request_id, results))

    def drop_batches(self) -> None:
        """The connection is gone: give back the staging of every batch no store call holds
        (a hash job still reading it does no harm; its answer is ignored)."""
        for batch in self.batch_order:
            self.unstage(batch)
        self.batches.clear()
        self.batch_order.clear()
