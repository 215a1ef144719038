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
import os
from dataclasses import dataclass

from common import compression
from common import messages as m
from common.connection import FSConnection
from fsclient.options import ENV_COMPRESS

AUTO, OFF, LEVEL = "auto", "off", "level"
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
    """Whether one connection's uploads and downloads go compressed (see the module)."""

    __slots__ = ("active", "conn")

    def __init__(self, setting: CompressSetting, conn: FSConnection, local: bool) -> None:
        self.conn = conn
        self.active = conn.coding.agreed and (setting.mode == LEVEL or not local)
        conn.coding.level = setting.level
        conn.coding.batches = self.active

    def upload_flags(self, path: str, size: int, first: bytes | memoryview | None) -> int:
        """``PayloadFlags`` of an upload of *size* bytes whose first bytes are *first*."""
        if not self.active or size < COMPRESS_MIN or first is None or compression.skipped(path):
            return 0
        coding = self.conn.coding
        worth = compression.worth_compressing(first, coding.level, coding.stats)
        return m.PayloadFlags.ZSTD if worth else 0

    def download_flags(self) -> int:
        return m.PayloadFlags.ZSTD if self.active else 0
