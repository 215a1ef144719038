"""Fill a share with many tiny files fast: whole windows of full ``SmallFileBatch`` packets on
a few raw connections, one process each (no local files, no client engine). A million files
take seconds this way, where ``put_many`` would first need a million local files."""

from __future__ import annotations

import contextlib
from concurrent.futures import ProcessPoolExecutor

from common import messages as m
from common.digest import digest_of
from common.limits import ANY_VERSION, MAX_BATCH_FILES, MAX_BATCH_PACKET, MAX_BATCHES_IN_FLIGHT
from tests.rawclient import RawClient

MAX_PACKET = 1 << 20
FOLDER_FILES = 1000
"""Files per folder of the made tree."""
RECORD_BYTES = 128
"""A file's record in a batch without its bytes, rounded up (fixed fields, path, lengths)."""


def path_of(n: int) -> str:
    """The path of file *n*: zero-padded, so that path order is number order."""
    return f"d{n // FOLDER_FILES:04d}/f{n:07d}"


MTIME_NS = 1_765_000_000 * 10**9
"""A real file's modification time (2025): an index must pay for mtimes of that size."""


def data_of(n: int, size: int, every: int = 1) -> bytes:
    """The content of file *n*: *size* bytes, distinct for every *n* when *size* is at least
    8 (so no two files share a blob); empty unless *n* is a multiple of *every*."""
    if not size or n % every:
        return b""
    return n.to_bytes(8, "little").ljust(size, b".")[:size]


def _batch(rid: int, first: int, stop: int, size: int, every: int) -> m.SmallFileBatch:
    files = []
    for n in range(first, stop):
        data = data_of(n, size, every)
        files.append(m.SmallFile(MTIME_NS + n, 0o644, ANY_VERSION, digest_of(data),
                                 path_of(n), data))  # fmt: skip
    return m.SmallFileBatch(rid, tuple(files))


def fill_range(address: str, share: str, first: int, stop: int, size: int, every: int) -> int:
    """Store files *first* to *stop* - 1 through one connection, a full window of batches in
    flight; how many the server stored (or linked)."""
    per = min(MAX_BATCH_FILES, (MAX_BATCH_PACKET - 1024) // (size + RECORD_BYTES))
    stored = 0
    with contextlib.closing(RawClient(address, share=share, max_packet=MAX_PACKET)) as raw:
        starts = iter(range(first, stop, per))
        in_flight = 0
        for rid, start in zip(range(1, MAX_BATCHES_IN_FLIGHT + 1), starts, strict=False):
            raw.send(_batch(rid, start, min(start + per, stop), size, every))
            in_flight += 1
        while in_flight:
            reply = raw.expect(m.SmallFileBatchResponse, timeout=60)
            in_flight -= 1
            ok = (m.FileStatus.STORED, m.FileStatus.ALREADY_HAVE_CONTENT)
            stored += sum(result.status in ok for result in reply.results)
            start = next(starts, None)
            if start is not None:
                raw.send(_batch(reply.request_id, start, min(start + per, stop), size, every))
                in_flight += 1
    return stored


def fill(address: str, count: int, size: int = 8, every: int = 1, share: str = "default",
         connections: int = 2) -> int:  # fmt: skip
    """Store files 0 to *count* - 1 (``path_of``, ``data_of``) in *share*, split over
    *connections* processes; how many the server stored."""
    step = -(-count // connections)
    bounds = [(lo, min(lo + step, count)) for lo in range(0, count, step)]
    with ProcessPoolExecutor(len(bounds)) as pool:
        jobs = [pool.submit(fill_range, address, share, lo, hi, size, every) for lo, hi in bounds]
        return sum(job.result() for job in jobs)
