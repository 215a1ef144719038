"""The client's side of compression: ``--compress auto|off|LEVEL`` (``CompressSetting``), and
per connection whether to send and ask for zstd payloads (``PayloadPolicy``).

``auto`` compresses unless the server is on this machine: over loopback (or to one of this
host's own addresses) the link moves bytes faster than zstd can make them fewer, so
compressing would only cost CPU. A level compresses wherever the server agrees. Either way
a file goes compressed only if its name is not that of a compressed format and its first
bytes shrink (``common.compression.choose``); the rest go as they are.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from common import compression
from common import messages as m
from common.connection import FSConnection
from fsclient.options import ENV_COMPRESS

log = logging.getLogger(__name__)

AUTO, OFF, LEVEL = "auto", "off", "level"
TUNE_STEP = 8 << 20
"""``auto`` looks at its level again after this many bytes of a file (and watches only files
at least this big)."""
GROWTH = 64 << 10
"""More bytes in the transport than a window before, by this much: the link is the slower."""
BATCH_STEP = 2
"""``auto`` looks at the level again after this many small-file batches."""
TOP_LEVEL = 9
"""The highest level ``auto`` climbs to while the link holds the sender back. On the bench's
log text level 3 makes 7.1x at 440 MB/s a core, 6 8.2x at 150 MB/s, 9 8.8x at 90 MB/s (155
MB/s in zstd's two threads), 10 and up are several times slower. Over the 100 Mbit/s bench
link a steady 9 took 2.71 s, 6 2.85 s, 10 3.45 s, 12 4.48 s (compression-bound on two
cores), and ``rsync -az`` 3.29 s. Where compressing cannot keep up, the gauge steps down
again. (An earlier measurement found 6 slower than 3: the sender then did not let the loop
write while it compressed, and zstd's threads emitted 32 MiB jobs; see
``upload.send_payload`` and ``compression.JOB_SIZE``.)"""


@dataclass(frozen=True, slots=True)
class CompressSetting:
    mode: str = AUTO
    level: int = compression.DEFAULT_LEVEL

    @classmethod
    def parse(cls, text: str, source: str = "--compress") -> CompressSetting:
        """``auto``, ``off`` or a zstd level (1-19); ValueError naming *source* otherwise."""
        word = text.strip().lower()
        if word in (AUTO, OFF):
            return cls(word)
        try:
            return cls(LEVEL, compression.parse_level(word))
        except ValueError:
            raise ValueError(
                f"{source} {text!r}: use auto, off or a zstd level from 1 to "
                f"{compression.MAX_LEVEL}"
            ) from None

    @classmethod
    def given(cls, option: str | None) -> CompressSetting:
        """The option, else ``$FS_COMPRESS``, else auto."""
        return cls.parse(option or os.environ.get(ENV_COMPRESS) or AUTO)

    @property
    def offers(self) -> bool:
        """Whether to offer zstd in the handshake."""
        return self.mode != OFF and compression.available()


def local_peer(peer: object, own: object) -> bool:
    """Whether the server at socket address *peer* is on this host (*own*: this end's)."""
    if not isinstance(peer, tuple) or not isinstance(own, tuple):
        return True  # a Unix socket, or unknown: as good as local
    try:
        address = ipaddress.ip_address(peer[0])
    except ValueError:
        return False
    return address.is_loopback or peer[0] == own[0]


class PayloadPolicy:
    """Whether one connection's uploads and downloads go compressed (see the module), and in
    ``auto`` at which level: ``LinkGauge`` watches each big upload."""

    __slots__ = ("active", "batches", "conn", "probe", "rate_compressed", "tunes")

    def __init__(self, setting: CompressSetting, conn: FSConnection, local: bool) -> None:
        self.conn = conn
        self.active = conn.coding.agreed and (setting.mode == LEVEL or not local)
        self.tunes = self.active and setting.mode == AUTO
        self.probe = False
        """The next big upload goes uncompressed, to measure the link (see ``LinkGauge``)."""
        self.rate_compressed = 0.0
        """File bytes a second that compressing at level 1 made, when it held the link up."""
        conn.coding.level = setting.level
        conn.coding.batches = self.active
        self.batches = 0

    def upload_flags(self, path: str, size: int,
                     first: Callable[[], bytes | memoryview | None]) -> int:  # fmt: skip
        """``PayloadFlags`` of an upload of *size* bytes; *first* gives its first bytes (read
        only if the file may be compressed at all)."""
        if not self.active or (self.probe and size >= TUNE_STEP):
            return 0
        worth = compression.choose(path, size, first, self.conn.coding.stats)
        return m.PayloadFlags.ZSTD if worth else 0

    def download_flags(self) -> int:
        return m.PayloadFlags.ZSTD if self.active else 0

    def gauge(self, file_id: int, size: int) -> LinkGauge | None:
        """A ``LinkGauge`` for an upload of *size* bytes in ``auto`` (None otherwise)."""
        if not self.tunes or size < TUNE_STEP:
            return None
        return LinkGauge(self, self.conn.compressed(file_id))

    def batch_sent(self, backlog: int, wire: int) -> None:
        """A small-file batch of *wire* bytes went out; *backlog* bytes wait for the link in
        all (``ClientProtocol.backlog``). In ``auto``, every ``BATCH_STEP`` batches: more than
        two batches waiting means the link is the slower, and the level goes up (a stdlib
        tree: 4.7x at level 3, 5.3x at 6); less than one, that it keeps up, and the level
        goes back down."""
        self.batches += 1
        if not self.tunes or self.batches % BATCH_STEP:
            return
        coding = self.conn.coding
        if backlog > 2 * wire and coding.level < TOP_LEVEL:
            coding.level += 1
        elif backlog < wire and coding.level > compression.DEFAULT_LEVEL:
            coding.level -= 1

    def measured(self, rate_plain: float) -> None:
        """A probe sent a big file uncompressed at *rate_plain* bytes a second: keep the
        faster way."""
        self.probe = False
        if rate_plain > self.rate_compressed:
            log.info("the link is faster than compression: sending files uncompressed")
            self.active = self.tunes = False
            self.conn.coding.batches = False


class LinkGauge:
    """What held the last ``TUNE_STEP`` bytes of a big upload back, for ``auto`` (as
    ``zstd --adapt`` does). While the sender waits for the socket, the link is the
    bottleneck, and a higher level sends fewer bytes in the same time. While the
    buffer stays empty and compressing takes most of the time, compression is, and the level
    goes down. At level 1 and still the bottleneck, the next big file goes uncompressed, as a
    probe of the link: if it goes faster, compression is not worth it on this link
    (``PayloadPolicy.measured``). A gauge of an uncompressed upload only times it."""

    __slots__ = ("backlog", "busy", "compressed", "first", "policy", "sent", "slow", "started",
                 "waited", "window")  # fmt: skip

    def __init__(self, policy: PayloadPolicy, compressed: bool) -> None:
        self.policy = policy
        self.compressed = compressed
        self.first = time.perf_counter()
        self.sent = 0
        self.slow = 0
        self.backlog = -1
        """Bytes in the transport at the end of the last window (-1: none ended yet; what
        the first found there may be another file's)."""
        self._window()

    def _window(self) -> None:
        self.started = time.perf_counter()
        self.waited = self.busy = 0.0
        self.window = 0

    def timed(self) -> float:
        return time.perf_counter()

    def waited_since(self, started: float) -> None:
        self.waited += time.perf_counter() - started

    def busy_since(self, started: float) -> None:
        self.busy += time.perf_counter() - started

    def retune(self, nbytes: int, buffered: int) -> bool:
        """After *nbytes* more of the file, with *buffered* bytes in the transport: True if
        the level changed (then a new frame is due)."""
        self.sent += nbytes
        self.window += nbytes
        if self.window < TUNE_STEP or not self.compressed:
            return False
        coding = self.policy.conn.coding
        wall = time.perf_counter() - self.started
        # The link holds the sender back if it waited for the socket, or if the bytes queued
        # for it grew: they come faster than they leave (the queue is 8 MiB deep, so it takes
        # many windows to fill before the sender waits).
        grew = self.backlog >= 0 and buffered > self.backlog + GROWTH
        link_bound = self.waited > 0.25 * wall or grew
        self.backlog = buffered
        zstd_bound = not link_bound and buffered == 0 and self.busy > 0.5 * wall
        rate = self.window / wall
        self._window()
        level = coding.level
        self.slow = self.slow + 1 if zstd_bound else 0
        if link_bound and level < TOP_LEVEL:
            coding.level = level + 1
        elif self.slow >= 2 and level > 1:
            coding.level, self.slow = level - 1, 0
        elif self.slow >= 2:
            self.policy.rate_compressed = rate
            self.policy.probe = True
        return coding.level != level

    def done(self) -> None:
        """The upload's bytes are all sent: a probe reports the link's rate."""
        if not self.compressed and self.policy.probe:
            self.policy.measured(self.sent / (time.perf_counter() - self.first))
