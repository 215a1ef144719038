"""One download on the wire: ``download`` asks for a file, from the end of what a download of
it cut short left (``fsclient.resume``), writes it to a temp file and puts it in place once the
whole file's digest checks out. A download cut short again keeps its temp file."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from common import messages as m
from common.errors import FSError, HashMismatch
from fsclient.protocol import refusal
from fsclient.resume import keep_partial, lost, take_partial
from fsclient.transfer import DownloadTarget, Progress, as_written

if TYPE_CHECKING:
    from fsclient.client import Client

log = logging.getLogger(__name__)


async def download(client: Client, path: str, dest: Path, progress: Progress | None = None,
                   before_replace: Callable[[], None] | None = None,
                   version: int = 0) -> m.FileEntry:  # fmt: skip
    """Download *path* (its *version*, if not 0) to *dest* in one file session (two if a
    resumed download does not check out: the bytes kept were not what they seemed, so they
    all come again)."""
    entry = await _session(client, path, dest, progress, before_replace, True, version)
    if entry is None:
        log.warning("%s: the resumed download does not check out; starting over", path)
        entry = await _session(client, path, dest, progress, before_replace, False, version)
    assert entry is not None
    return entry


async def _session(client: Client, path: str, dest: Path, progress: Progress | None,
                   before_replace: Callable[[], None] | None, resume: bool, version: int
                   ) -> m.FileEntry | None:  # fmt: skip
    """The entry downloaded; None if the download resumed and the whole did not check out."""
    target = DownloadTarget(dest, progress)
    fid, box = await client.open_session()
    proto = client.proto  # (a lost one stays lost: another transfer may replace it meanwhile)
    try:
        partial = take_partial(dest) if resume else None
        offset, digest = target.open(partial)
        proto.start_download(fid, target)
        flags = client.payloads.download_flags()
        if version:
            proto.send(m.DownloadVersionRequest(fid, offset, digest, version, path, flags))
        else:
            proto.send(m.DownloadRequest(fid, offset, digest, path, flags))
        reply: m.DownloadResponse = await box.next()
        if reply.status is not m.LookupStatus.OK or reply.entry is None:
            raise refusal(reply.status, reply.message)
        if reply.offset:
            log.info("%s: resuming the download at byte %d", path, reply.offset)
        ok, actual = await box.next()
        if not ok and reply.offset:
            return None
        if not ok:
            raise HashMismatch(f"{path}: downloaded bytes have digest {actual.hex()}, "
                               f"expected {reply.entry.digest.hex()}")  # fmt: skip
        kept = await target.commit(before_replace, client.folders)
        return as_written(reply.entry, kept)
    except FSError as exc:
        kept = target.keep() if lost(exc) else None
        if kept is not None:
            keep_partial(dest, kept)
        raise
    finally:
        proto.abandon_download(fid)
        target.discard()  # a no-op once committed or kept
        client.close_session(fid)
