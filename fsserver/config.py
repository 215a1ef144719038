"""``ServerConfig``: every server setting with its default, type and validation in one place.

The CLI maps flags and ``FS_*`` environment variables onto it; it is cheap and picklable, so the
supervisor hands the same object to every child it spawns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from common.limits import ABSOLUTE_MAX_PACKET, MIN_MAX_PACKET, SERVER_MAX_PACKET

_UNITS = {"": 1, "B": 1, "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30}
_SIZE = re.compile(r"^\s*(\d+)\s*([A-Za-z]*)\s*$")
LOG_LEVELS = ("debug", "info", "warning", "error")


def parse_size(text: str) -> int:
    """``"256MiB"`` -> 268435456. Accepts a plain byte count or KiB, MiB, GiB."""
    match = _SIZE.match(text)
    if not match or match.group(2).upper() not in _UNITS:
        raise ValueError(f"invalid size {text!r}: use bytes or a number with KiB, MiB or GiB")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


class ConfigError(ValueError):
    """A setting is out of range; the message names the flag."""


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 7878
    workers: int = 2
    hash_workers: int = 1
    store_size: int = 256 << 20
    metrics_port: int = 9478
    log_level: str = "info"
    max_packet: int = SERVER_MAX_PACKET
    max_files: int = 1_000_000
    shutdown_grace: float = 2.0

    def __post_init__(self) -> None:
        checks = [
            (0 <= self.port <= 65535, "--port must be 0..65535"),
            (0 <= self.metrics_port <= 65535, "--metrics-port must be 0..65535"),
            (1 <= self.workers <= 256, "--workers must be 1..256"),
            (1 <= self.hash_workers <= 256, "--hash-workers must be 1..256"),
            (self.store_size >= 1 << 20, "--store-size must be at least 1MiB"),
            (
                MIN_MAX_PACKET <= self.max_packet <= ABSOLUTE_MAX_PACKET,
                f"--max-packet must be {MIN_MAX_PACKET}..{ABSOLUTE_MAX_PACKET}",
            ),
            (self.max_files >= 1, "--max-files must be at least 1"),
            (self.log_level in LOG_LEVELS, f"--log-level must be one of {', '.join(LOG_LEVELS)}"),
            (self.shutdown_grace >= 0, "shutdown grace must not be negative"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
