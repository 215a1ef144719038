"""Property tests of the codec and of the inbound side of ``FSConnection``.

Strategies are derived from the ``Annotated`` wire kinds of every class in
``common.messages.PACKET_CLASSES``, so a new message (or a new field) is covered without touching
this file; a field kind the builder does not know fails ``test_every_field_kind_has_a_strategy``.

Properties:

- every message round-trips: ``decode_body(type, encode(msg)[5:]) == msg`` and the header
  carries the whole packet's length and the right type;
- decoding is canonical: whatever body decodes re-encodes to exactly the same bytes;
- out-of-range values are refused at encode time with ``LocalProtocolError``;
- random, truncated, extended and bit-flipped input makes ``decode_body``, ``receive`` and
  ``feed`` raise nothing but ``RemoteProtocolError``, and how the bytes are split across calls
  never changes the outcome.
"""

from __future__ import annotations

import dataclasses
import itertools
import struct
import typing
from functools import cache
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from common import messages as m
from common.codec import HEADER, decode_body, encode, encode_body, packet_type_of, record_codec
from common.connection import CLIENT_SENDS, SERVER_SENDS, ConnPhase, DataChunk, FSConnection
from common.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from common.fields import (
    Blob,
    Bool,
    Digest,
    Enum,
    Int,
    Magic,
    OptionalDigest,
    OptionalRecord,
    Records,
    Rest,
    Text,
    TrailingFlags,
)
from common.limits import (
    DIGEST_SIZE,
    HEADER_SIZE,
    MAGIC,
    NO_FILE,
    PROTOCOL_VERSION,
)
from common.state import Role

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
ROUNDTRIP = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PACKET_CLASSES = m.PACKET_CLASSES
ALL_CLASSES = list(PACKET_CLASSES)


# -- deriving strategies from the annotations ------------------------------------------------


def field_kinds(cls: type) -> list[tuple[str, Any]]:
    """``(name, wire kind)`` of every field of a message or record class, in wire order."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return [(f.name, hints[f.name].__metadata__[0]) for f in dataclasses.fields(cls)]


def int_range(kind: Int) -> tuple[int, int]:
    bits = struct.calcsize(">" + kind.code) * 8
    if kind.code.islower():
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def utf8_truncate(text: str, max_bytes: int) -> str:
    return text.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")


def text_strategy(max_bytes: int) -> st.SearchStrategy[str]:
    return st.one_of(
        st.text(max_size=min(max_bytes, 48)).map(lambda s: utf8_truncate(s, max_bytes)),
        # the exact limit, in 1-, 2-, 3- and 4-byte characters
        st.sampled_from(["x", "\u00e9", "\u20ac", "\U0001f600"]).map(
            lambda ch: ch * (max_bytes // len(ch.encode("utf-8")))
        ),
        st.integers(0, max_bytes).map(lambda n: "a" * n),
    )


SMALL_IDS = {
    "file_id": st.sampled_from([1, 2, 3, NO_FILE]),
    "request_id": st.sampled_from([1, 2, 3]),
    "size": st.integers(0, 40),
}


def kind_strategy(kind: Any, name: str = "", small: bool = False) -> st.SearchStrategy[Any]:
    """A strategy for every value the wire kind *kind* can carry.

    With *small*, ids and sizes come from a handful of values so that random packet streams
    hit open sessions and pending requests instead of unknown ids.
    """
    if small and name in SMALL_IDS:
        return SMALL_IDS[name]
    if isinstance(kind, Int):
        lo, hi = int_range(kind)
        return st.one_of(st.integers(lo, hi), st.sampled_from([lo, hi, 0]))
    if isinstance(kind, OptionalDigest):
        return st.none() | st.binary(min_size=DIGEST_SIZE, max_size=DIGEST_SIZE)
    if isinstance(kind, Digest):
        return st.binary(min_size=DIGEST_SIZE, max_size=DIGEST_SIZE)
    if isinstance(kind, Bool):
        return st.booleans()
    if isinstance(kind, Enum):
        return st.sampled_from(list(kind.enum))
    if isinstance(kind, Magic):
        return st.just(kind.expected)
    if isinstance(kind, Text):
        return text_strategy(kind.max_bytes)
    if isinstance(kind, Blob):
        return st.binary(max_size=min(kind.max_bytes, 64)) | st.just(b"\xa5" * kind.max_bytes)
    if isinstance(kind, Rest):
        if small:
            return st.binary(max_size=12)
        return st.binary(max_size=200) | st.binary(min_size=4000, max_size=4200)
    if isinstance(kind, TrailingFlags):
        return st.integers(0, 255)
    if isinstance(kind, Records):
        return st.lists(strategy_for(kind.record, small), max_size=min(kind.max_count, 3)).map(
            tuple
        )
    if isinstance(kind, OptionalRecord):
        return st.none() | strategy_for(kind.record, small)
    if dataclasses.is_dataclass(getattr(kind, "record", None)):  # one inline record
        return strategy_for(kind.record, small)
    raise TypeError(f"no strategy for wire kind {kind!r}: teach kind_strategy about it")


@cache
def strategy_for(cls: type, small: bool = False) -> st.SearchStrategy[Any]:
    """Instances of a message or record class, built from its field kinds."""
    return st.builds(
        cls, **{name: kind_strategy(kind, name, small) for name, kind in field_kinds(cls)}
    )


def minimal_value(kind: Any) -> Any:
    if isinstance(kind, Int):
        return max(0, int_range(kind)[0])
    if isinstance(kind, OptionalDigest):
        return None
    if isinstance(kind, Digest):
        return bytes(DIGEST_SIZE)
    if isinstance(kind, Bool):
        return False
    if isinstance(kind, Enum):
        return next(iter(kind.enum))
    if isinstance(kind, Magic):
        return kind.expected
    if isinstance(kind, Text):
        return ""
    if isinstance(kind, Blob | Rest):
        return b""
    if isinstance(kind, TrailingFlags):
        return 0
    if isinstance(kind, Records):
        return ()
    if isinstance(kind, OptionalRecord):
        return None
    if dataclasses.is_dataclass(getattr(kind, "record", None)):
        return minimal_message(kind.record)
    raise TypeError(f"no minimal value for wire kind {kind!r}")


def minimal_message(cls: type) -> Any:
    """The smallest instance of *cls*: zeros, empty strings, first enum members."""
    return cls(**{name: minimal_value(kind) for name, kind in field_kinds(cls)})


def invalid_values(kind: Any) -> list[Any]:
    """Values the kind must refuse to encode."""
    if isinstance(kind, Int):
        lo, hi = int_range(kind)
        return [lo - 1, hi + 1]
    if isinstance(kind, OptionalDigest):
        return [b"", bytes(DIGEST_SIZE - 1), bytes(DIGEST_SIZE + 1)]
    if isinstance(kind, Digest):
        return [None, bytes(DIGEST_SIZE - 1), bytes(DIGEST_SIZE + 1)]
    if isinstance(kind, Text):
        if getattr(kind, "clip", False):  # human-readable: clipped, never refused
            return ["\ud800"]
        return ["x" * (kind.max_bytes + 1), "\u00e9" * (kind.max_bytes // 2 + 1), "\ud800"]
    if isinstance(kind, Blob):
        return [bytes(kind.max_bytes + 1)]
    if isinstance(kind, Records):
        return [(minimal_message(kind.record),) * (kind.max_count + 1)]
    if isinstance(kind, TrailingFlags):
        return [-1, 256]
    return []


REST_CLASSES = {
    cls
    for cls in PACKET_CLASSES.values()
    if any(isinstance(kind, Rest) for _, kind in field_kinds(cls))
}
TRAILING_CLASSES = {
    cls for cls in PACKET_CLASSES.values() if isinstance(field_kinds(cls)[-1][1], TrailingFlags)
}
"""Packets ending in flags that may be left out: one byte more or less is another packet."""
ptype_ids = pytest.mark.parametrize("ptype", ALL_CLASSES, ids=lambda t: t.name)


# -- the message set itself --------------------------------------------------------------------


def test_packet_classes_cover_every_type():
    assert set(PACKET_CLASSES) == set(m.PacketType)
    assert len(set(PACKET_CLASSES.values())) == len(PACKET_CLASSES), "one class per type"
    for ptype, cls in PACKET_CLASSES.items():
        assert packet_type_of(minimal_message(cls)) is ptype


@ptype_ids
def test_every_field_kind_has_a_strategy(ptype):
    cls = PACKET_CLASSES[ptype]
    assert dataclasses.is_dataclass(cls)
    assert field_kinds(cls), f"{cls.__name__} has no fields"
    strategy_for(cls).validate()
    msg = minimal_message(cls)
    assert decode_body(ptype, memoryview(encode(msg))[HEADER_SIZE:]) == msg


@ptype_ids
def test_messages_are_frozen(ptype):
    msg = minimal_message(PACKET_CLASSES[ptype])
    name = dataclasses.fields(msg)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(msg, name, getattr(msg, name))


# -- round trips -------------------------------------------------------------------------------


@ptype_ids
@ROUNDTRIP
@given(data=st.data())
def test_roundtrip(ptype, data):
    cls = PACKET_CLASSES[ptype]
    msg = data.draw(strategy_for(cls))
    packet = encode(msg)
    length, wire_type = HEADER.unpack_from(packet)
    assert length == len(packet)
    assert wire_type == ptype
    body = memoryview(packet)[HEADER_SIZE:]
    assert bytes(body) == encode_body(msg)
    decoded = decode_body(ptype, body)
    assert decoded == msg
    assert type(decoded) is cls
    # bytes fields come back as bytes that outlive the buffer, not views into it
    for name, _ in field_kinds(cls):
        value = getattr(decoded, name)
        assert not isinstance(value, memoryview), name


@FUZZ
@given(data=st.data())
def test_strict_prefixes_and_extensions_are_refused(data):
    """Every length is explicit, so a body cut short or with bytes added never decodes, except
    for messages whose last field is the rest of the packet. A packet whose flags may be left
    out is cut short or extended from its form without them, by more than the flags byte."""
    ptype = data.draw(st.sampled_from(ALL_CLASSES))
    cls = PACKET_CLASSES[ptype]
    msg = data.draw(strategy_for(cls, small=True))
    trailing = cls in TRAILING_CLASSES
    body = encode_body(dataclasses.replace(msg, flags=0) if trailing else msg)
    if cls in REST_CLASSES:
        return
    cut = data.draw(st.integers(0, len(body) - 1)) if body else None
    if cut is not None:
        with pytest.raises(RemoteProtocolError):
            decode_body(ptype, memoryview(body[:cut]))
    extra = data.draw(st.binary(min_size=2 if trailing else 1, max_size=20))
    with pytest.raises(RemoteProtocolError):
        decode_body(ptype, memoryview(body + extra))


@ptype_ids
def test_encode_refuses_out_of_range_values(ptype):
    cls = PACKET_CLASSES[ptype]
    base = minimal_message(cls)
    checked = 0
    for name, kind in field_kinds(cls):
        for bad in invalid_values(kind):
            with pytest.raises(LocalProtocolError):
                encode(dataclasses.replace(base, **{name: bad}))
            checked += 1
    for name, kind in field_kinds(cls):
        if dataclasses.is_dataclass(getattr(kind, "record", None)):
            record_kinds = field_kinds(kind.record)
            record = minimal_message(kind.record)
            for rname, rkind in record_kinds:
                for bad in invalid_values(rkind):
                    bad_record = dataclasses.replace(record, **{rname: bad})
                    value = (bad_record,) if isinstance(kind, Records) else bad_record
                    with pytest.raises(LocalProtocolError):
                        encode(dataclasses.replace(base, **{name: value}))
                    checked += 1
    assert checked or all(isinstance(kind, Rest | Bool) for _, kind in field_kinds(cls))


def unlisted_values(kind: Any) -> list[Any]:
    """Values that fit the field's bytes but that decoding refuses."""
    if isinstance(kind, Enum):
        return [next(v for v in range(256) if v not in set(kind.enum))]
    if isinstance(kind, Magic):
        return [b"XXXX"]
    return []


ENCODE_DECODE_ASYMMETRY = [
    (ptype, name, bad)
    for ptype, cls in PACKET_CLASSES.items()
    for name, kind in field_kinds(cls)
    for bad in unlisted_values(kind)
]


@pytest.mark.parametrize(("ptype", "name", "bad"), ENCODE_DECODE_ASYMMETRY, ids=str)
def test_encode_refuses_what_decode_refuses(ptype, name, bad):
    msg = dataclasses.replace(minimal_message(PACKET_CLASSES[ptype]), **{name: bad})
    with pytest.raises(LocalProtocolError):
        encode(msg)


CLIPPED_FIELDS = [
    (ptype, name, kind.max_bytes)
    for ptype, cls in PACKET_CLASSES.items()
    for name, kind in field_kinds(cls)
    if isinstance(kind, Text) and getattr(kind, "clip", False)
]


@pytest.mark.parametrize(("ptype", "name", "max_bytes"), CLIPPED_FIELDS, ids=str)
@settings(max_examples=40, deadline=None)
@given(text=st.text(min_size=1, max_size=40), repeat=st.integers(1, 200))
def test_messages_are_clipped_at_a_character_boundary(ptype, name, max_bytes, text, repeat):
    text = text * repeat
    cls = PACKET_CLASSES[ptype]
    msg = dataclasses.replace(minimal_message(cls), **{name: text})
    packet = encode(msg)
    decoded = getattr(decode_body(ptype, memoryview(packet)[HEADER_SIZE:]), name)
    size = len(decoded.encode("utf-8"))
    assert size <= max_bytes
    assert text.startswith(decoded)
    if decoded != text:  # clipped: the next character would not have fit
        assert size + len(text[len(decoded)].encode("utf-8")) > max_bytes


def test_message_fields_are_clipped():
    assert {(PACKET_CLASSES[t], n) for t, n, _ in CLIPPED_FIELDS} >= {
        (m.Error, "message"),
        (m.FileSyncInitResponse, "message"),
    }


# byte-exact examples from docs/PROTOCOL.md: tests/test_vectors.py


# "Min length" column of docs/PROTOCOL.md 3.1: every variable field empty or absent
DOCUMENTED_MIN_LENGTH = {
    0: 13, 1: 14, 2: 5, 3: 56, 4: 28, 5: 9, 6: 25, 7: 26, 8: 10, 9: 17, 10: 23,
    11: 36, 12: 17, 13: 15, 14: 11, 15: 13, 16: 36, 17: 21, 18: 19, 19: 20, 20: 9,
    21: 17, 22: 20, 23: 52, 24: 11, 25: 11,
}  # fmt: skip


@pytest.mark.parametrize("ptype", sorted(DOCUMENTED_MIN_LENGTH))
def test_documented_minimum_lengths(ptype):
    msg = minimal_message(PACKET_CLASSES[m.PacketType(ptype)])
    assert len(encode(msg)) == DOCUMENTED_MIN_LENGTH[ptype]


def test_decode_refuses_bad_flags_and_enums():
    ping = bytearray(encode_body(m.Ping(7, True)))
    ping[-1] = 2
    with pytest.raises(RemoteProtocolError):
        decode_body(m.PacketType.PING, memoryview(ping))
    init = m.FileSyncInit(1, 0, 0, 0, 0, None, "a")
    body = bytearray(encode_body(init))
    flag_at = 4 + 8 + 8 + 4 + 8
    body[flag_at + 1] = 1  # absent digest with a non-zero byte
    with pytest.raises(RemoteProtocolError):
        decode_body(m.PacketType.FILE_SYNC_INIT, memoryview(body))
    body[flag_at] = 2
    with pytest.raises(RemoteProtocolError):
        decode_body(m.PacketType.FILE_SYNC_INIT, memoryview(body))
    # a flags byte of 0 is the byte left out: written out, it is a second encoding, refused
    plain = encode_body(m.FileSyncInit(1, 0, 0, 0, 0, None, "a"))
    assert decode_body(m.PacketType.FILE_SYNC_INIT, memoryview(plain + b"\x01")).flags == 1
    with pytest.raises(RemoteProtocolError, match="flags byte of 0"):
        decode_body(m.PacketType.FILE_SYNC_INIT, memoryview(plain + b"\x00"))
    status = bytearray(encode_body(m.FileSyncInitResponse(1, m.InitStatus.ACCEPTED, 0, 0, "")))
    status[4] = max(m.InitStatus) + 1
    with pytest.raises(RemoteProtocolError):
        decode_body(m.PacketType.FILE_SYNC_INIT_RESPONSE, memoryview(status))
    error = bytearray(encode_body(m.Error(ErrorCode.INTERNAL, NO_FILE, "")))
    error[0:2] = struct.pack(">H", 999)
    with pytest.raises(RemoteProtocolError):
        decode_body(m.PacketType.ERROR, memoryview(error))
    hello = bytearray(encode_body(m.VersionHandshake(MAGIC, PROTOCOL_VERSION, 4096, "c", "s", b"")))
    hello[0:4] = b"FSYX"
    with pytest.raises(RemoteProtocolError):
        decode_body(m.PacketType.VERSION_HANDSHAKE, memoryview(hello))
    stat = bytearray(encode_body(m.StatRequest(1, "ab")))
    stat[-1] = 0xFF  # not UTF-8
    with pytest.raises(RemoteProtocolError):
        decode_body(m.PacketType.STAT_REQUEST, memoryview(stat))


def test_declared_lengths_are_checked_against_limits_first():
    """A count or length over its limit is refused as such, before the body is looked at."""
    prefix = struct.pack(">IBB", 1, m.LookupStatus.OK, 0) + struct.pack(">H", 0)
    with pytest.raises(RemoteProtocolError, match="exceed"):
        decode_body(m.PacketType.LIST_RESPONSE, memoryview(prefix + struct.pack(">H", 10_001)))
    with pytest.raises(RemoteProtocolError, match=r"runs past|truncated"):
        decode_body(m.PacketType.LIST_RESPONSE, memoryview(prefix + struct.pack(">H", 10_000)))
    stat = struct.pack(">I", 1)
    with pytest.raises(RemoteProtocolError, match="exceeds its limit"):
        decode_body(m.PacketType.STAT_REQUEST, memoryview(stat + struct.pack(">H", 4097)))
    with pytest.raises(RemoteProtocolError, match="past the end"):
        decode_body(m.PacketType.STAT_REQUEST, memoryview(stat + struct.pack(">H", 4096)))
    hello = MAGIC + struct.pack(">HI", 1, 4096) + bytes(4)
    with pytest.raises(RemoteProtocolError, match="exceeds its limit"):
        decode_body(m.PacketType.VERSION_HANDSHAKE, memoryview(hello + struct.pack(">I", 1025)))
    # the presence byte of an optional record is missing
    reply = struct.pack(">IB", 1, m.LookupStatus.OK) + struct.pack(">H", 0)
    with pytest.raises(RemoteProtocolError, match="record flag"):
        decode_body(m.PacketType.STAT_RESPONSE, memoryview(reply))
    for flag in (2, 0xFF):
        with pytest.raises(RemoteProtocolError, match="presence"):
            decode_body(m.PacketType.STAT_RESPONSE, memoryview(reply + bytes([flag])))


@pytest.mark.parametrize("ptype", [t for t in range(256) if t not in set(m.PacketType)])
def test_unknown_types_are_unknown_type(ptype):
    with pytest.raises(RemoteProtocolError) as info:
        decode_body(ptype, memoryview(b""))
    assert info.value.code is ErrorCode.UNKNOWN_TYPE


# -- fuzzing: nothing but RemoteProtocolError --------------------------------------------------


def check_canonical(ptype: int, body: bytes) -> None:
    """Decode *body*; if it decodes, it must be the one encoding of what it decoded to."""
    try:
        msg = decode_body(ptype, memoryview(body))
    except RemoteProtocolError as exc:
        assert isinstance(exc.code, ErrorCode)
        return
    assert encode_body(msg) == body


@FUZZ
@given(ptype=st.integers(0, 255), body=st.binary(max_size=300))
def test_random_bodies_raise_only_remote_errors(ptype, body):
    check_canonical(ptype, body)


@FUZZ
@given(ptype=st.sampled_from(ALL_CLASSES), body=st.binary(max_size=120))
def test_random_bodies_of_known_types_raise_only_remote_errors(ptype, body):
    check_canonical(ptype, body)


@st.composite
def mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """*data* with bytes flipped, cut off, inserted, removed or appended."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["flip", "truncate", "extend", "insert", "delete", "set"]))
        if how == "flip" and out:
            i = draw(st.integers(0, len(out) - 1))
            out[i] ^= draw(st.integers(1, 255))
        elif how == "set" and out:
            i = draw(st.integers(0, len(out) - 1))
            out[i] = draw(st.sampled_from([0, 1, 2, 0x7F, 0x80, 0xFF]))
        elif how == "truncate" and out:
            del out[draw(st.integers(0, len(out) - 1)) :]
        elif how == "extend":
            out += draw(st.binary(min_size=1, max_size=16))
        elif how == "insert":
            i = draw(st.integers(0, len(out)))
            out[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif how == "delete" and out:
            i = draw(st.integers(0, len(out) - 1))
            del out[i : i + draw(st.integers(1, 8))]
    return bytes(out)


@FUZZ
@given(data=st.data())
def test_mutated_bodies_raise_only_remote_errors(data):
    ptype = data.draw(st.sampled_from(ALL_CLASSES))
    msg = data.draw(strategy_for(PACKET_CLASSES[ptype], small=True))
    body = data.draw(mutations(encode_body(msg)))
    check_canonical(ptype, body)


def handshake(client: FSConnection, server: FSConnection, proposal: int = 65536) -> None:
    server.feed(client.send(m.VersionHandshake(MAGIC, PROTOCOL_VERSION, proposal, "c", "s", b"")))
    agreed = server.negotiate(proposal)
    reply = m.VersionHandshakeResponse(
        m.HandshakeStatus.OK, PROTOCOL_VERSION, agreed, 0, bytes(16), 4096, ""
    )
    client.feed(server.send(reply))
    assert client.phase is server.phase is ConnPhase.READY


def busy_pair() -> tuple[FSConnection, FSConnection]:
    """A client and a server after the handshake with sessions in several phases: upload 1
    accepted (40 bytes, 10 sent), download 2 running (40 bytes), upload 3 awaiting its init
    response, stat request 1 pending."""
    client, server = FSConnection(Role.CLIENT), FSConnection(Role.SERVER)
    handshake(client, server)

    def c2s(msg: Any) -> None:
        server.feed(client.send(msg))

    def s2c(msg: Any) -> None:
        client.feed(server.send(msg))

    c2s(m.FileSyncInit(1, 40, 0, 0o644, 0, None, "up"))
    s2c(m.FileSyncInitResponse(1, m.InitStatus.ACCEPTED, 0, 0, ""))
    c2s(m.FileSyncData(1, bytes(10)))
    c2s(m.DownloadRequest(2, 0, None, "down"))
    entry = m.FileEntry(40, 1, 0, 0o644, bytes(16), "down")
    s2c(m.DownloadResponse(2, m.LookupStatus.OK, 0, "", entry))
    c2s(m.FileSyncInit(3, 5, 0, 0o644, 0, None, "pending"))
    c2s(m.StatRequest(1, "x"))
    assert len(client.sessions) == len(server.sessions) == 3
    return client, server


def fresh(role: Role) -> FSConnection:
    return FSConnection(role)


def ready(role: Role) -> FSConnection:
    client, server = busy_pair()
    return client if role is Role.CLIENT else server


CONNECTIONS = pytest.mark.parametrize(
    ("make", "role"),
    [(fresh, Role.SERVER), (fresh, Role.CLIENT), (ready, Role.SERVER), (ready, Role.CLIENT)],
    ids=["fresh-server", "fresh-client", "ready-server", "ready-client"],
)


def merge(events: list[Any]) -> list[Any]:
    """Events with payload bytes copied and adjacent chunks of one file joined."""
    out: list[Any] = []
    for ev in events:
        if isinstance(ev, DataChunk):
            if out and isinstance(out[-1], DataChunk) and out[-1].file_id == ev.file_id:
                out[-1] = DataChunk(ev.file_id, out[-1].data + bytes(ev.data))
                continue
            ev = DataChunk(ev.file_id, bytes(ev.data))
        out.append(ev)
    return out


def outcome_whole(conn: FSConnection, data: bytes) -> tuple[Any, ...]:
    try:
        events, used = conn.receive(memoryview(data))
    except RemoteProtocolError as exc:
        assert conn.phase is ConnPhase.ERROR
        return ("error", exc.code)
    assert 0 <= used <= len(data)
    return ("ok", merge(events), data[used:])


def outcome_chunked(conn: FSConnection, data: bytes, cuts: list[int]) -> tuple[Any, ...]:
    events: list[Any] = []
    pending = b""
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for start, end in itertools.pairwise(bounds):
        buf = pending + data[start:end]
        try:
            got, used = conn.receive(memoryview(buf))
        except RemoteProtocolError as exc:
            assert conn.phase is ConnPhase.ERROR
            return ("error", exc.code)
        assert 0 <= used <= len(buf)
        events += merge(got)
        pending = buf[used:]
    return ("ok", merge(events), pending)


def outcome_feed(conn: FSConnection, data: bytes, cuts: list[int]) -> tuple[Any, ...]:
    events: list[Any] = []
    bounds = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    for start, end in itertools.pairwise(bounds):
        try:
            got = conn.feed(data[start:end])
        except RemoteProtocolError as exc:
            assert conn.phase is ConnPhase.ERROR
            return ("error", exc.code)
        assert all(isinstance(e.data, bytes) for e in got if isinstance(e, DataChunk))
        events += got
    return ("ok", merge(events), bytes(conn._pending))


def check_stream(make: Any, role: Role, data: bytes, cuts: list[int]) -> None:
    """Whole buffer, arbitrary cuts and ``feed`` must agree, and fail only remotely."""
    whole = outcome_whole(make(role), data)
    event(f"{whole[0]} {whole[1] if whole[0] == 'error' else len(whole[1])}")
    assert outcome_chunked(make(role), data, cuts) == whole
    assert outcome_feed(make(role), data, cuts) == whole
    assert outcome_chunked(make(role), data, list(range(len(data) + 1))) == whole
    if whole[0] == "error":
        conn = make(role)
        with pytest.raises(RemoteProtocolError):
            conn.receive(memoryview(data))
        with pytest.raises(RemoteProtocolError):
            conn.receive(memoryview(encode(m.Ping(1, False))))
        assert conn.phase is ConnPhase.ERROR


@st.composite
def packetish(draw: st.DrawFn) -> bytes:
    """Something shaped like a packet: a header with a mostly plausible length and type."""
    ptype = draw(st.integers(0, 24) | st.integers(0, 255))
    body = draw(st.binary(max_size=60))
    length = draw(
        st.just(HEADER_SIZE + len(body))
        | st.integers(0, 12)
        | st.integers(0, (1 << 32) - 1)
        | st.sampled_from([4096, 4097, 65536, 65537])
    )
    return HEADER.pack(length, ptype) + body


@CONNECTIONS
@FUZZ
@given(data=st.binary(max_size=200), cuts=st.lists(st.integers(0, 400), max_size=8))
def test_random_bytes_into_a_connection(make, role, data, cuts):
    check_stream(make, role, data, cuts)


@CONNECTIONS
@FUZZ
@given(packets=st.lists(packetish(), min_size=1, max_size=5), cuts=st.lists(st.integers(0, 400)))
def test_packet_shaped_garbage_into_a_connection(make, role, packets, cuts):
    check_stream(make, role, b"".join(packets), cuts)


@CONNECTIONS
@FUZZ
@given(data=st.data())
def test_mutated_packets_into_a_connection(make, role, data):
    ptype = data.draw(st.sampled_from(ALL_CLASSES))
    packet = encode(data.draw(strategy_for(PACKET_CLASSES[ptype], small=True)))
    mutated = data.draw(mutations(packet))
    cuts = data.draw(st.lists(st.integers(0, len(mutated)), max_size=4))
    check_stream(make, role, mutated, cuts)


@CONNECTIONS
@FUZZ
@given(data=st.data())
def test_streams_of_valid_packets_into_a_connection(make, role, data):
    """Well-formed packets in arbitrary order and direction, with ids that hit the open
    sessions and requests: the state machine refuses what is out of order, remotely."""
    peer_sends = sorted(SERVER_SENDS if role is Role.CLIENT else CLIENT_SENDS)
    types = st.sampled_from(peer_sends) | st.sampled_from(peer_sends) | st.sampled_from(ALL_CLASSES)
    msgs = data.draw(
        st.lists(
            types.flatmap(lambda t: strategy_for(PACKET_CLASSES[t], True)), min_size=1, max_size=6
        )
    )
    stream = b"".join(encode(msg) for msg in msgs)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=6))
    check_stream(make, role, stream, cuts)


# -- runs of records (common.recordruns) ------------------------------------------------------

RUN_CLASSES = sorted(
    {kind.record for cls in PACKET_CLASSES.values() for _, kind in field_kinds(cls)
     if isinstance(kind, Records) and record_codec(kind.record).run is not None},
    key=lambda cls: cls.__name__,
)  # fmt: skip


DECODE_ERRORS = (RemoteProtocolError, struct.error, ValueError, TypeError)
"""What a record's decoding may raise (``decode_body`` makes every one a protocol error)."""


def general_decode(cls: type, body: bytes, count: int) -> tuple[list[Any], int] | str:
    """What the general codec makes of *count* records of *cls* in *body*: the records and
    where they end, or its error's message."""
    try:
        return record_codec(cls).decode_all(memoryview(body), 0, count)
    except DECODE_ERRORS as exc:
        return f"{type(exc).__name__}: {exc}"


def test_the_records_that_come_by_the_thousand_go_in_runs():
    assert {m.SmallFile, m.FileResult, m.FileEntry} <= set(RUN_CLASSES)


@pytest.mark.parametrize("cls", RUN_CLASSES, ids=lambda cls: cls.__name__)
@FUZZ
@given(data=st.data())
def test_a_run_of_records_is_the_general_codec_in_one_loop(cls, data):
    """The same bytes out, and the same records or the same error back from any input."""
    records = data.draw(st.lists(strategy_for(cls, small=True), max_size=5))
    codec = record_codec(cls)
    general: list[bytes] = []
    for record in records:
        codec.encode_into(general, record)
    fast: list[bytes] = []
    codec.run.encode(fast, records)
    assert b"".join(fast) == b"".join(general)
    body = data.draw(st.one_of(st.just(b"".join(general)), mutations(b"".join(general))))
    try:
        got: tuple[list[Any], int] | str = codec.run.decode(memoryview(body), 0, len(records))
    except DECODE_ERRORS as exc:
        got = f"{type(exc).__name__}: {exc}"
    assert got == general_decode(cls, body, len(records))


def test_a_run_hands_what_it_cannot_encode_to_the_general_codec():
    """An over-long message is clipped and a bad digest refused, as by the general codec."""
    long = m.FileResult(m.FileStatus.CONFLICT, 3, "é" * 200)
    parts: list[bytes] = []
    record_codec(m.FileResult).run.encode(parts, [long])
    expected: list[bytes] = []
    record_codec(m.FileResult).encode_into(expected, long)
    assert parts == expected and len(b"".join(parts)) < 200 + 12
    bad = m.SmallFile(0, 0o644, 0, b"short", "a.txt", b"x")
    with pytest.raises(ValueError, match="digest must be 16 bytes"):
        record_codec(m.SmallFile).run.encode([], [bad])
