"""The byte-exact examples of docs/PROTOCOL.md (sections 3.4 and 10), checked three ways.

1. ``LAYOUTS`` below is written from the spec's tables (section 3.1 for type numbers, 3.2 and
   3.3 for fields, section 2 for how each kind of field is laid out) with ``struct`` alone, not
   with ``common/codec.py``: the bytes it builds for a message must be the documented ones.
2. The codec must produce those same bytes.
3. Decoding them must give the message back.

Every documented example is a vector here, and every vector is documented (parsed from the
spec), so the document, an independent reading of it and the code cannot drift apart. Every
packet type has at least one vector.
"""

from __future__ import annotations

import dataclasses
import re
import struct
from pathlib import Path
from typing import Any

import pytest

from common import messages as m
from common.codec import HEADER, decode_body, encode
from common.errors import ErrorCode
from common.limits import ANY_VERSION, HEADER_SIZE, MAGIC, NO_FILE

SPEC = Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md"

# -- the layouts, from the spec's tables -----------------------------------------------------

TYPES = {
    "Error": 0, "Ping": 1, "Data": 2, "FileSyncInit": 3, "FileSyncInitResponse": 4,
    "FileSyncData": 5, "FileSyncCheckHash": 6, "FileSyncCheckHashResponse": 7,
    "FileSyncRetryUpload": 8, "FileSyncFinish": 9, "VersionHandshake": 10,
    "VersionHandshakeResponse": 11, "ListRequest": 12, "ListResponse": 13, "StatRequest": 14,
    "StatResponse": 15, "DownloadRequest": 16, "DownloadResponse": 17, "DeleteRequest": 18,
    "DeleteResponse": 19, "FileSyncCancel": 20, "SubscribeRequest": 21, "SubscribeResponse": 22,
    "ChangeNotification": 23, "SmallFileBatch": 24, "SmallFileBatchResponse": 25,
    "ShareListRequest": 26, "ShareListResponse": 27, "SmallFileBatchZstd": 28,
    "DownloadVersionRequest": 29, "VersionsRequest": 30, "VersionsResponse": 31,
    "RestoreRequest": 32, "RestoreResponse": 33, "DeletedListRequest": 34,
}  # fmt: skip
"""Section 3.1."""

LAYOUTS: dict[str, list[tuple[str, str]]] = {
    # records: section 3.2 (FileEntry), 3.3 #24 (SmallFile), #25 (FileResult), #27 (ShareInfo)
    # and #31 (VersionEntry)
    "FileEntry": [("size", "u64"), ("version", "u64"), ("mtime_ns", "i64"), ("mode", "u32"),
                  ("digest", "digest"), ("path", "text")],
    "SmallFile": [("mtime_ns", "i64"), ("mode", "u32"), ("base_version", "u64"),
                  ("digest", "digest"), ("path", "text"), ("data", "blob")],
    "FileResult": [("status", "enum8"), ("version", "u64"), ("message", "text")],
    "ShareInfo": [("files", "u64"), ("bytes", "u64"), ("name", "text")],
    "VersionEntry": [("version", "u64"), ("size", "u64"), ("mtime_ns", "i64"), ("written", "i64"),
                     ("mode", "u32"), ("flags", "u8"), ("digest", "digest"), ("writer", "text")],
    # packets: section 3.3
    "Error": [("code", "enum16"), ("file_id", "u32"), ("message", "text")],
    "Ping": [("nonce", "u64"), ("reply", "bool")],
    "Data": [("payload", "rest")],
    "FileSyncInit": [("file_id", "u32"), ("size", "u64"), ("mtime_ns", "i64"), ("mode", "u32"),
                     ("base_version", "u64"), ("digest", "opt_digest"), ("path", "text"),
                     ("flags", "flags")],
    "FileSyncInitResponse": [("file_id", "u32"), ("status", "enum8"), ("version", "u64"),
                             ("offset", "u64"), ("message", "text")],
    "FileSyncData": [("file_id", "u32"), ("payload", "rest")],
    "FileSyncCheckHash": [("file_id", "u32"), ("digest", "digest")],
    "FileSyncCheckHashResponse": [("file_id", "u32"), ("status", "enum8"), ("digest", "digest")],
    "FileSyncRetryUpload": [("file_id", "u32"), ("attempt", "u8")],
    "FileSyncFinish": [("file_id", "u32"), ("version", "u64")],
    "VersionHandshake": [("magic", "magic"), ("version", "u16"), ("max_packet", "u32"),
                         ("client_id", "text"), ("share", "text"), ("auth", "blob"),
                         ("flags", "flags")],
    "VersionHandshakeResponse": [("status", "enum8"), ("version", "u16"), ("max_packet", "u32"),
                                 ("worker_id", "u16"), ("store_id", "bytes16"),
                                 ("max_in_flight", "u32"), ("message", "text"),
                                 ("flags", "flags")],
    "ListRequest": [("request_id", "u32"), ("limit", "u32"), ("prefix", "text"),
                    ("after", "text")],
    "ListResponse": [("request_id", "u32"), ("status", "enum8"), ("more", "bool"),
                     ("message", "text"), ("entries", "records FileEntry")],
    "StatRequest": [("request_id", "u32"), ("path", "text")],
    "StatResponse": [("request_id", "u32"), ("status", "enum8"), ("message", "text"),
                     ("entry", "opt_record FileEntry")],
    "DownloadRequest": [("file_id", "u32"), ("offset", "u64"), ("digest", "opt_digest"),
                        ("path", "text"), ("flags", "flags")],
    "DownloadResponse": [("file_id", "u32"), ("status", "enum8"), ("offset", "u64"),
                         ("message", "text"), ("entry", "opt_record FileEntry"),
                         ("flags", "flags")],
    "DeleteRequest": [("request_id", "u32"), ("base_version", "u64"), ("path", "text")],
    "DeleteResponse": [("request_id", "u32"), ("status", "enum8"), ("version", "u64"),
                       ("message", "text")],
    "FileSyncCancel": [("file_id", "u32")],
    "SubscribeRequest": [("request_id", "u32"), ("since", "u64")],
    "SubscribeResponse": [("request_id", "u32"), ("status", "enum8"), ("seq", "u64"),
                          ("message", "text")],
    "ChangeNotification": [("deleted", "bool"), ("entry", "record FileEntry")],
    "SmallFileBatch": [("request_id", "u32"), ("files", "records SmallFile")],
    "SmallFileBatchResponse": [("request_id", "u32"), ("results", "records FileResult")],
    "SmallFileBatchZstd": [("request_id", "u32"), ("size", "u32"), ("frame", "rest")],
    "ShareListRequest": [("request_id", "u32"), ("after", "text")],
    "ShareListResponse": [("request_id", "u32"), ("more", "bool"),
                          ("shares", "records ShareInfo")],
    "DownloadVersionRequest": [("file_id", "u32"), ("offset", "u64"), ("digest", "opt_digest"),
                               ("version", "u64"), ("path", "text"), ("flags", "flags")],
    "VersionsRequest": [("request_id", "u32"), ("before", "u64"), ("limit", "u32"),
                        ("path", "text")],
    "VersionsResponse": [("request_id", "u32"), ("status", "enum8"), ("more", "bool"),
                         ("message", "text"), ("versions", "records VersionEntry")],
    "RestoreRequest": [("request_id", "u32"), ("version", "u64"), ("base_version", "u64"),
                       ("path", "text")],
    "RestoreResponse": [("request_id", "u32"), ("status", "enum8"), ("version", "u64"),
                        ("message", "text")],
    "DeletedListRequest": [("request_id", "u32"), ("limit", "u32"), ("prefix", "text"),
                           ("after", "text")],
}  # fmt: skip

INTS = {"u8": ">B", "u16": ">H", "u32": ">I", "u64": ">Q", "i64": ">q", "enum8": ">B",
        "enum16": ">H"}  # fmt: skip
"""Section 2: big-endian, no padding."""


def field_bytes(kind: str, value: Any) -> bytes:
    """One field laid out as section 2 says."""
    if kind in INTS:
        return struct.pack(INTS[kind], int(value))
    if kind == "bool":
        return b"\x01" if value else b"\x00"
    if kind == "magic":
        assert value == b"FSYN"
        return value
    if kind in ("digest", "bytes16"):
        assert len(value) == 16
        return bytes(value)
    if kind == "opt_digest":
        return b"\x00" + bytes(16) if value is None else b"\x01" + field_bytes("digest", value)
    if kind == "text":
        raw = value.encode("utf-8")
        return struct.pack(">H", len(raw)) + raw
    if kind == "blob":
        return struct.pack(">I", len(value)) + bytes(value)
    if kind == "rest":
        return bytes(value)
    if kind == "flags":  # a trailing u8 left out when 0
        return struct.pack(">B", value) if value else b""
    shape, record = kind.split()
    if shape == "records":
        return struct.pack(">H", len(value)) + b"".join(layout_bytes(record, v) for v in value)
    if shape == "record":
        return layout_bytes(record, value)
    assert shape == "opt_record"
    return b"\x00" if value is None else b"\x01" + layout_bytes(record, value)


def layout_bytes(name: str, obj: Any) -> bytes:
    """The fields of a record or packet body, in the order the spec's table lists them."""
    return b"".join(field_bytes(kind, getattr(obj, field)) for field, kind in LAYOUTS[name])


def packet_bytes(msg: Any) -> bytes:
    """Section 1.2: u32 length of the whole packet, u8 type, then the body."""
    name = type(msg).__name__
    body = layout_bytes(name, msg)
    return struct.pack(">IB", 5 + len(body), TYPES[name]) + body


# -- the vectors -------------------------------------------------------------------------------

HELLO = bytes.fromhex("b5e9c1ad071b3e7fc779cfaa5e523818")  # XXH3-128(b"hello")
EMPTY = bytes.fromhex("99aa06d3014798d86001c324468d497f")  # XXH3-128(b"")
MTIME = 1_700_000_000_123_456_789
STORE_ID = bytes(range(16))
ENTRY = m.FileEntry(5, 7, MTIME, 0o644, HELLO, "docs/hello.txt")
ENTRY_B = m.FileEntry(0, 9, 0, 0o600, EMPTY, "docs/b")
TOMBSTONE = m.FileEntry(0, 14, MTIME, 0o644, bytes(16), "docs/hello.txt")
NEEDS_TOKEN = "share 'default' needs a token (--token or FS_TOKEN)"
NO_SUCH_SHARE = "no share 'photso' on the server"
EXISTING = m.HandshakeFlags.EXISTING_SHARE
S, L = m.FileStatus, m.LookupStatus
TAIL = "17979cfe3d85cd15000001a4b5e9c1ad071b3e7fc779cfaa5e523818000e646f63732f68656c6c6f2e747874"
"""ENTRY from its mtime on: mtime_ns, mode, digest, path."""

BATCH_FRAME = (
    "28b52ffd0458f50200e404000217979cfe3d85cd15000001a4ffb5e9c1ad071b3e7fc779cfaa5e523818000e"
    "646f63732f68656c6c6f2e747874000000050001800099aa06d3014798d86001c324468d497f000662000000"
    "000500802002c80e578230ef93813a49db2997"
)
"""The zstd frame of section 3.4's SmallFileBatchZstd: the files of the SmallFileBatch above."""
ZSTD = m.HandshakeFlags.ZSTD
PZSTD = m.PayloadFlags.ZSTD
V = m.VersionFlags
DELETED_14 = m.VersionEntry(
    14, 0, MTIME, 1_700_003_600, 0o644, V.CURRENT | V.DELETED, bytes(16), "bob"
)
"""Section 3.4's kept versions: docs/hello.txt deleted at version 14 (TOMBSTONE) by bob..."""
KEPT_13 = m.VersionEntry(13, 5, MTIME, 1_700_000_100, 0o644, 0, HELLO, "alice")
"""...and its version 13 (``hello``), written by alice, kept."""
HELLO_PATH = "000e" + b"docs/hello.txt".hex()

VECTORS: list[tuple[m.Message, str]] = [
    (m.Ping(42, False), "0000000e01000000000000002a00"),
    (m.Ping(42, True), "0000000e01000000000000002a01"),
    (m.FileSyncCancel(1), "000000091400000001"),
    (m.FileSyncRetryUpload(1, 1), "0000000a080000000101"),
    (m.ListRequest(1, 0, "", ""), "000000110c000000010000000000000000"),
    (m.StatRequest(2, "docs/hello.txt"), "000000190e00000002000e646f63732f68656c6c6f2e747874"),
    (m.StatResponse(1, L.NOT_FOUND, "", None), "0000000d0f0000000101000000"),
    (m.DownloadRequest(3, 0, None, "docs/hello.txt"),
     "00000032100000000300000000000000000000000000000000000000000000000000000e646f63732f68656c6c6f2e747874"),
    (m.DownloadResponse(4, L.NOT_FOUND, 0, "", None), "000000151100000004010000000000000000000000"),
    (m.DownloadResponse(3, L.OK, 0, "", ENTRY),
     "000000511100000003000000000000000000000001000000000000000500000000000000" "07" + TAIL),
    (m.ListResponse(7, L.OK, True, "", (ENTRY, ENTRY_B)),
     "0000007f0d000000070001000000020000000000000005000000000000000717979cfe3d85cd15000001a4"
     "b5e9c1ad071b3e7fc779cfaa5e523818000e646f63732f68656c6c6f2e747874"
     "00000000000000000000000000000009000000000000000000000180"
     "99aa06d3014798d86001c324468d497f0006646f63732f62"),
    (m.SmallFileBatch(9, (m.SmallFile(MTIME, 0o644, ANY_VERSION, HELLO, "docs/hello.txt", b"hello"),
                          m.SmallFile(0, 0o600, 0, EMPTY, "docs/b", b""))),
     "0000007818000000090002" "17979cfe3d85cd15" "000001a4" "ffffffffffffffff"
     "b5e9c1ad071b3e7fc779cfaa5e523818" "000e646f63732f68656c6c6f2e747874" "0000000568656c6c6f"
     "0000000000000000" "00000180" "0000000000000000" "99aa06d3014798d86001c324468d497f"
     "0006646f63732f62" "00000000"),
    (m.SmallFileBatchResponse(9, (m.FileResult(S.STORED, 7, ""),
                                  m.FileResult(S.CONFLICT, 9, "conflict"))),
     "0000002919000000090002" "00" "0000000000000007" "0000"
     "04" "0000000000000009" "0008636f6e666c696374"),
    (m.SmallFileBatchZstd(9, 111, bytes.fromhex(BATCH_FRAME)),
     "000000781c000000090000006f" + BATCH_FRAME),
    # compression agreed (section 5.14): the flags byte ends each packet
    (m.VersionHandshake(MAGIC, 1, 1 << 20, "laptop", "default", b"", ZSTD),
     "000000250a4653594e00010010000000066c6170746f70000764656661756c740000000002"),
    (m.VersionHandshakeResponse(m.HandshakeStatus.OK, 1, 1 << 20, 0, STORE_ID, 4096, "", ZSTD),
     "000000250b000001001000000000000102030405060708090a0b0c0d0e0f00001000000002"),
    (m.FileSyncInit(1, 5, MTIME, 0o644, ANY_VERSION, HELLO, "docs/hello.txt", PZSTD),
     "000000470300000001000000000000000517979cfe3d85cd15000001a4ffffffffffffffff01"
     "b5e9c1ad071b3e7fc779cfaa5e523818000e646f63732f68656c6c6f2e74787401"),
    (m.DownloadRequest(3, 0, None, "docs/hello.txt", PZSTD),
     "00000033100000000300000000000000000000000000000000000000000000000000000e646f63732f"
     "68656c6c6f2e74787401"),
    (m.DownloadResponse(3, L.OK, 0, "", ENTRY, PZSTD),
     "000000521100000003000000000000000000000001000000000000000500000000000000" "07" + TAIL
     + "01"),
    (m.DeleteRequest(3, ANY_VERSION, "a"), "000000141200000003ffffffffffffffff000161"),
    (m.DeleteResponse(3, L.DENIED, 0, ""), "0000001413000000030400000000000000000000"),
    (m.Error(ErrorCode.HASH_MISMATCH, 1, ""), "0000000d000010000000010000"),
    (m.Error(ErrorCode.PERMISSION_DENIED, 1, ""), "0000000d000012000000010000"),
    (m.Error(ErrorCode.TIMEOUT, NO_FILE, ""), "0000000d000011ffffffff0000"),
    (m.Error(ErrorCode.PACKET_TOO_LARGE, NO_FILE, "x"), "0000000e000003ffffffff000178"),
    (m.Data(b"ab"), "00000007026162"),
    (m.FileSyncInit(1, 5, MTIME, 0o644, ANY_VERSION, HELLO, "docs/hello.txt"),
     "000000460300000001000000000000000517979cfe3d85cd15000001a4ffffffffffffffff01"
     "b5e9c1ad071b3e7fc779cfaa5e523818000e646f63732f68656c6c6f2e747874"),
    (m.FileSyncData(1, b"hello"), "0000000e050000000168656c6c6f"),
    # a resumed upload and download (section 3.4): the server holds, the client has, "he"
    (m.FileSyncInitResponse(1, m.InitStatus.ACCEPTED, 0, 2, ""),
     "0000001c040000000100000000000000000000000000000000020000"),
    (m.FileSyncData(1, b"llo"), "0000000c05000000016c6c6f"),
    (m.DownloadRequest(3, 2, HELLO, "docs/hello.txt"),
     "000000321000000003000000000000000201b5e9c1ad071b3e7fc779cfaa5e523818"
     "000e646f63732f68656c6c6f2e747874"),
    (m.DownloadResponse(3, L.OK, 2, "", ENTRY),
     "000000511100000003000000000000000002000001000000000000000500000000000000" "07" + TAIL),
    (m.FileSyncData(3, b"llo"), "0000000c05000000036c6c6f"),
    (m.FileSyncCheckHash(3, HELLO), "000000190600000003b5e9c1ad071b3e7fc779cfaa5e523818"),
    (m.FileSyncInitResponse(1, m.InitStatus.ACCEPTED, 0, 0, ""),
     "0000001c040000000100000000000000000000000000000000000000"),
    (m.FileSyncCheckHash(1, HELLO), "000000190600000001b5e9c1ad071b3e7fc779cfaa5e523818"),
    (m.FileSyncCheckHashResponse(1, m.HashStatus.OK, HELLO),
     "0000001a070000000100b5e9c1ad071b3e7fc779cfaa5e523818"),
    (m.FileSyncFinish(1, 7), "0000001109000000010000000000000007"),
    (m.VersionHandshake(MAGIC, 1, 1 << 20, "laptop", "default", b""),
     "000000240a4653594e00010010000000066c6170746f70000764656661756c7400000000"),
    (m.VersionHandshake(MAGIC, 1, 1 << 20, "laptop", "default", b"s3cret"),
     "0000002a0a4653594e00010010000000066c6170746f70000764656661756c7400000006733363726574"),
    (m.VersionHandshake(MAGIC, 1, 1 << 20, "laptop", "photos", b"", EXISTING),
     "000000240a4653594e00010010000000066c6170746f70000670686f746f730000000001"),
    (m.VersionHandshakeResponse(m.HandshakeStatus.NO_SUCH_SHARE, 1, 1 << 20, 0, STORE_ID, 4096,
                                NO_SUCH_SHARE),
     "000000430b050001001000000000000102030405060708090a0b0c0d0e0f00001000001f"
     + NO_SUCH_SHARE.encode().hex()),
    (m.ShareListRequest(1, ""), "0000000b1a000000010000"),
    (m.ShareListRequest(2, "photos"), "000000111a00000002000670686f746f73"),
    (m.ShareListResponse(1, False, (m.ShareInfo(2, 10, "default"), m.ShareInfo(0, 0, "photos"))),
     "0000003d1b000000010000020000000000000002000000000000000a000764656661756c74"
     "00000000000000000000000000000000000670686f746f73"),
    (m.VersionHandshakeResponse(m.HandshakeStatus.OK, 1, 1 << 20, 0, STORE_ID, 4096, ""),
     "000000240b000001001000000000000102030405060708090a0b0c0d0e0f000010000000"),
    (m.VersionHandshakeResponse(m.HandshakeStatus.AUTH_FAILED, 1, 1 << 20, 0, bytes(16), 4096,
                                ""),
     "000000240b03000100100000000000000000000000000000000000000000000010000000"),
    (m.VersionHandshakeResponse(m.HandshakeStatus.AUTH_FAILED, 1, 1 << 20, 0, STORE_ID, 4096,
                                NEEDS_TOKEN),
     "000000570b030001001000000000000102030405060708090a0b0c0d0e0f000010000033"
     + NEEDS_TOKEN.encode().hex()),
    (m.StatResponse(2, L.OK, "", ENTRY),
     "000000490f00000002000000010000000000000005000000000000000717979cfe3d85cd15"
     "000001a4b5e9c1ad071b3e7fc779cfaa5e523818000e646f63732f68656c6c6f2e747874"),
    (m.SubscribeRequest(1, 7), "0000001115000000010000000000000007"),
    (m.SubscribeRequest(5, 0), "0000001115000000050000000000000000"),
    (m.SubscribeResponse(1, L.OK, 9, ""), "0000001416000000010000000000000000090000"),
    (m.SubscribeResponse(1, L.CONFLICT, 9, ""), "0000001416000000010300000000000000090000"),
    (m.SubscribeResponse(5, L.OK, 12, ""), "00000014160000000500000000000000000c0000"),
    (m.ChangeNotification(True, m.FileEntry(0, 2, 0, 0o644, bytes(16), "a")),
     "000000351701000000000000000000000000000000020000000000000000000001a4"
     "00000000000000000000000000000000000161"),
    (m.ChangeNotification(False, m.FileEntry(5, 13, MTIME, 0o644, HELLO, "docs/hello.txt")),
     "0000004217000000000000000005000000000000000d17979cfe3d85cd15000001a4"
     "b5e9c1ad071b3e7fc779cfaa5e523818000e646f63732f68656c6c6f2e747874"),
    (m.ChangeNotification(True, TOMBSTONE),
     "0000004217010000000000000000000000000000000e17979cfe3d85cd15000001a4"
     "00000000000000000000000000000000000e646f63732f68656c6c6f2e747874"),
    # kept versions (section 3.4): the history, download and restore of docs/hello.txt
    (m.DeletedListRequest(10, 0, "docs/", ""), "00000016220000000a000000000005646f63732f0000"),
    (m.ListResponse(10, L.OK, False, "", (m.FileEntry(5, 13, MTIME, 0o644, HELLO, ENTRY.path),)),
     "0000004b0d0000000a000000000001" "0000000000000005" "000000000000000d" + TAIL),
    (m.VersionsRequest(8, 0, 0, "docs/hello.txt"),
     "000000251e00000008" "0000000000000000" "00000000" + HELLO_PATH),
    (m.VersionsResponse(8, L.OK, False, "", (DELETED_14, KEPT_13)),
     "000000851f00000008" "00" "00" "0000" "0002"
     "000000000000000e" "0000000000000000" "17979cfe3d85cd15" "000000006553ff10" "000001a4" "03"
     "00000000000000000000000000000000" "0003626f62"
     "000000000000000d" "0000000000000005" "17979cfe3d85cd15" "000000006553f164" "000001a4" "00"
     "b5e9c1ad071b3e7fc779cfaa5e523818" "0005616c696365"),
    (m.DownloadVersionRequest(5, 0, None, 13, "docs/hello.txt"),
     "0000003a1d00000005" "0000000000000000" "00" "00000000000000000000000000000000"
     "000000000000000d" + HELLO_PATH),
    (m.RestoreRequest(9, 13, 0, "docs/hello.txt"),
     "000000292000000009" "000000000000000d" "0000000000000000" + HELLO_PATH),
    (m.RestoreResponse(9, L.OK, 15, ""), "00000014210000000900000000000000000f0000"),
    # kept versions (section 10)
    (m.VersionsRequest(1, 0, 0, "a"), "000000181e00000001000000000000000000000000000161"),
    (m.VersionsRequest(2, 13, 1, "a"), "000000181e00000002000000000000000d00000001000161"),
    (m.VersionsResponse(1, L.NOT_FOUND, False, "", ()), "0000000f1f00000001010000000000"),
    (m.DownloadVersionRequest(3, 0, None, 7, "a"),
     "0000002d1d00000003000000000000000000000000000000000000000000000000000000000000000007000161"),
    (m.RestoreRequest(2, 7, ANY_VERSION, "a"),
     "0000001c20000000020000000000000007ffffffffffffffff000161"),
    (m.RestoreResponse(2, L.CONFLICT, 9, ""), "0000001421000000020300000000000000090000"),
    (m.RestoreResponse(2, L.DENIED, 0, ""), "0000001421000000020400000000000000000000"),
    (m.RestoreResponse(2, L.NO_SPACE, 0, ""), "0000001421000000020600000000000000000000"),
    (m.DeletedListRequest(1, 0, "", ""), "0000001122000000010000000000000000"),
]  # fmt: skip


# -- the checks --------------------------------------------------------------------------------


def vector_id(vector: tuple[m.Message, str]) -> str:
    return f"{type(vector[0]).__name__}-{vector[1][:8]}-{len(vector[1]) // 2}"


@pytest.mark.parametrize(("msg", "wire"), VECTORS, ids=[vector_id(v) for v in VECTORS])
def test_vector(msg, wire):
    packet = bytes.fromhex(wire)
    assert packet_bytes(msg) == packet, "the layout written from the spec's tables disagrees"
    assert encode(msg) == packet, "the codec disagrees"
    length, ptype = HEADER.unpack_from(packet)
    assert length == len(packet)
    assert decode_body(ptype, memoryview(packet)[HEADER_SIZE:]) == msg


def test_every_packet_type_has_a_vector():
    assert {type(msg).__name__ for msg, _ in VECTORS} == set(TYPES)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_the_spec_and_the_code_name_the_same_fields(name):
    cls = getattr(m, name)
    assert [field for field, _ in LAYOUTS[name]] == [f.name for f in dataclasses.fields(cls)]
    if name in TYPES:
        assert m.PacketType(TYPES[name]) in m.PACKET_CLASSES
        assert m.PACKET_CLASSES[m.PacketType(TYPES[name])] is cls


@pytest.mark.parametrize(("char", "count"), [("€", 341), ("é", 512)])
def test_a_long_message_is_clipped_as_documented(char, count):
    """Section 10: a 1000-character message is clipped to whole characters within 1024 bytes."""
    clipped = m.Error(ErrorCode.INTERNAL, 1, char * count)
    packet = packet_bytes(clipped)
    head = {"€": "0000040c0000010000000103ff", "é": "0000040d000001000000010400"}[char]
    assert packet == bytes.fromhex(head) + (char * count).encode()
    assert encode(m.Error(ErrorCode.INTERNAL, 1, char * 1000)) == packet
    assert decode_body(0, memoryview(packet)[HEADER_SIZE:]) == clipped


# -- the spec's own examples -------------------------------------------------------------------

DUMP_LINE = re.compile(r"^[0-9a-f]{4}((?:  ?[0-9a-f]{2})+)\s*$")
NAMED_LINE = re.compile(r"^\S.*?\)\s{2,}((?:[0-9a-f]{2} )*[0-9a-f]{2})\s*$")
TABLE_ROW = re.compile(r"^\| (.+?) \| `([0-9a-f]+)` \|$")


def documented_packets() -> set[str]:
    """Every example packet in the spec, as hex: the hex dumps and named one-line examples in
    its code blocks (section 3.4), and the one-hex-string rows of its appendix table."""
    found: set[str] = set()
    dump: list[str] = []
    in_code = False
    for line in SPEC.read_text().splitlines():
        if line.startswith("```"):
            if dump:
                found.add("".join(dump))
                dump = []
            in_code = not in_code
            continue
        if in_code:
            if match := DUMP_LINE.match(line):
                dump.append(match.group(1).replace(" ", ""))
            elif match := NAMED_LINE.match(line):
                found.add(match.group(1).replace(" ", ""))
        elif (match := TABLE_ROW.match(line)) and not match.group(1).startswith("XXH3"):
            found.add(match.group(2))
    return found


def test_every_documented_example_is_a_vector_and_the_reverse():
    documented = documented_packets()
    vectors = {wire for _, wire in VECTORS}
    assert documented - vectors == set(), "documented, but not checked here"
    assert vectors - documented == set(), "checked here, but not documented"


def test_the_compressed_batch_stands_for_the_documented_batch():
    """Section 3.4: the frame of the SmallFileBatchZstd example decompresses to the files of
    the SmallFileBatch example, and a receiver that agreed on zstd reads it as that batch."""
    from common.compression import CodecStats, inflate_whole

    batch = next(msg for msg, _ in VECTORS if isinstance(msg, m.SmallFileBatch))
    files = inflate_whole(bytes.fromhex(BATCH_FRAME), 111, CodecStats())
    assert files == encode(batch)[HEADER_SIZE + 4 :]
