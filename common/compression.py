"""zstd for payloads: the coders a compressed file session or batch uses, sans-IO.

Compression is an option of the connection, agreed in the handshake, and then a choice of the
sender per file (``FileSyncInit``'s and ``DownloadResponse``'s ``ZSTD`` flag) and per batch
(``SmallFileBatchZstd``). The digest is always over the original bytes, so the receiver's
verification is the same whether or not the bytes travelled compressed.

A receiver never trusts a frame: ``Inflater`` decompresses into its sink in pieces of at most
``WRITE_SIZE`` bytes and stops the moment the output would pass the bytes the session still
expects (a zip bomb of a few bytes that claims gigabytes ends there), and every frame carries a
checksum, so flipped bits end the session with a protocol error instead of reaching the store.

The ``zstandard`` package is optional at run time: a peer without it does not offer or accept
compression, and everything else works as before (``available``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from common.errors import ErrorCode, LocalProtocolError

WRITE_SIZE = 128 * 1024
"""Most bytes a decompressor hands over at once: what a bomb can make before it is stopped."""
MAX_WINDOW = 8 << 20
"""The largest window a frame may ask its receiver to hold (zstd level 19's): a frame header
may claim 128 MiB or more, which a decompressor would allocate for every such upload."""
PROBE_BYTES = 64 * 1024
"""A file's first bytes, compressed to decide whether the rest is worth it."""
WORTH = 0.9
"""Compress only what this tries to at most this share of its size."""
COMPRESS_MIN = 256
"""A file smaller than this goes as it is: a frame's own bytes would eat the gain."""
DEFAULT_LEVEL = 3
MAX_LEVEL = 19
THREADED_LEVEL = 5

# fmt: off
SKIPPED_SUFFIXES = frozenset({
    "7z", "aac", "apk", "avi", "avif", "br", "bz2", "deb", "dmg", "docx", "epub", "flac", "flv",
    "gif", "gpg", "gz", "heic", "iso", "jar", "jpeg", "jpg", "lz", "lz4", "lzma", "lzo", "m4a",
    "m4v", "mkv", "mov", "mp3", "mp4", "mpeg", "mpg", "odp", "ods", "odt", "ogg", "opus", "png",
    "pptx", "rar", "rpm", "squashfs", "tbz", "tgz", "txz", "webm", "webp", "whl", "xlsx", "xz",
    "zip", "zst",
})
# fmt: on
"""Formats that are compressed already: sent as they are without a try (as rsync's default
skip list does)."""

_zstd: Any = None


def available() -> bool:
    """True if this process can compress (``zstandard`` imports)."""
    global _zstd
    if _zstd is None:
        try:
            import zstandard
        except ImportError:
            _zstd = False
        else:
            _zstd = zstandard
    return _zstd is not False


def skipped(path: str) -> bool:
    """A file whose name says it is compressed already."""
    dot = path.rfind(".")
    return dot > path.rfind("/") and path[dot + 1 :].lower() in SKIPPED_SUFFIXES


def wire_limit(nbytes: int) -> int:
    """The most wire bytes a compressed stream of *nbytes* may take: zstd's worst case (raw
    blocks, a small header per 128 KiB) with room to spare. More is refused as malformed."""
    return nbytes + (nbytes >> 7) + 1024


class CodecStats:
    """CPU seconds spent compressing and decompressing on one connection (metrics read it)."""

    __slots__ = ("compress_seconds", "decompress_seconds")

    def __init__(self) -> None:
        self.compress_seconds = 0.0
        self.decompress_seconds = 0.0


JOB_SIZE = 2 << 20
"""Input per job of zstd's threads. Its default is four windows (8-32 MiB at levels 5-9): a
job's bytes come out only once it is done, so a stream came out in bursts, and its end
waited for the last two jobs while the link idled. 2 MiB costs 0.3% of the ratio."""


class Deflater:
    """The sender's side of one compressed stream: one zstd frame, with a checksum. From
    ``THREADED_LEVEL`` on, zstd compresses in two threads of its own (those levels are slow
    enough to hold a 100 Mbit/s link up on one core; CPU time is counted for the process, so
    theirs counts too)."""

    __slots__ = ("_clock", "_obj", "stats")

    def __init__(self, level: int, stats: CodecStats, threaded: bool = True) -> None:
        """*threaded*: may use zstd's threads (not for one small batch: a batch is smaller
        than one job, and a context with threads costs 0.4-1 ms more to make)."""
        available()
        threads = 2 if threaded and level >= THREADED_LEVEL else 0
        params = _zstd.ZstdCompressionParameters.from_level(
            level, threads=threads, job_size=JOB_SIZE if threads else 0, write_checksum=True
        )
        compressor = _zstd.ZstdCompressor(compression_params=params)
        self._obj = compressor.compressobj()
        self._clock = time.process_time if threads else time.thread_time
        self.stats = stats

    def compress(self, data: bytes | memoryview) -> bytes:
        started = self._clock()
        out = self._obj.compress(data)
        self.stats.compress_seconds += self._clock() - started
        return out

    def finish(self) -> bytes:
        started = self._clock()
        out = self._obj.flush()
        self.stats.compress_seconds += self._clock() - started
        return out


class _BoundedOutput:
    """Where a decompressor writes: *emit*, as long as no more than *room* bytes come."""

    __slots__ = ("emit", "room")

    def __init__(self, room: int, emit: Callable[[bytes], None]) -> None:
        self.room = room
        self.emit = emit

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            raise LocalProtocolError(
                "compressed payload decompresses past its declared size", ErrorCode.LIMIT_EXCEEDED
            )
        self.room -= len(data)
        self.emit(data)
        return len(data)


class Inflater:
    """The receiver's side of one compressed stream of *size* bytes: ``feed`` wire bytes,
    and the original bytes go to *emit* as they come out."""

    __slots__ = ("_out", "_writer", "stats")

    def __init__(self, size: int, emit: Callable[[bytes], None], stats: CodecStats) -> None:
        available()
        self._out = _BoundedOutput(size, emit)
        decompressor = _zstd.ZstdDecompressor(max_window_size=MAX_WINDOW)
        self._writer = decompressor.stream_writer(
            self._out, write_size=WRITE_SIZE, write_return_read=True
        )
        self.stats = stats

    def feed(self, data: bytes | memoryview) -> None:
        started = time.thread_time()
        try:
            self._writer.write(data)
        except _zstd.ZstdError as exc:
            raise LocalProtocolError(f"corrupt compressed payload: {exc}") from None
        finally:
            self.stats.decompress_seconds += time.thread_time() - started

    @property
    def left(self) -> int:
        """Original bytes still due."""
        return self._out.room


def inflate_whole(frame: bytes | memoryview, size: int, stats: CodecStats) -> bytes:
    """A whole compressed body that must come to exactly *size* bytes (a batch)."""
    parts: list[bytes] = []
    inflater = Inflater(size, parts.append, stats)
    inflater.feed(frame)
    if inflater.left:
        raise LocalProtocolError(
            f"compressed body is {size - inflater.left} bytes, not the {size} it declares"
        )
    return b"".join(parts)


def deflate_whole(data: bytes | memoryview, level: int, stats: CodecStats) -> bytes:
    """*data* as one frame (a batch's body)."""
    deflater = Deflater(level, stats, threaded=False)
    return deflater.compress(data) + deflater.finish()


def worth_compressing(first: bytes | memoryview, stats: CodecStats) -> bool:
    """Whether a file whose first bytes are *first* shrinks enough at level 1 to be sent
    compressed."""
    if not first:
        return False
    sample = first[:PROBE_BYTES]
    return len(deflate_whole(sample, 1, stats)) <= len(sample) * WORTH


def choose(path: str, size: int, first: Callable[[], bytes | memoryview | None],
           stats: CodecStats) -> bool:  # fmt: skip
    """The sender's choice for one file of *size* bytes (uploads and downloads alike): not
    a small one, nor one named as a compressed format, nor one whose first bytes (*first*,
    read only if it comes to that) do not shrink."""
    if size < COMPRESS_MIN or skipped(path):
        return False
    sample = first()
    return sample is not None and worth_compressing(sample, stats)


def parse_level(text: str) -> int:
    """A ``--compress LEVEL``: 1 to 19."""
    level = int(text)
    if not 1 <= level <= MAX_LEVEL:
        raise ValueError(f"a compression level is 1 to {MAX_LEVEL}, not {level}")
    return level
