"""Every bound the protocol enforces, in one place, so a reader sees the limits at a glance."""

from __future__ import annotations

TYPE_CHECKING = False  # (not typing's: ``--help`` does without importing typing)
if TYPE_CHECKING:
    from typing import Final

PROTOCOL_VERSION: Final = 1
MAGIC: Final = b"FSYN"

HEADER_SIZE: Final = 5
"""u32 length (whole packet, header included) + u8 packet type."""
DATA_HEADER_SIZE: Final = HEADER_SIZE + 4
"""A FileSyncData packet also carries its u32 file id before the payload."""

DEFAULT_MAX_PACKET: Final = 4096
"""The seed protocol's packet size; it applies until the handshake agrees on another."""
MIN_MAX_PACKET: Final = DEFAULT_MAX_PACKET
SERVER_MAX_PACKET: Final = 1 << 20
"""The largest packet a server allows unless configured otherwise."""
ABSOLUTE_MAX_PACKET: Final = 16 << 20
"""No configuration may negotiate more than this."""

MAX_CLIENT_CONTROL_PACKET: Final = 64 * 1024
"""Packets from a client other than FileSyncData are never larger (the largest legal one is a
ListRequest of about 8 KiB), so a server never buffers more than this for one."""

MAX_PATH_FIELD_BYTES: Final = 4096
"""A path or prefix text field on the wire is at most this long."""
MAX_PATH_BYTES: Final = 4000
"""A valid path is at most this long, so that every packet naming one (FileSyncInit,
StatResponse, DownloadResponse, ListResponse, ChangeNotification) fits the seed's 4096-byte
packet whatever the negotiated size."""
MAX_MTIME_NS: Final = (1 << 63) - 1
MIN_MTIME_NS: Final = -(1 << 63)
"""An mtime travels as a signed 64-bit count of nanoseconds (1677 to 2262)."""


def wire_mtime(mtime_ns: int) -> int:
    """*mtime_ns* inside what the protocol (and a state DB's integers) can hold: a file dated
    after 2262 (a broken camera clock, a bad archive) is synced as of 2262, not refused."""
    return MIN_MTIME_NS if mtime_ns < MIN_MTIME_NS else min(mtime_ns, MAX_MTIME_NS)


MAX_SEGMENT_BYTES: Final = 255
MAX_NAME_BYTES: Final = 64
"""Share names and client ids."""
MAX_AUTH_BYTES: Final = 1024
MAX_MESSAGE_BYTES: Final = 1024
MAX_LIST_ENTRIES: Final = 10_000
MAX_SHARES_LISTED: Final = 10_000
"""Shares in one ShareListResponse."""
MAX_IN_FLIGHT: Final = 4096
"""File sessions outstanding on one connection; requests have a limit of the same size."""

NO_FILE: Final = 0xFFFFFFFF
"""The file id of an Error that concerns the whole connection."""
ANY_VERSION: Final = (1 << 64) - 1
"""base_version meaning "whatever is there now": an unconditional write."""
NO_VERSION: Final = 0
"""base_version meaning "the path must not exist yet"."""

DIGEST_SIZE: Final = 16

MAX_BATCH_FILES: Final = 256
"""Files in one SmallFileBatch."""
MAX_BATCH_FILE_BYTES: Final = 64 * 1024
"""A file sent inside a SmallFileBatch is at most this big; bigger ones take a file session."""
MAX_BATCH_PACKET: Final = 128 * 1024
"""A SmallFileBatch packet is at most this long (and never longer than the negotiated packet
size), so that a server buffers no more than this for one."""
MIN_BATCH_MAX_PACKET: Final = 64 * 1024
"""Batches are allowed only on a connection whose negotiated packet size is at least this, so
that the reply to the largest batch always fits in one packet."""
MAX_BATCHES_IN_FLIGHT: Final = 16
"""SmallFileBatch requests outstanding on one connection."""
MAX_RESULT_MESSAGE_BYTES: Final = 160
"""The message of one file's result in a SmallFileBatchResponse (clipped, never refused)."""
