"""Small-file batches on the server (``BatchHandlers``, a mixin of ``ClientConnection``).

A ``SmallFileBatch`` carries several whole files, each with the digest its sender computed.
They take the same steps as a file session, batched: one ``reserve_many`` store call for the
whole batch; the bytes of each reserved file copied into its extent of the arena; one hash job
per file (the hash client sends every job of a loop iteration in one message) so that a hashing
process verifies each digest from shared memory; one ``commit_many`` call for the files whose
digest matched; then one reply with a result per file. Content the share holds already is not
linked at reserve time (its bytes came anyway): ``commit`` reuses the stored blob, reported as
``ALREADY_HAVE_CONTENT``, so every file of a batch is verified and the files get their versions
in the order they were sent. A file whose digest does not match is not committed (its extent
goes back) and is reported ``MISMATCH``: the client sends it again through a file session,
which has retries.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from common import messages as m
from common.errors import InvalidPath
from common.paths import normalize_path
from fsserver import telemetry
from fsserver.context import WorkerContext
from fsserver.store import Committed, Linked, Refused, Reserved

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
    held: dict[int, Reserved] = field(default_factory=dict)
    """Files reserved and not yet handed to ``commit_many`` (given back if the batch dies)."""
    digests: dict[int, bytes] = field(default_factory=dict)
    waiting: int = 0
    """Hash verdicts still to come."""
    verified: bool = False


class BatchHandlers:
    ctx: WorkerContext
    share: str
    closing: bool
    origin: int
    read_only: bool
    batches: dict[int, PendingBatch]
    batch_order: deque[PendingBatch]
    send: Callable[[m.Message], None]
    call_store: Callable[..., None]

    def on_batch(self, msg: m.SmallFileBatch) -> None:
        files = msg.files
        batch = PendingBatch(msg.request_id, files, [None] * len(files), [""] * len(files))
        if self.read_only:
            denied = m.FileResult(S.DENIED, 0, "this token is read-only")
            batch.results = [denied] * len(files)
            self.finish_batch(batch)
            return
        items: list[tuple[Any, ...]] = []
        where: list[int] = []
        for index, f in enumerate(files):
            try:
                path = normalize_path(f.path)
            except InvalidPath as exc:
                batch.results[index] = m.FileResult(S.INVALID_PATH, 0, exc.message)
                continue
            size = len(f.data)
            too_large = self.ctx.too_large(size)
            if too_large:
                batch.results[index] = m.FileResult(S.TOO_LARGE, 0, too_large)
                continue
            batch.paths[index] = path
            items.append((path, size, f.mtime_ns, f.mode, f.base_version))
            where.append(index)
        if not items:
            self.finish_batch(batch)
            return
        self.batches[msg.request_id] = batch
        self.batch_order.append(batch)
        self.call_store(
            lambda result: self.on_batch_reserved(batch, where, result),
            "reserve_many",
            self.share,
            items,
            self.origin,
        )

    def on_batch_reserved(self, batch: PendingBatch, where: list[int], result: list[Any]) -> None:
        if self.closing or self.batches.get(batch.request_id) is not batch:
            for reserved in result:
                if isinstance(reserved, Reserved):
                    self.ctx.rpc.call("abort", reserved.ticket)
            return
        arena, hashes = self.ctx.arena, self.ctx.hashes
        for index, outcome in zip(where, result, strict=True):
            if isinstance(outcome, Refused):
                batch.results[index] = m.FileResult(S(outcome.status), outcome.version,
                                                    outcome.message)  # fmt: skip
            else:
                data = batch.files[index].data
                arena[outcome.offset : outcome.offset + len(data)] = data
                batch.held[index] = outcome
                batch.waiting += 1
                hashes.digest(outcome.offset, len(data)).add_done_callback(
                    lambda fut, index=index: self.on_batch_hashed(batch, index, fut)
                )
        if not batch.waiting:
            self.on_batch_verified(batch)

    def on_batch_hashed(self, batch: PendingBatch, index: int, fut: asyncio.Future[bytes]) -> None:
        if fut.cancelled():
            return
        batch.digests[index] = fut.result()
        batch.waiting -= 1
        if not batch.waiting:
            self.on_batch_verified(batch)

    def on_batch_verified(self, batch: PendingBatch) -> None:
        """Every reserved file of *batch* is hashed. Batches commit in the order they arrived
        (their files get versions in the order they were sent), so one that is verified
        before an earlier one waits for it."""
        if self.closing or self.batches.get(batch.request_id) is not batch:
            return  # connection_lost gave the reservations back
        batch.verified = True
        order = self.batch_order
        while order and order[0].verified:
            self.commit_batch(order.popleft())

    def commit_batch(self, batch: PendingBatch) -> None:
        """Commit the files whose digest matched."""
        items: list[tuple[Any, ...]] = []
        where: list[int] = []
        for index, reserved in batch.held.items():
            f, actual = batch.files[index], batch.digests[index]
            if actual == f.digest:
                items.append((reserved.ticket, batch.paths[index], f.mtime_ns, f.mode, actual,
                              f.base_version))  # fmt: skip
                where.append(index)
            else:
                self.ctx.rpc.call("abort", reserved.ticket)
                batch.results[index] = m.FileResult(
                    S.MISMATCH, 0, f"digest mismatch: the bytes sent hash to {actual.hex()}"
                )
        batch.held.clear()  # from here on the commit call owns the reservations
        if not items:
            self.finish_batch(batch)
            return
        self.call_store(
            lambda result: self.on_batch_committed(batch, where, result),
            "commit_many",
            self.share,
            items,
            self.origin,
        )

    def on_batch_committed(self, batch: PendingBatch, where: list[int], result: list[Any]
                           ) -> None:  # fmt: skip
        for index, outcome in zip(where, result, strict=True):
            if isinstance(outcome, Committed):
                batch.results[index] = m.FileResult(S.STORED, outcome.version, "")
            elif isinstance(outcome, Linked):
                batch.results[index] = m.FileResult(S.ALREADY_HAVE_CONTENT, outcome.version, "")
            else:
                batch.results[index] = m.FileResult(S(outcome.status), outcome.version,
                                                    outcome.message)  # fmt: skip
        self.finish_batch(batch)

    def finish_batch(self, batch: PendingBatch) -> None:
        self.batches.pop(batch.request_id, None)
        results = tuple(r for r in batch.results if r is not None)
        assert len(results) == len(batch.files)
        for status, n in Counter(r.status for r in results).items():
            telemetry.SESSIONS.labels("upload", OUTCOMES.get(status, "error")).inc(n)
        self.send(m.SmallFileBatchResponse(batch.request_id, results))

    def drop_batches(self) -> None:
        """The connection is gone: give back every reservation no commit call holds."""
        for batch in self.batches.values():
            for reserved in batch.held.values():
                self.ctx.rpc.call("abort", reserved.ticket)
            batch.held.clear()
        self.batches.clear()
        self.batch_order.clear()
