"""``BatchUpload``: the engine behind ``Client.put_many`` for many small files.

A coroutine, a semaphore slot and three awaited futures per file cost more than the rest of the
client's work on a 4 KiB file. Here each small file is a ``SmallUpload`` driven by the protocol's
callbacks: it is read and hashed once, its packets are queued as its responses arrive, and a
finished session starts the next file, so a window of sessions stays in flight. Files too big to
hold in memory, and files that changed while being sent, go through ``Client.put`` afterwards.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from common import messages as m
from common.batches import batch_allowed
from common.digest import digest_of
from common.errors import FSError, RemoteError
from common.limits import ANY_VERSION
from common.paths import normalize_path
from fsclient.localfiles import SMALL_FILE
from fsclient.protocol import error_from, refusal
from fsclient.smallbatch import Batcher, read_small
from fsclient.transfer import FileChanged, FileSource, Known

if TYPE_CHECKING:
    from fsclient.client import Client

Result = m.FileEntry | FSError | OSError
BYTES_IN_FLIGHT = 64 * 1024 * 1024
"""Small files are held in memory while they are sent: at most this much at once."""
OnResult = Callable[[int, Result], None]
"""Told each file's result (by its index) as soon as it is known, for progress and bookkeeping
that need not wait for the last file."""
Pair = tuple[str | os.PathLike[str], str]
Item = tuple[str | os.PathLike[str], str, int, Known | None]
"""(local, remote, base version, known): an upload that must not overwrite a newer server
version, and what is known of the file already (see ``FileSource``)."""


class ItemSequence(Sequence[Item]):
    """Items made on demand, each a whole ``Item``: taken as they are, not copied into a
    list (``fsclient.sync.actions.UploadItems``)."""


def as_item(pair: Pair | tuple[str | os.PathLike[str], str, int] | Item) -> Item:
    """Fill in what a pair leaves out: any version, nothing known."""
    if len(pair) == 4:
        return pair  # type: ignore[return-value]
    local, remote, *rest = pair
    base_version = rest[0] if rest else ANY_VERSION
    known = rest[1] if len(rest) > 1 else None
    return (local, remote, base_version, known)


class SmallUpload:
    """One small file's session; the protocol calls ``deliver`` and ``fail`` like a Mailbox."""

    def __init__(self, batch: BatchUpload, index: int, fid: int, source: FileSource,
                 path: str, base_version: int) -> None:  # fmt: skip
        self.batch = batch
        self.index = index
        self.fid = fid
        self.source = source
        self.path = path
        self.base_version = base_version
        self.size = source.meta.size

    def start(self) -> None:
        meta = self.source.meta
        payloads = self.batch.client.payloads
        flags = payloads.upload_flags(self.path, meta.size, lambda: self.source.view(0, meta.size))
        init = m.FileSyncInit(self.fid, meta.size, meta.mtime_ns, meta.mode, self.base_version,
                              meta.digest, self.path, flags)  # fmt: skip
        self.batch.proto.send(init)

    def send_data(self) -> None:
        proto, meta = self.batch.proto, self.source.meta
        data = self.source.view(0, meta.size)
        assert data is not None and meta.digest is not None
        if meta.size:
            proto.queue(proto.conn.frame_data(self.fid, data))
        proto.send(m.FileSyncCheckHash(self.fid, meta.digest))

    def deliver(self, event: Any) -> None:
        try:
            self._on(event)
        except (FSError, OSError) as exc:
            self.finish(exc)

    def _on(self, event: Any) -> None:
        if isinstance(event, m.FileSyncInitResponse):
            if event.status is m.InitStatus.ACCEPTED:
                self.send_data()
            elif event.status is not m.InitStatus.ALREADY_HAVE_CONTENT:
                self.finish(refusal(event.status, event.message))
        elif isinstance(event, m.FileSyncRetryUpload):
            try:
                self.source.refresh()
                changed = (
                    self.source.meta.size != self.size or self.source.view(0, self.size) is None
                )
            except OSError:  # gone or unreadable now
                changed = True
            if changed:
                self.batch.proto.send(m.FileSyncCancel(self.fid))
                self.finish(FileChanged(f"{self.path} changed during the upload"))
            else:
                self.send_data()
        elif isinstance(event, m.FileSyncFinish):
            meta = self.source.meta
            assert meta.digest is not None
            entry = m.FileEntry(meta.size, event.version, meta.mtime_ns, meta.mode,
                                meta.digest, self.path)  # fmt: skip
            self.finish(entry)
        elif isinstance(event, m.Error):
            self.finish(error_from(event))
        # FileSyncCheckHashResponse: OK is followed by Finish, MISMATCH by RetryUpload or Error

    def fail(self, exc: BaseException) -> None:
        self.finish(exc if isinstance(exc, (FSError, OSError)) else RemoteError(str(exc)))

    def finish(self, result: Result) -> None:
        if self.batch.proto.mailboxes.get(self.fid) is self:
            del self.batch.proto.mailboxes[self.fid]
            self.source.close()
            self.batch.complete(self.index, result, self.size)


class BatchUpload:
    def __init__(self, client: Client, pairs: Iterable[Pair | Item], window: int,
                 on_result: OnResult | None = None, keep: bool = True) -> None:  # fmt: skip
        self.client = client
        self.on_result = on_result
        self.callback_error: BaseException | None = None
        """What ``on_result`` raised: it is not called again, the upload goes on (files in
        flight must still be answered), and ``run`` raises it at the end."""
        self.proto = client.proto
        self.pairs: Sequence[Item] = (
            pairs if isinstance(pairs, ItemSequence) else [as_item(pair) for pair in pairs]
        )
        self.window = window
        self.results: list[Result | None] | None = [None] * len(self.pairs) if keep else None
        """Every result, returned at the end; None if not *keep* (``on_result`` hears of
        each: a sync of a million files holds no million entries)."""
        self.later: list[int] = []
        self.in_flight = 0
        self.in_flight_bytes = 0
        self.todo: Iterator[int] = iter(range(len(self.pairs)))
        self.exhausted = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.batcher = (
            Batcher(self, client.max_packet) if batch_allowed(client.max_packet) else None
        )
        """Whole small files travel in SmallFileBatch packets when the connection allows."""

    async def run(self) -> list[Result]:
        self.refill()
        await self.done
        for index in self.later:
            local, remote, base_version, known = self.pairs[index]
            try:
                result: Result = await self.client.put(
                    local, remote, base_version=base_version, known=known
                )
            except (FSError, OSError) as exc:
                result = exc
            self.settled(index, result)
        if self.callback_error is not None:
            raise self.callback_error
        if self.results is None:
            return []
        assert all(result is not None for result in self.results)
        return self.results  # type: ignore[return-value]

    def refill(self) -> None:
        batcher = self.batcher
        while self.in_flight < self.window and self.in_flight_bytes < BYTES_IN_FLIGHT:
            if batcher is not None and batcher.blocked:
                break
            if not self.proto.slots.session_room() and self.proto.failure is None:
                # at the server's limit (other calls on the connection hold sessions too)
                self.proto.slots.when_room(self.refill)
                break
            index = next(self.todo, None)
            if index is None:
                self.exhausted = True
                break
            self.begin(index)
            if batcher is not None and batcher.sent:
                batcher.sent = False
                if self.proto.buffered():
                    # what the socket did not take leaves only when the loop runs: read on
                    # after it has (on a slow link the first batch would wait for the window)
                    self.proto.loop.call_soon(self.refill)
                    break
        if batcher is not None:
            batcher.pump(final=self.exhausted)
        idle = batcher is None or batcher.idle
        if self.exhausted and not self.in_flight and idle and not self.done.done():
            self.done.set_result(None)

    def begin(self, index: int) -> None:
        local, remote, base_version, _known = self.pairs[index]
        try:
            path = normalize_path(remote)
            if self.batcher is not None:
                path_bytes = len(path) if path.isascii() else len(path.encode())
                whole = read_small(local, self.batcher.limit(path_bytes))
                if isinstance(whole, int):  # too big for a batch: its size
                    size = whole
                else:
                    data, mtime_ns, mode = whole
                    record = m.SmallFile(mtime_ns, mode, base_version, digest_of(data), path, data)
                    self.batcher.add(index, record, path_bytes)
                    return
            else:
                size = os.stat(local).st_size
            if size > SMALL_FILE:  # too big to hold: streamed later
                self.later.append(index)
                return
            source = FileSource(local)
        except (FSError, OSError) as exc:
            self.settled(index, exc)
            return
        if source.view(0, source.meta.size) is None:  # it grew meanwhile
            source.close()
            self.later.append(index)
            return
        if self.proto.failure is not None:
            source.close()
            self.settled(index, self.proto.failure)  # the connection's end, as for the rest
            return
        upload = SmallUpload(self, index, self.client.new_file_id(), source, path, base_version)
        self.proto.mailboxes[upload.fid] = upload
        self.in_flight += 1
        self.in_flight_bytes += source.meta.size
        upload.start()

    def settle(self, indices: list[int], results: list[Result | None], refill: bool = True
               ) -> None:  # fmt: skip
        """A batch's outcome; None: a digest mismatch, sent again through a session."""
        for index, result in zip(indices, results, strict=True):
            if result is None:
                self.later.append(index)
            else:
                self.settled(index, result)
        if refill:
            self.refill()

    def complete(self, index: int, result: Result, size: int) -> None:
        self.in_flight -= 1
        self.in_flight_bytes -= size
        if isinstance(result, FileChanged):
            self.later.append(index)
        else:
            self.settled(index, result)
        self.refill()

    def settled(self, index: int, result: Result) -> None:
        if self.results is not None:
            self.results[index] = result
        if self.on_result is not None:
            try:
                self.on_result(index, result)
            except BaseException as exc:  # runs in protocol callbacks: raise it from run()
                self.on_result = None
                self.callback_error = exc
