"""``ServerConfig``: every server setting with its default, type and validation in one place.

The CLI maps flags and ``FS_*`` environment variables onto it; it is cheap and picklable, so the
supervisor hands the same object to every child it spawns.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from common.limits import ABSOLUTE_MAX_PACKET, MIN_MAX_PACKET, SERVER_MAX_PACKET

_BINARY = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_DECIMAL = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_SIZE = re.compile(r"^\s*(\d+)\s*(?:([KMGT])(IB|I|B)?|B)?\s*$", re.IGNORECASE)
LOG_LEVELS = ("debug", "info", "warning", "error")
FSYNC_MODES = ("always", "interval", "never")
COMPRESS_MODES = ("on", "off")


def parse_size(text: str) -> int:
    """A byte count: plain bytes, or a whole number with a unit. ``K``, ``M``, ``G``, ``T``
    and ``KiB`` ... ``TiB`` are powers of 2 (``1G`` = ``1GiB`` = 2**30, as ``free -g`` and
    ``docker --shm-size`` read them); ``KB`` ... ``TB`` are powers of 10 (``1GB`` = 10**9, as
    disk makers write them). Case does not matter."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(
            f"invalid size {text!r}: use bytes or a whole number with a unit, such as 512MiB, "
            f"1G or 1GB (G and GiB: 2**30; GB: 10**9)"
        )
    number, prefix, suffix = match.groups()
    if not prefix:
        return int(number)
    decimal = (suffix or "").upper() == "B"
    return int(number) * (_DECIMAL if decimal else _BINARY)[prefix.upper()]


def format_size(size: int) -> str:
    """``268435456`` -> ``"256MiB"``: the largest binary unit that divides it, else bytes."""
    for unit, factor in reversed(_BINARY.items()):
        if size and size % factor == 0:
            return f"{size // factor}{unit}iB"
    return str(size)


def human_size(size: int) -> str:
    """``"953.7 MiB"``, ``"12 bytes"``: a size for people to read (four digits at most)."""
    for unit, factor in reversed(_BINARY.items()):
        if size >= factor:
            return f"{size / factor:.4g} {unit}iB"
    return f"{size} bytes"


def describe_size(size: int) -> str:
    """``"1 GiB (1073741824 bytes)"``: what the start-up log says a size option took."""
    return f"{human_size(size)} ({size} bytes)" if size >= 1024 else f"{size} bytes"


HTTP_OFF = -1


def port_or_off(text: str) -> int:
    """``--http-port``: a port, or ``off``."""
    if text.strip().lower() == "off":
        return HTTP_OFF
    if not text.strip().isdigit():
        raise ValueError(f"not a port: {text!r} (a number 0..65535, or off)")
    return int(text)


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
    http_port: int = HTTP_OFF
    """The HTTP API and web page's port (``fsserver.web``); HTTP_OFF: not served."""
    metrics_host: str = ""
    """Address of /metrics, /healthz and /readyz; empty: the same as ``host``."""
    metrics_token_file: str = ""
    """A file holding the bearer token /metrics requires; empty: /metrics is open."""
    log_level: str = "info"
    max_packet: int = SERVER_MAX_PACKET
    max_files: int = 2_000_000
    """Index entries: room for a share of a million files and as many tombstones (issue 13)."""
    max_file_size: int = 0
    """0: no limit beyond the store's size."""
    share_quota: int = 0
    """Bytes one share may hold; 0: no quota."""
    max_connections: int = 10_000
    max_in_flight: int = 4096
    """File sessions (and, separately, requests) one connection may have open."""
    handshake_timeout: float = 10.0
    idle_timeout: float = 300.0
    """A connection that sends nothing for this long is closed (clients Ping to stay)."""
    packet_timeout: float = 30.0
    """A packet that was started must be finished within this long (slow-loris defence)."""
    resume_timeout: float = 600.0
    """A big upload cut short keeps its bytes this long, for the client to resume it."""
    tokens: str = ""
    """A TOML file of hashed tokens; empty: no authentication."""
    insecure_no_auth: bool = False
    tls_cert: str = ""
    tls_key: str = ""
    data_dir: str = ""
    """Where the store is kept on disk; empty: memory only (nothing survives a restart)."""
    fsync: str = "always"
    compress: str = "on"
    """Agree to zstd payloads with a client that offers them (``common.compression``)."""
    repair: bool = False
    """Start even if the data dir is damaged in the middle, keeping what checks out."""
    tombstone_days: float = 30.0
    """A deleted path's tombstone is kept this long, then forgotten."""
    keep_versions: int = 10
    """Earlier versions kept of each path (``fsserver.store.versions``)."""
    keep_days: float = 30.0
    """A kept version is given up this long after it was replaced."""
    shutdown_grace: float = 2.0

    def __post_init__(self) -> None:
        checks = [
            (0 <= self.port <= 65535, "--port must be 0..65535"),
            (0 <= self.metrics_port <= 65535, "--metrics-port must be 0..65535"),
            (HTTP_OFF <= self.http_port <= 65535, "--http-port must be 0..65535 or off"),
            (1 <= self.workers <= 256, "--workers must be 1..256"),
            (1 <= self.hash_workers <= 256, "--hash-workers must be 1..256"),
            (self.store_size >= 1 << 20, "--store-size must be at least 1MiB"),
            (
                MIN_MAX_PACKET <= self.max_packet <= ABSOLUTE_MAX_PACKET,
                f"--max-packet must be {MIN_MAX_PACKET}..{ABSOLUTE_MAX_PACKET}",
            ),
            (self.max_files >= 1, "--max-files must be at least 1"),
            (self.max_file_size >= 0, "--max-file-size must not be negative"),
            (self.share_quota >= 0, "--share-quota must not be negative"),
            (self.max_connections >= 1, "--max-connections must be at least 1"),
            (1 <= self.max_in_flight <= 65536, "--max-in-flight must be 1..65536"),
            (self.handshake_timeout > 0, "--handshake-timeout must be positive"),
            (self.idle_timeout > 0, "--idle-timeout must be positive"),
            (self.packet_timeout > 0, "--packet-timeout must be positive"),
            (self.resume_timeout >= 0, "--resume-timeout must not be negative"),
            (self.log_level in LOG_LEVELS, f"--log-level must be one of {', '.join(LOG_LEVELS)}"),
            (self.fsync in FSYNC_MODES, f"--fsync must be one of {', '.join(FSYNC_MODES)}"),
            (self.compress in COMPRESS_MODES, "--compress must be on or off"),
            (self.tombstone_days > 0, "--tombstone-days must be positive"),
            (0 <= self.keep_versions <= 100_000, "--keep-versions must be 0..100000"),
            (self.keep_days > 0, "--keep-days must be positive"),
            (self.shutdown_grace >= 0, "shutdown grace must not be negative"),
        ]
        checks += [
            (bool(self.tls_cert) == bool(self.tls_key), "--tls-cert and --tls-key go together"),
            (
                self.tokens or self.insecure_no_auth or is_loopback(self.host),
                f"refusing to listen on {self.host} without --tokens: anyone who can reach it "
                f"could read and write every share (add --insecure-no-auth to accept that)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def metrics_address(self) -> str:
        return self.metrics_host or self.host


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
