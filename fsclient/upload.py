"""One upload session on the wire: ``upload`` sends a source's bytes, from where the server
says it holds them up to (an upload cut short and resumed), and waits for the verdict; a digest
mismatch sends the whole file again."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from common import messages as m
from common.compression import PROBE_BYTES
from common.digest import EMPTY_DIGEST, StreamingDigest
from fsclient.compress import LinkGauge
from fsclient.localfiles import CHUNK
from fsclient.protocol import ClientProtocol, refusal
from fsclient.transfer import BufferRing, FileChanged, Progress, SourceMeta, UploadSource

if TYPE_CHECKING:
    from fsclient.client import Client

log = logging.getLogger(__name__)

ZERO_COPY_MIN = 64 * 1024
SEND_CHUNK = 256 * 1024


async def upload(client: Client, source: UploadSource, path: str, base_version: int,
                 progress: Progress | None = None) -> m.FileEntry:  # fmt: skip
    """Upload *source* to *path* in one file session; its entry as stored. A big file streams
    unhashed, so the server cannot see that it holds its content already; refused for lack
    of room, it is hashed and offered once more, so a copy of stored content is linked."""
    fid, box = await client.open_session()
    proto = client.proto  # (a lost one stays lost: another transfer may replace it meanwhile)
    try:
        meta = source.meta
        flags = client.payloads.upload_flags(path, meta.size, lambda: first_bytes(source))
        proto.send(m.FileSyncInit(fid, meta.size, meta.mtime_ns, meta.mode,
                                  base_version, meta.digest, path, flags))  # fmt: skip
        reply: m.FileSyncInitResponse = await box.next()
        if reply.status is m.InitStatus.ALREADY_HAVE_CONTENT:
            assert meta.digest is not None
            return entry_of(meta, meta.digest, path, await box.next())
        if reply.status is m.InitStatus.NO_SPACE and source.add_digest():
            log.info("%s: no room for a new copy; asking again with the file's digest", path)
            client.close_session(fid)
            return await upload(client, source, path, base_version, progress)
        if reply.status is not m.InitStatus.ACCEPTED:
            raise refusal(reply.status, reply.message)
        start = reply.offset  # the server holds the bytes before it (an upload resumed)
        if start:
            log.info("%s: resuming the upload at byte %d of %d", path, start, meta.size)
        while True:
            gauge = client.payloads.gauge(fid, meta.size - start)
            digest = await send_payload(proto, fid, source, progress, start, gauge)
            start = 0  # a retry sends every byte
            source.check_unchanged()
            proto.send(m.FileSyncCheckHash(fid, digest))
            verdict: m.FileSyncCheckHashResponse = await box.next()
            if verdict.status is m.HashStatus.OK:
                return entry_of(meta, digest, path, await box.next())
            await box.next()  # FileSyncRetryUpload, or an Error that raises
            source.refresh()
            if source.meta.size != meta.size:
                raise FileChanged(f"{path} changed size during the upload")
            meta = source.meta
    finally:
        client.close_session(fid)


async def send_payload(proto: ClientProtocol, fid: int, source: UploadSource,
                       progress: Progress | None = None, start: int = 0,
                       gauge: LinkGauge | None = None) -> bytes:  # fmt: skip
    """Send the bytes of *source* from *start* on; returns the digest of the whole file (the
    bytes before *start* are read and hashed, not sent). *gauge*: ``auto`` watches the link
    (a compressed upload's level follows it)."""
    size, known = source.meta.size, source.meta.digest
    hasher = None if known else StreamingDigest()
    conn = proto.conn
    zero_copy = conn.max_payload >= ZERO_COPY_MIN and not conn.compressed(fid)
    step = min(conn.max_payload, CHUNK) if zero_copy else SEND_CHUNK
    ring: BufferRing | None = None
    if hasher is not None and start:
        buffer = memoryview(bytearray(CHUNK))
        for pos in range(0, start, CHUNK):
            hasher.update(source.read_into(pos, buffer[: min(CHUNK, start - pos)]))
    pos = start
    while pos < size:
        if gauge is None:
            await proto.ready_to_send()
        else:
            waiting = gauge.timed()
            await proto.ready_to_send()
            gauge.waited_since(waiting)
        n = min(step, size - pos)
        lent = None
        chunk = source.view(pos, n)
        if chunk is None:  # read from disk into a buffer the transport may keep a while
            ring = ring or BufferRing(step)
            lent = ring.take(proto.written - proto.buffered())
            chunk = source.read_into(pos, memoryview(lent)[:n])
        if hasher:
            hasher.update(chunk)
        if zero_copy:
            proto.write([conn.data_header(fid, n), chunk])
        elif n == size:  # a small file: its packets leave with those around them
            proto.queue(conn.frame_data(fid, chunk))
        elif gauge is None:  # written now, so that the transport's flow control applies
            proto.write([conn.frame_data(fid, chunk)])
        else:
            compressing = gauge.timed()
            proto.write([conn.frame_data(fid, chunk)])
            gauge.busy_since(compressing)
        if ring and lent:
            ring.lend(lent, proto.written if zero_copy else 0)
        pos += n
        if gauge is not None and gauge.retune(n, proto.buffered()):
            proto.write([conn.new_frame(fid)])
        if progress is not None:
            progress(pos, size)
    if gauge is not None:
        gauge.done()
    return hasher.digest() if hasher else known or EMPTY_DIGEST


def first_bytes(source: UploadSource) -> memoryview | None:
    """The bytes that decide whether *source* is worth compressing (None if unreadable)."""
    n = min(source.meta.size, PROBE_BYTES)
    first = source.view(0, n)
    if first is None:
        try:
            first = source.read_into(0, memoryview(bytearray(n)))
        except (OSError, FileChanged):
            return None  # (the upload itself says what is wrong)
    return first


def entry_of(meta: SourceMeta, digest: bytes, path: str, finish: m.FileSyncFinish) -> m.FileEntry:
    return m.FileEntry(meta.size, finish.version, meta.mtime_ns, meta.mode, digest, path)
