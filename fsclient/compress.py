"""The client's side of compression: ``--compress auto|off|LEVEL`` (``CompressSetting``), and
per connection whether to send and ask for zstd payloads (``PayloadPolicy``).

``auto`` compresses unless the server is on this machine: over loopback (or to one of this
host's own addresses) the link moves bytes faster than zstd can make them fewer, so
compressing would only cost CPU. A level compresses wherever the server agrees. Either way
a file goes compressed only if its name is not that of a compressed format and its first
bytes shrink (``common.compression.worth_compressing``); the rest go as they are.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from dataclasses import dataclass

from common import compression
from common import messages as m
from common.connection import FSConnection
from fsclient.options import ENV_COMPRESS

log = logging.getLogger(__name__)

AUTO, OFF, LEVEL = "auto", "off", "level"
TUNE_STEP = 8 << 20
"""``auto`` looks at its level again after this many bytes of a file."""
TOP_LEVEL = 9
"""The highest level ``auto`` climbs to: past it zstd slows down far more than it gains."""
COMPRESS_MIN = 256
"""A file smaller than this goes as it is: a frame's own bytes would eat the gain."""


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
    ``auto`` at which level (``LevelTuner``)."""

    __slots__ = ("active", "conn", "tunes")

    def __init__(self, setting: CompressSetting, conn: FSConnection, local: bool) -> None:
        self.conn = conn
        self.active = conn.coding.agreed and (setting.mode == LEVEL or not local)
        self.tunes = self.active and setting.mode == AUTO
        conn.coding.level = setting.level
        conn.coding.batches = self.active

    def tuner(self, file_id: int) -> LevelTuner | None:
        """A ``LevelTuner`` for the upload *file_id*, if it is compressed and ``auto``."""
        return LevelTuner(self) if self.tunes and self.conn.compressed(file_id) else None

    def back_off(self) -> None:
        """The link moves bytes faster than zstd's fastest level makes them fewer: the files
        that follow go as they are."""
        log.info("the link is faster than compression: sending the next files uncompressed")
        self.active = self.tunes = False
        self.conn.coding.batches = False

    def upload_flags(self, path: str, size: int, first: bytes | memoryview | None) -> int:
        """``PayloadFlags`` of an upload of *size* bytes whose first bytes are *first*."""
        if not self.active or size < COMPRESS_MIN or first is None or compression.skipped(path):
            return 0
        coding = self.conn.coding
        worth = compression.worth_compressing(first, coding.level, coding.stats)
        return m.PayloadFlags.ZSTD if worth else 0

    def download_flags(self) -> int:
        return m.PayloadFlags.ZSTD if self.active else 0


class LevelTuner:
    """zstd's level for a big upload in ``auto``, from what held the last ``TUNE_STEP`` bytes
    back (as ``zstd --adapt`` does): while the sender waits for the socket, the link is the
    bottleneck and a higher level sends fewer bytes in the same time; while it never waits
    and compressing takes most of the time, compression is, and the level goes down. At
    level 1 and still the bottleneck, compression is not worth it on this link at all
    (``PayloadPolicy.back_off``)."""

    __slots__ = ("cpu", "next", "policy", "started", "waited")

    def __init__(self, policy: PayloadPolicy) -> None:
        self.policy = policy
        self.next = TUNE_STEP
        self._window()

    def _window(self) -> None:
        self.started = time.perf_counter()
        self.waited = 0.0
        self.cpu = self.policy.conn.coding.stats.compress_seconds

    def wait_started(self) -> float:
        return time.perf_counter()

    def wait_ended(self, started: float) -> None:
        self.waited += time.perf_counter() - started

    def retune(self, sent: int) -> bool:
        """After *sent* bytes of the file: True if the level changed (a new frame is due)."""
        if sent < self.next:
            return False
        self.next = sent + TUNE_STEP
        coding = self.policy.conn.coding
        wall, waited = time.perf_counter() - self.started, self.waited
        busy = coding.stats.compress_seconds - self.cpu
        self._window()
        level = coding.level
        if waited > 0.25 * wall and level < TOP_LEVEL:
            coding.level = level + 1
        elif waited < 0.05 * wall and busy > 0.5 * wall:
            if level > 1:
                coding.level = level - 1
            else:
                self.policy.back_off()
        return coding.level != level
