"""The packets of the FS protocol, one frozen dataclass each.

The records that come by the thousand, one per file (``FileEntry``, ``SmallFile``,
``FileResult``), are slotted but not frozen: a frozen dataclass's ``__init__`` sets each field
through ``object.__setattr__`` and costs four times as much, which was 2-3 µs per file of a
10,000-file sync. They are never changed after they are made all the same.

Field order is wire order. ``Annotated`` metadata names the wire kind (see ``common.fields``);
``docs/PROTOCOL.md`` spells out the same layouts in bytes. Packet type numbers 0-11 are the seed
protocol's and never change; new packets take new numbers (24-25: small-file batches, 26-27:
the share list, 28: a compressed batch, 29-34: earlier versions).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, IntFlag
from typing import Annotated

from common.errors import ErrorCode
from common.fields import (
    BOOL,
    BYTES16,
    DIGEST,
    I64,
    OPT_DIGEST,
    U8,
    U16,
    U32,
    U64,
    Blob,
    Enum,
    Magic,
    OptionalRecord,
    Record,
    Records,
    Rest,
    Text,
    TrailingFlags,
)
from common.limits import (
    MAGIC,
    MAX_AUTH_BYTES,
    MAX_BATCH_FILE_BYTES,
    MAX_BATCH_FILES,
    MAX_LIST_ENTRIES,
    MAX_MESSAGE_BYTES,
    MAX_NAME_BYTES,
    MAX_PATH_FIELD_BYTES,
    MAX_RESULT_MESSAGE_BYTES,
    MAX_SHARES_LISTED,
)


class _Record:
    """Equality and repr shared by every record and packet: ``dataclass`` would compile both
    again for each class, which was a third of this module's import time (and every command
    imports it). Same results as the generated ones: fields compared in order, same type only."""

    __slots__ = ()
    __hash__ = None  # type: ignore[assignment]  # (mutable records, as with eq=True)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return all(getattr(self, name) == getattr(other, name) for name in self.__slots__)

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"{type(self).__qualname__}({fields})"


class _Packet(_Record):
    """A frozen record: hashable by its fields, as a frozen dataclass is."""

    __slots__ = ()

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, name) for name in self.__slots__))


record = dataclass(slots=True, eq=False, repr=False)
"""A record that comes by the thousand (not frozen: see the module's docstring)."""
packet = dataclass(frozen=True, slots=True, eq=False, repr=False)


PATH = Text(MAX_PATH_FIELD_BYTES)
NAME = Text(MAX_NAME_BYTES)
MESSAGE = Text(MAX_MESSAGE_BYTES, clip=True)


class PacketType(IntEnum):
    ERROR = 0
    PING = 1
    DATA = 2
    FILE_SYNC_INIT = 3
    FILE_SYNC_INIT_RESPONSE = 4
    FILE_SYNC_DATA = 5
    FILE_SYNC_CHECK_HASH = 6
    FILE_SYNC_CHECK_HASH_RESPONSE = 7
    FILE_SYNC_RETRY_UPLOAD = 8
    FILE_SYNC_FINISH = 9
    VERSION_HANDSHAKE = 10
    VERSION_HANDSHAKE_RESPONSE = 11
    LIST_REQUEST = 12
    LIST_RESPONSE = 13
    STAT_REQUEST = 14
    STAT_RESPONSE = 15
    DOWNLOAD_REQUEST = 16
    DOWNLOAD_RESPONSE = 17
    DELETE_REQUEST = 18
    DELETE_RESPONSE = 19
    FILE_SYNC_CANCEL = 20
    SUBSCRIBE_REQUEST = 21
    SUBSCRIBE_RESPONSE = 22
    CHANGE_NOTIFICATION = 23
    SMALL_FILE_BATCH = 24
    SMALL_FILE_BATCH_RESPONSE = 25
    SHARE_LIST_REQUEST = 26
    SHARE_LIST_RESPONSE = 27
    SMALL_FILE_BATCH_ZSTD = 28
    DOWNLOAD_VERSION_REQUEST = 29
    VERSIONS_REQUEST = 30
    VERSIONS_RESPONSE = 31
    RESTORE_REQUEST = 32
    RESTORE_RESPONSE = 33
    DELETED_LIST_REQUEST = 34


class HandshakeStatus(IntEnum):
    OK = 0
    UNSUPPORTED_VERSION = 1
    INVALID_SHARE = 2
    AUTH_FAILED = 3
    SHUTTING_DOWN = 4
    NO_SUCH_SHARE = 5


class HandshakeFlags(IntFlag):
    """Bits of ``VersionHandshake.flags`` (a byte a client may leave out: then 0)."""

    EXISTING_SHARE = 0x01
    """Attach only to a share that exists (else NO_SUCH_SHARE); without it, as in the seed
    protocol, a share is made by the first upload to it."""
    ZSTD = 0x02
    """In a VersionHandshake: the client can send and take zstd payloads. In the response:
    the server agrees, so either side may send a payload compressed (``PayloadFlags``)."""


class PayloadFlags(IntFlag):
    """Bits of the ``flags`` of FileSyncInit, DownloadRequest and DownloadResponse."""

    ZSTD = 0x01
    """FileSyncInit, DownloadResponse: this session's payload is one zstd stream of the
    file's bytes. DownloadRequest: the server may send it so."""


class InitStatus(IntEnum):
    """A bad path is not a status here: it ends the session with an Error(INVALID_PATH)."""

    ACCEPTED = 0
    ALREADY_HAVE_CONTENT = 1
    NO_SPACE = 2
    CONFLICT = 4
    TOO_LARGE = 5


class HashStatus(IntEnum):
    OK = 0
    MISMATCH = 1


class FileStatus(IntEnum):
    """Outcome of one file of a SmallFileBatch (values shared with InitStatus where they mean
    the same)."""

    STORED = 0
    ALREADY_HAVE_CONTENT = 1
    NO_SPACE = 2
    CONFLICT = 4
    TOO_LARGE = 5
    INVALID_PATH = 6
    MISMATCH = 7
    DENIED = 8


class LookupStatus(IntEnum):
    """Outcome of a request that names a path: stat, download, delete."""

    OK = 0
    NOT_FOUND = 1
    INVALID_PATH = 2
    CONFLICT = 3
    DENIED = 4
    EXPIRED = 5
    """A subscription from a version older than the share's oldest kept tombstone."""
    NO_SPACE = 6
    """A restore refused for room: the share's quota or the index's limit."""


@record
class FileEntry(_Record):
    """One file as the server's index knows it (a record inside list/stat/download replies)."""

    size: Annotated[int, U64]
    version: Annotated[int, U64]
    mtime_ns: Annotated[int, I64]
    mode: Annotated[int, U32]
    digest: Annotated[bytes, DIGEST]
    path: Annotated[str, PATH]

    def __reduce__(self) -> tuple[type, tuple[int, int, int, int, bytes, str]]:
        # The server passes entries between processes; the dataclass default goes through
        # dataclasses.fields() on every object.
        return FileEntry, (self.size, self.version, self.mtime_ns, self.mode, self.digest,
                           self.path)  # fmt: skip


@packet
class Error(_Packet):
    """Ends a file session (``file_id``) or, with ``NO_FILE``, the whole connection."""

    code: Annotated[ErrorCode, Enum(ErrorCode, "H")]
    file_id: Annotated[int, U32]
    message: Annotated[str, MESSAGE]


@packet
class Ping(_Packet):
    """Liveness probe (``reply`` 0), answered with the same nonce and ``reply`` 1."""

    nonce: Annotated[int, U64]
    reply: Annotated[bool, BOOL]


@packet
class Data(_Packet):
    """Seed packet for opaque data outside a file session; FS servers refuse it."""

    payload: Annotated[bytes, Rest()]


@packet
class FileSyncInit(_Packet):
    """Opens an upload session: the file's metadata, and its digest if known."""

    file_id: Annotated[int, U32]
    size: Annotated[int, U64]
    mtime_ns: Annotated[int, I64]
    mode: Annotated[int, U32]
    base_version: Annotated[int, U64]
    digest: Annotated[bytes | None, OPT_DIGEST]
    path: Annotated[str, PATH]
    flags: Annotated[int, TrailingFlags()] = 0
    """``PayloadFlags``: ZSTD if the payload comes compressed (only once agreed)."""


@packet
class FileSyncInitResponse(_Packet):
    """Whether the upload goes on (ACCEPTED), is done already, or is refused."""

    file_id: Annotated[int, U32]
    status: Annotated[InitStatus, Enum(InitStatus)]
    version: Annotated[int, U64]
    offset: Annotated[int, U64]
    """ACCEPTED: how many bytes of the file the server holds already (from an upload of the
    same content cut short); the client sends from there. Otherwise 0."""
    message: Annotated[str, MESSAGE]


@packet
class FileSyncData(_Packet):
    """A piece of a file's bytes, in either direction."""

    file_id: Annotated[int, U32]
    payload: Annotated[bytes, Rest()]


@packet
class FileSyncCheckHash(_Packet):
    """The end of a file's bytes: the digest they must have."""

    file_id: Annotated[int, U32]
    digest: Annotated[bytes, DIGEST]


@packet
class FileSyncCheckHashResponse(_Packet):
    """Whether the bytes received have the digest announced."""

    file_id: Annotated[int, U32]
    status: Annotated[HashStatus, Enum(HashStatus)]
    digest: Annotated[bytes, DIGEST]


@packet
class FileSyncRetryUpload(_Packet):
    """The server asks for the whole file again (its bytes did not have their digest)."""

    file_id: Annotated[int, U32]
    attempt: Annotated[int, U8]


@packet
class FileSyncFinish(_Packet):
    """An upload is stored, as this version."""

    file_id: Annotated[int, U32]
    version: Annotated[int, U64]


@packet
class FileSyncCancel(_Packet):
    """The client gives up a session."""

    file_id: Annotated[int, U32]


@packet
class VersionHandshake(_Packet):
    """The client's first packet: protocol version, packet size, share and token."""

    magic: Annotated[bytes, Magic(MAGIC)]
    version: Annotated[int, U16]
    max_packet: Annotated[int, U32]
    client_id: Annotated[str, NAME]
    share: Annotated[str, NAME]
    auth: Annotated[bytes, Blob(MAX_AUTH_BYTES)]
    flags: Annotated[int, TrailingFlags()] = 0
    """``HandshakeFlags``; unknown bits are ignored."""


@packet
class VersionHandshakeResponse(_Packet):
    """The server's answer to the handshake, and the limits it sets."""

    status: Annotated[HandshakeStatus, Enum(HandshakeStatus)]
    version: Annotated[int, U16]
    max_packet: Annotated[int, U32]
    worker_id: Annotated[int, U16]
    store_id: Annotated[bytes, BYTES16]
    max_in_flight: Annotated[int, U32]
    """The server's limit of open sessions, and apart from them of outstanding requests, on
    this connection: a client keeps its windows within it."""
    message: Annotated[str, MESSAGE]
    flags: Annotated[int, TrailingFlags()] = 0
    """``HandshakeFlags`` the server agrees to, of those the client offered."""


@packet
class ListRequest(_Packet):
    """A page of the files whose path starts with ``prefix``, after the path ``after``."""

    request_id: Annotated[int, U32]
    limit: Annotated[int, U32]
    prefix: Annotated[str, PATH]
    after: Annotated[str, PATH]


@packet
class ListResponse(_Packet):
    """A page of a listing; ``more`` when the next page has entries."""

    request_id: Annotated[int, U32]
    status: Annotated[LookupStatus, Enum(LookupStatus)]
    more: Annotated[bool, BOOL]
    message: Annotated[str, MESSAGE]
    entries: Annotated[tuple[FileEntry, ...], Records(FileEntry, MAX_LIST_ENTRIES)]


@packet
class StatRequest(_Packet):
    """One file's entry."""

    request_id: Annotated[int, U32]
    path: Annotated[str, PATH]


@packet
class StatResponse(_Packet):
    """One file's entry, or why there is none."""

    request_id: Annotated[int, U32]
    status: Annotated[LookupStatus, Enum(LookupStatus)]
    message: Annotated[str, MESSAGE]
    entry: Annotated[FileEntry | None, OptionalRecord(FileEntry)]


@packet
class DownloadRequest(_Packet):
    """Opens a download session."""

    file_id: Annotated[int, U32]
    offset: Annotated[int, U64]
    """Where to start: the client holds the bytes before it, of the content ``digest`` names
    (a download cut short). Honoured only if the stored content still has that digest."""
    digest: Annotated[bytes | None, OPT_DIGEST]
    path: Annotated[str, PATH]
    flags: Annotated[int, TrailingFlags()] = 0
    """``PayloadFlags``: ZSTD if the payload may come compressed."""


@packet
class DownloadResponse(_Packet):
    """The file's entry (the payload and a CheckHash follow), or a refusal."""

    file_id: Annotated[int, U32]
    status: Annotated[LookupStatus, Enum(LookupStatus)]
    offset: Annotated[int, U64]
    """OK: the offset of the first payload byte, the request's when it resumes, else 0."""
    message: Annotated[str, MESSAGE]
    entry: Annotated[FileEntry | None, OptionalRecord(FileEntry)]
    flags: Annotated[int, TrailingFlags()] = 0
    """``PayloadFlags``: ZSTD if the payload comes compressed (only if asked for)."""


@packet
class DeleteRequest(_Packet):
    """Delete a file, if its version is ``base_version`` (or any version)."""

    request_id: Annotated[int, U32]
    base_version: Annotated[int, U64]
    path: Annotated[str, PATH]


@packet
class DeleteResponse(_Packet):
    """The version of the deletion, or why there is none."""

    request_id: Annotated[int, U32]
    status: Annotated[LookupStatus, Enum(LookupStatus)]
    version: Annotated[int, U64]
    message: Annotated[str, MESSAGE]


@packet
class SubscribeRequest(_Packet):
    """Ask for every change to the share with a version above *since*, then live ones."""

    request_id: Annotated[int, U32]
    since: Annotated[int, U64]


@packet
class SubscribeResponse(_Packet):
    """The share's latest version when the subscription began, or a refusal."""

    request_id: Annotated[int, U32]
    status: Annotated[LookupStatus, Enum(LookupStatus)]
    seq: Annotated[int, U64]
    message: Annotated[str, MESSAGE]


@packet
class ChangeNotification(_Packet):
    """One path's new state; ``entry.version`` is the change's sequence number."""

    deleted: Annotated[bool, BOOL]
    entry: Annotated[FileEntry, Record(FileEntry)]


@record
class SmallFile(_Record):
    """One whole small file inside a SmallFileBatch: what FileSyncInit, FileSyncData and
    FileSyncCheckHash carry for it, in one record (its size is the length of ``data``)."""

    mtime_ns: Annotated[int, I64]
    mode: Annotated[int, U32]
    base_version: Annotated[int, U64]
    digest: Annotated[bytes, DIGEST]
    path: Annotated[str, PATH]
    data: Annotated[bytes, Blob(MAX_BATCH_FILE_BYTES)]


@packet
class SmallFileBatch(_Packet):
    """Upload several small files in one packet; answered by one SmallFileBatchResponse."""

    request_id: Annotated[int, U32]
    files: Annotated[tuple[SmallFile, ...], Records(SmallFile, MAX_BATCH_FILES)]


@packet
class SmallFileBatchZstd(_Packet):
    """A SmallFileBatch whose ``files`` field travels as one zstd frame: *size* bytes once
    decompressed. The receiver handles it as the SmallFileBatch it decompresses to."""

    request_id: Annotated[int, U32]
    size: Annotated[int, U32]
    frame: Annotated[bytes, Rest()]


@record
class FileResult(_Record):
    """One file's outcome in a SmallFileBatchResponse."""

    status: Annotated[FileStatus, Enum(FileStatus)]
    version: Annotated[int, U64]
    message: Annotated[str, Text(MAX_RESULT_MESSAGE_BYTES, clip=True)]


@packet
class SmallFileBatchResponse(_Packet):
    """One result per file of the batch, in the batch's order."""

    request_id: Annotated[int, U32]
    results: Annotated[tuple[FileResult, ...], Records(FileResult, MAX_BATCH_FILES)]


@record
class ShareInfo(_Record):
    """One share in a ShareListResponse."""

    files: Annotated[int, U64]
    bytes: Annotated[int, U64]
    """Logical bytes of the share's live files (its quota counts kept versions too)."""
    name: Annotated[str, NAME]


@packet
class ShareListRequest(_Packet):
    """The shares this connection's token may open (every share without a tokens file)."""

    request_id: Annotated[int, U32]
    after: Annotated[str, NAME]
    """Cursor: only names strictly greater than this; empty = from the start."""


@packet
class ShareListResponse(_Packet):
    """A page of the share list; ``more`` when there are more."""

    request_id: Annotated[int, U32]
    more: Annotated[bool, BOOL]
    shares: Annotated[tuple[ShareInfo, ...], Records(ShareInfo, MAX_SHARES_LISTED)]


@packet
class DownloadVersionRequest(_Packet):
    """A DownloadRequest for one of the path's versions (see VersionsRequest), which may be
    an earlier one or one of a deleted path; the same session follows."""

    file_id: Annotated[int, U32]
    offset: Annotated[int, U64]
    digest: Annotated[bytes | None, OPT_DIGEST]
    version: Annotated[int, U64]
    path: Annotated[str, PATH]
    flags: Annotated[int, TrailingFlags()] = 0


class VersionFlags(IntFlag):
    """Bits of ``VersionEntry.flags``."""

    CURRENT = 0x01
    """The path's current state (its live version, or its deletion)."""
    DELETED = 0x02
    """A deletion: no content (size 0, a zero digest)."""


@record
class VersionEntry(_Record):
    """One version of a path in a VersionsResponse."""

    version: Annotated[int, U64]
    size: Annotated[int, U64]
    mtime_ns: Annotated[int, I64]
    written: Annotated[int, I64]
    """When the server made this version, in unix seconds (0: not known)."""
    mode: Annotated[int, U32]
    flags: Annotated[int, U8]
    digest: Annotated[bytes, DIGEST]
    writer: Annotated[str, NAME]
    """The name of the token that wrote it (empty: a server without tokens)."""


@packet
class VersionsRequest(_Packet):
    """A path's versions, newest first: those older than ``before`` (0: from the newest)."""

    request_id: Annotated[int, U32]
    before: Annotated[int, U64]
    limit: Annotated[int, U32]
    path: Annotated[str, PATH]


@packet
class VersionsResponse(_Packet):
    """A page of a path's versions, newest first; ``more`` when older ones follow."""

    request_id: Annotated[int, U32]
    status: Annotated[LookupStatus, Enum(LookupStatus)]
    more: Annotated[bool, BOOL]
    message: Annotated[str, MESSAGE]
    versions: Annotated[tuple[VersionEntry, ...], Records(VersionEntry, MAX_LIST_ENTRIES)]


@packet
class RestoreRequest(_Packet):
    """Make a kept ``version`` of a path its new current version, if the path is at
    ``base_version`` (or any version)."""

    request_id: Annotated[int, U32]
    version: Annotated[int, U64]
    base_version: Annotated[int, U64]
    path: Annotated[str, PATH]


@packet
class RestoreResponse(_Packet):
    """The new version the restore made, or why there is none."""

    request_id: Annotated[int, U32]
    status: Annotated[LookupStatus, Enum(LookupStatus)]
    version: Annotated[int, U64]
    message: Annotated[str, MESSAGE]


@packet
class DeletedListRequest(_Packet):
    """A page of the deleted paths that still have kept versions, answered by a ListResponse
    whose entries are each path's newest kept version."""

    request_id: Annotated[int, U32]
    limit: Annotated[int, U32]
    prefix: Annotated[str, PATH]
    after: Annotated[str, PATH]


Message = (
    Error
    | Ping
    | Data
    | FileSyncInit
    | FileSyncInitResponse
    | FileSyncData
    | FileSyncCheckHash
    | FileSyncCheckHashResponse
    | FileSyncRetryUpload
    | FileSyncFinish
    | FileSyncCancel
    | VersionHandshake
    | VersionHandshakeResponse
    | ListRequest
    | ListResponse
    | StatRequest
    | StatResponse
    | DownloadRequest
    | DownloadResponse
    | DeleteRequest
    | DeleteResponse
    | SubscribeRequest
    | SubscribeResponse
    | ChangeNotification
    | SmallFileBatch
    | SmallFileBatchResponse
    | ShareListRequest
    | ShareListResponse
    | SmallFileBatchZstd
    | DownloadVersionRequest
    | VersionsRequest
    | VersionsResponse
    | RestoreRequest
    | RestoreResponse
    | DeletedListRequest
)

PACKET_CLASSES: dict[PacketType, type] = {
    PacketType.ERROR: Error,
    PacketType.PING: Ping,
    PacketType.DATA: Data,
    PacketType.FILE_SYNC_INIT: FileSyncInit,
    PacketType.FILE_SYNC_INIT_RESPONSE: FileSyncInitResponse,
    PacketType.FILE_SYNC_DATA: FileSyncData,
    PacketType.FILE_SYNC_CHECK_HASH: FileSyncCheckHash,
    PacketType.FILE_SYNC_CHECK_HASH_RESPONSE: FileSyncCheckHashResponse,
    PacketType.FILE_SYNC_RETRY_UPLOAD: FileSyncRetryUpload,
    PacketType.FILE_SYNC_FINISH: FileSyncFinish,
    PacketType.VERSION_HANDSHAKE: VersionHandshake,
    PacketType.VERSION_HANDSHAKE_RESPONSE: VersionHandshakeResponse,
    PacketType.LIST_REQUEST: ListRequest,
    PacketType.LIST_RESPONSE: ListResponse,
    PacketType.STAT_REQUEST: StatRequest,
    PacketType.STAT_RESPONSE: StatResponse,
    PacketType.DOWNLOAD_REQUEST: DownloadRequest,
    PacketType.DOWNLOAD_RESPONSE: DownloadResponse,
    PacketType.DELETE_REQUEST: DeleteRequest,
    PacketType.DELETE_RESPONSE: DeleteResponse,
    PacketType.FILE_SYNC_CANCEL: FileSyncCancel,
    PacketType.SUBSCRIBE_REQUEST: SubscribeRequest,
    PacketType.SUBSCRIBE_RESPONSE: SubscribeResponse,
    PacketType.CHANGE_NOTIFICATION: ChangeNotification,
    PacketType.SMALL_FILE_BATCH: SmallFileBatch,
    PacketType.SMALL_FILE_BATCH_RESPONSE: SmallFileBatchResponse,
    PacketType.SHARE_LIST_REQUEST: ShareListRequest,
    PacketType.SHARE_LIST_RESPONSE: ShareListResponse,
    PacketType.SMALL_FILE_BATCH_ZSTD: SmallFileBatchZstd,
    PacketType.DOWNLOAD_VERSION_REQUEST: DownloadVersionRequest,
    PacketType.VERSIONS_REQUEST: VersionsRequest,
    PacketType.VERSIONS_RESPONSE: VersionsResponse,
    PacketType.RESTORE_REQUEST: RestoreRequest,
    PacketType.RESTORE_RESPONSE: RestoreResponse,
    PacketType.DELETED_LIST_REQUEST: DeletedListRequest,
}
