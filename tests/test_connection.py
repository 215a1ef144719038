"""h11-style tests of ``FSConnection``: bytes in, events out, no sockets.

A ``ConnectionPair`` wires a client and a server together in memory. Every delivery is parsed
three ways by ``tr`` (as h11's test helper does): the whole buffer at once, one byte at a time
(nothing may surface before the last byte of a packet, except payload bytes of FileSyncData,
which stream), and with a trailing partial packet that must be left unconsumed.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common import messages as m
from common.codec import DATA_HEADER, HEADER, encode
from common.connection import (
    CLIENT_SENDS,
    SERVER_SENDS,
    ConnPhase,
    DataChunk,
    FSConnection,
    ViewSink,
)
from common.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from common.limits import (
    ABSOLUTE_MAX_PACKET,
    DATA_HEADER_SIZE,
    DEFAULT_MAX_PACKET,
    DIGEST_SIZE,
    HEADER_SIZE,
    MAGIC,
    MAX_CLIENT_CONTROL_PACKET,
    MAX_IN_FLIGHT,
    NO_FILE,
    PROTOCOL_VERSION,
    SERVER_MAX_PACKET,
)
from common.state import Phase, Role

T = m.PacketType
DIGEST = bytes(range(DIGEST_SIZE))
OTHER_DIGEST = bytes(reversed(range(DIGEST_SIZE)))
TRAILING = encode(m.Ping(0xDEAD, False))[:-1]
"""A strict prefix of a control packet: never parsed, whatever the phase."""


# -- parsing three ways ----------------------------------------------------------------------


def materialize(events: list[Any]) -> list[Any]:
    """Copy DataChunk payloads out of the receive buffer."""
    return [DataChunk(e.file_id, bytes(e.data)) if isinstance(e, DataChunk) else e for e in events]


def merge(events: list[Any]) -> list[Any]:
    """Join adjacent DataChunks of one file (how payload is split is not part of the contract)."""
    out: list[Any] = []
    for ev in materialize(events):
        last = out[-1] if out else None
        if isinstance(ev, DataChunk) and isinstance(last, DataChunk) and last.file_id == ev.file_id:
            out[-1] = DataChunk(ev.file_id, last.data + ev.data)
            continue
        out.append(ev)
    return out


def layout(data: bytes) -> list[tuple[int, int, bool]]:
    """``(start, end, is_data)`` of every packet in *data*, which must hold whole packets."""
    packets = []
    pos = 0
    while pos < len(data):
        length, ptype = HEADER.unpack_from(data, pos)
        packets.append((pos, pos + length, ptype == T.FILE_SYNC_DATA))
        pos += length
    assert pos == len(data), "tr() needs whole packets"
    return packets


def clone(conn: FSConnection) -> FSConnection:
    """A deep copy; ViewSinks get copies of their memory, so a clone's writes stay its own."""
    memo: dict[int, Any] = {}
    for sink in [*conn._sinks.values(), conn._payload_sink]:
        if isinstance(sink, ViewSink) and id(sink) not in memo:
            twin = ViewSink(memoryview(bytearray(sink.view)))
            twin.pos = sink.pos
            memo[id(sink)] = twin
    return copy.deepcopy(conn, memo)


def state_of(conn: FSConnection) -> tuple[Any, ...]:
    sinks = {
        fid: (sink.pos, bytes(sink.view))
        for fid, sink in conn._sinks.items()
        if isinstance(sink, ViewSink)
    }
    return (
        conn.phase,
        conn.max_packet,
        dict(conn.sessions.sessions),
        dict(conn.requests.pending),
        conn._payload_left,
        sinks,
        getattr(conn, "subscribed", None),
    )


def tr(conn: FSConnection, data: bytes, expected: list[Any]) -> list[Any]:
    """Parse *data* into *conn* three ways; every way must give *expected* and the same state.

    The parse is checked on copies; the connection itself then takes the whole buffer, so the
    caller sees the state advance exactly once.
    """
    expected = merge(expected)

    # 1. the whole buffer
    whole = clone(conn)
    events, used = whole.receive(memoryview(data))
    assert used == len(data)
    assert merge(events) == expected

    # 2. one byte at a time: control packets surface on their last byte and not before
    bytewise = clone(conn)
    got: list[Any] = []
    pending = b""
    for start, end, is_data in layout(data):
        for i in range(start, end):
            buf = pending + data[i : i + 1]
            events, used = bytewise.receive(memoryview(buf))
            events = materialize(events)
            pending = buf[used:]
            if not is_data:
                if i < end - 1:
                    assert (events, used) == ([], 0), f"byte {i} of packet {start}..{end}"
                else:
                    assert len(events) == 1 and not isinstance(events[0], DataChunk)
                    assert pending == b""
            elif i < start + DATA_HEADER_SIZE:
                assert events == []
                assert len(pending) == (0 if i == start + DATA_HEADER_SIZE - 1 else i - start + 1)
            else:
                file_id = DATA_HEADER.unpack_from(data, start)[2]
                if file_id in bytewise._sinks:
                    assert events == []
                else:
                    assert events == [DataChunk(file_id, data[i : i + 1])]
                assert pending == b""
            got += events
    assert merge(got) == expected
    assert state_of(bytewise) == state_of(whole)

    # 3. with a partial packet after it, which must be left for later
    trailing = clone(conn)
    events, used = trailing.receive(memoryview(data + TRAILING))
    assert used == len(data)
    assert merge(events) == expected
    assert state_of(trailing) == state_of(whole)

    events, used = conn.receive(memoryview(data))
    assert used == len(data)
    assert state_of(conn) == state_of(whole)
    return merge(events)


def tr_error(
    conn: FSConnection, data: bytes, code: ErrorCode, *, at: int | None = None
) -> RemoteProtocolError:
    """*data* must make *conn* fail with *code* (at byte index *at* when fed one at a time,
    if given), leaving it in the ERROR phase for good."""
    bytewise = clone(conn)
    pending = b""
    failed_at = None
    for i in range(len(data)):
        buf = pending + data[i : i + 1]
        try:
            _, used = bytewise.receive(memoryview(buf))
        except RemoteProtocolError as exc:
            assert exc.code is code, exc
            failed_at = i
            break
        pending = buf[used:]
    assert failed_at is not None, "byte-at-a-time parse did not fail"
    if at is not None:
        assert failed_at == at
    assert bytewise.phase is ConnPhase.ERROR

    trailing = clone(conn)
    with pytest.raises(RemoteProtocolError) as info:
        trailing.receive(memoryview(data + TRAILING))
    assert info.value.code is code

    with pytest.raises(RemoteProtocolError) as info:
        conn.receive(memoryview(data))
    assert info.value.code is code
    assert conn.phase is ConnPhase.ERROR
    return info.value


def assert_broken(conn: FSConnection) -> None:
    """After a RemoteProtocolError nothing works any more and the phase stays ERROR."""
    assert conn.phase is ConnPhase.ERROR
    with pytest.raises(RemoteProtocolError):
        conn.receive(memoryview(encode(m.Ping(1, False))))
    with pytest.raises(RemoteProtocolError):
        conn.receive(memoryview(b""))
    with pytest.raises(RemoteProtocolError):
        conn.feed(encode(m.Ping(1, False)))
    with pytest.raises(LocalProtocolError):
        conn.send(m.Ping(2, False))
    with pytest.raises(LocalProtocolError):
        conn.frame_data(1, memoryview(b"x"))
    assert conn.phase is ConnPhase.ERROR


# -- two ends wired together -----------------------------------------------------------------


class ConnectionPair:
    """A client and a server connected in memory; every packet is checked with ``tr``."""

    def __init__(
        self,
        *,
        client_limit: int = SERVER_MAX_PACKET,
        server_limit: int = SERVER_MAX_PACKET,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self.client = FSConnection(
            Role.CLIENT, max_packet_limit=client_limit, max_in_flight=max_in_flight
        )
        self.server = FSConnection(
            Role.SERVER, max_packet_limit=server_limit, max_in_flight=max_in_flight
        )

    def peer_of(self, conn: FSConnection) -> FSConnection:
        return self.server if conn is self.client else self.client

    def deliver(self, sender: FSConnection, msg: Any) -> list[Any]:
        """*sender* sends *msg*; its peer must parse exactly that message back."""
        data = sender.send(msg)
        expected = [msg]
        if isinstance(msg, m.FileSyncData):
            expected = []
            if msg.payload and msg.file_id not in self.peer_of(sender)._sinks:
                expected = [DataChunk(msg.file_id, msg.payload)]
        events = tr(self.peer_of(sender), data, expected)
        self.assert_agree()
        return events

    def c2s(self, msg: Any) -> list[Any]:
        return self.deliver(self.client, msg)

    def s2c(self, msg: Any) -> list[Any]:
        return self.deliver(self.server, msg)

    def handshake(self, proposal: int = 65536, *, status=m.HandshakeStatus.OK) -> int:
        hello = m.VersionHandshake(MAGIC, PROTOCOL_VERSION, proposal, "client-1", "share", b"k")
        assert self.c2s(hello) == [hello]
        assert self.client.phase is ConnPhase.AWAIT_HANDSHAKE_RESPONSE
        assert self.server.phase is ConnPhase.HANDSHAKE_RECEIVED
        agreed = self.server.negotiate(proposal)
        reply = m.VersionHandshakeResponse(
            status, PROTOCOL_VERSION, agreed, 3, DIGEST, self.server.sessions.max_in_flight, ""
        )
        assert self.s2c(reply) == [reply]
        return agreed

    def stream(self, sender: FSConnection, file_id: int, data: bytes) -> None:
        """Send *data* for *file_id* with ``frame_data``; the peer must see exactly it."""
        out = sender.frame_data(file_id, memoryview(data))
        expected = [DataChunk(file_id, data)] if data else []
        if file_id in self.peer_of(sender)._sinks:
            expected = []
        assert tr(self.peer_of(sender), bytes(out), expected) == expected
        self.assert_agree()

    def assert_agree(self) -> None:
        """Both ends hold the same view of every session and request."""
        assert self.client.sessions.sessions == self.server.sessions.sessions
        assert self.client.requests.pending == self.server.requests.pending

    def ready(self, proposal: int = 65536) -> ConnectionPair:
        self.handshake(proposal)
        return self

    def upload_accepted(self, fid: int, size: int) -> None:
        self.c2s(m.FileSyncInit(fid, size, 123, 0o644, 0, None, f"f{fid}.txt"))
        self.s2c(m.FileSyncInitResponse(fid, m.InitStatus.ACCEPTED, 0, 0, ""))
        assert self.client.sessions.phase(fid) is Phase.UPLOADING

    def download_started(self, fid: int, size: int) -> None:
        self.c2s(m.DownloadRequest(fid, 0, None, f"d{fid}"))
        entry = m.FileEntry(size, 7, 0, 0o644, DIGEST, f"d{fid}")
        self.s2c(m.DownloadResponse(fid, m.LookupStatus.OK, 0, "", entry))
        assert self.client.sessions.phase(fid) is Phase.DOWNLOADING


@pytest.fixture
def pair() -> ConnectionPair:
    return ConnectionPair().ready()


def data_packet(file_id: int, payload: bytes) -> bytes:
    return DATA_HEADER.pack(DATA_HEADER_SIZE + len(payload), T.FILE_SYNC_DATA, file_id) + payload


# -- handshake and negotiation ---------------------------------------------------------------


def test_new_connections_wait_for_the_handshake():
    for role in Role:
        conn = FSConnection(role)
        assert conn.phase is ConnPhase.HANDSHAKE
        assert conn.max_packet == DEFAULT_MAX_PACKET == 4096
        assert conn.max_payload == 4096 - DATA_HEADER_SIZE == 4087
        assert conn.direct_target() is None


@pytest.mark.parametrize("limit", [DEFAULT_MAX_PACKET - 1, ABSOLUTE_MAX_PACKET + 1, 0])
def test_connection_limit_must_be_sane(limit):
    with pytest.raises(ValueError):
        FSConnection(Role.SERVER, max_packet_limit=limit)


@pytest.mark.parametrize(
    ("proposal", "server_limit", "agreed"),
    [
        (65536, SERVER_MAX_PACKET, 65536),
        (DEFAULT_MAX_PACKET, SERVER_MAX_PACKET, DEFAULT_MAX_PACKET),
        (ABSOLUTE_MAX_PACKET, SERVER_MAX_PACKET, SERVER_MAX_PACKET),
        (SERVER_MAX_PACKET, 8192, 8192),
        (0xFFFFFFFF, ABSOLUTE_MAX_PACKET, ABSOLUTE_MAX_PACKET),
    ],
)
def test_handshake_negotiates_the_packet_size(proposal, server_limit, agreed):
    pair = ConnectionPair(client_limit=ABSOLUTE_MAX_PACKET, server_limit=server_limit)
    assert pair.handshake(proposal) == agreed
    for conn in (pair.client, pair.server):
        assert conn.phase is ConnPhase.READY
        assert conn.max_packet == agreed
        assert conn.max_payload == agreed - DATA_HEADER_SIZE


def test_server_clamps_to_its_limit():
    server = FSConnection(Role.SERVER, max_packet_limit=8192)
    assert server.negotiate(DEFAULT_MAX_PACKET) == DEFAULT_MAX_PACKET
    assert server.negotiate(5000) == 5000
    assert server.negotiate(8192) == 8192
    assert server.negotiate(8193) == 8192
    assert server.negotiate(ABSOLUTE_MAX_PACKET) == 8192


@pytest.mark.parametrize("proposal", [0, 1, DEFAULT_MAX_PACKET - 1])
def test_server_will_not_negotiate_below_4096(proposal):
    """(Neither side may send such a proposal: see test_connection_refusals.)"""
    with pytest.raises(LocalProtocolError):
        FSConnection(Role.SERVER).negotiate(proposal)


def test_agreed_size_outside_client_limit_is_rejected():
    pair = ConnectionPair(client_limit=8192)
    pair.c2s(m.VersionHandshake(MAGIC, PROTOCOL_VERSION, 8192, "c", "s", b""))
    too_big = m.VersionHandshakeResponse(m.HandshakeStatus.OK, 1, 8193, 0, DIGEST, 4096, "")
    tr_error(clone(pair.client), encode(too_big), ErrorCode.MALFORMED)
    too_small = m.VersionHandshakeResponse(m.HandshakeStatus.OK, 1, 4095, 0, DIGEST, 4096, "")
    tr_error(pair.client, encode(too_small), ErrorCode.MALFORMED)
    assert_broken(pair.client)


def test_server_may_not_agree_to_more_than_its_limit():
    pair = ConnectionPair(server_limit=8192)
    pair.c2s(m.VersionHandshake(MAGIC, PROTOCOL_VERSION, 65536, "c", "s", b""))
    for bad in (8193, 4095):
        with pytest.raises(LocalProtocolError):
            pair.server.send(
                m.VersionHandshakeResponse(m.HandshakeStatus.OK, 1, bad, 0, DIGEST, 4096, "")
            )
    assert pair.server.phase is ConnPhase.HANDSHAKE_RECEIVED
    assert pair.server.max_packet == DEFAULT_MAX_PACKET


def test_client_rejects_agreement_above_its_proposal():
    client = FSConnection(Role.CLIENT, max_packet_limit=SERVER_MAX_PACKET)
    client.send(m.VersionHandshake(MAGIC, PROTOCOL_VERSION, 8192, "c", "s", b""))
    reply = m.VersionHandshakeResponse(m.HandshakeStatus.OK, 1, 65536, 0, DIGEST, 4096, "")
    with pytest.raises(RemoteProtocolError):
        client.receive(memoryview(encode(reply)))


@pytest.mark.parametrize(
    "status", [s for s in m.HandshakeStatus if s is not m.HandshakeStatus.OK], ids=lambda s: s.name
)
def test_refused_handshake_closes_both_ends(status):
    pair = ConnectionPair()
    pair.handshake(65536, status=status)
    for conn in (pair.client, pair.server):  # (nothing may be sent now: a table row each)
        assert conn.phase is ConnPhase.CLOSED
        assert conn.max_packet == DEFAULT_MAX_PACKET


def test_bad_magic_is_malformed():
    packet = bytearray(encode(m.VersionHandshake(MAGIC, PROTOCOL_VERSION, 65536, "c", "s", b"")))
    packet[HEADER_SIZE : HEADER_SIZE + 4] = b"HTTP"
    tr_error(FSConnection(Role.SERVER), bytes(packet), ErrorCode.MALFORMED, at=len(packet) - 1)


def test_error_before_the_handshake_closes():
    pair = ConnectionPair()
    pair.s2c(m.Error(ErrorCode.SHUTTING_DOWN, NO_FILE, "bye"))
    assert pair.client.phase is pair.server.phase is ConnPhase.CLOSED


def test_ping_both_ways(pair):
    assert pair.c2s(m.Ping(1, False)) == [m.Ping(1, False)]
    assert pair.s2c(m.Ping(1, True)) == [m.Ping(1, True)]
    assert pair.s2c(m.Ping(2, False)) == [m.Ping(2, False)]
    assert pair.client.phase is pair.server.phase is ConnPhase.READY


def test_several_packets_in_one_buffer(pair):
    msgs = [m.Ping(1, False), m.StatRequest(5, "x"), m.ListRequest(6, 100, "a/", "")]
    data = b"".join(pair.client.send(msg) for msg in msgs)
    assert tr(pair.server, data, msgs) == msgs
    assert set(pair.server.requests.pending) == {5, 6}


# -- sizes -------------------------------------------------------------------------------------


def test_packet_over_the_default_max_is_refused_from_its_header():
    header = HEADER.pack(DEFAULT_MAX_PACKET + 1, T.PING)
    err = tr_error(FSConnection(Role.SERVER), header + bytes(20), ErrorCode.PACKET_TOO_LARGE, at=4)
    assert "4097" in err.message
    tr_error(FSConnection(Role.CLIENT), header, ErrorCode.PACKET_TOO_LARGE, at=4)


def test_packet_of_exactly_the_max_is_fine(pair):
    pair = ConnectionPair().ready(8192)
    pair.upload_accepted(1, 10_000)
    payload = bytes(range(256)) * 32
    payload = payload[: 8192 - DATA_HEADER_SIZE]
    assert pair.c2s(m.FileSyncData(1, payload)) == [DataChunk(1, payload)]
    # (one byte more is refused: test_connection_refusals, data-over-the-agreed-packet-size)


def test_server_caps_control_packets_from_clients():
    pair = ConnectionPair().ready(SERVER_MAX_PACKET)
    header = HEADER.pack(MAX_CLIENT_CONTROL_PACKET + 1, T.STAT_REQUEST)
    tr_error(pair.server, header, ErrorCode.PACKET_TOO_LARGE, at=4)


def test_client_takes_large_control_packets():
    pair = ConnectionPair().ready(SERVER_MAX_PACKET)
    pair.c2s(m.ListRequest(1, 5000, "", ""))
    entries = tuple(
        m.FileEntry(i, 1, 0, 0o644, DIGEST, f"dir/{i:06}" + "x" * 40) for i in range(2000)
    )
    reply = m.ListResponse(1, m.LookupStatus.OK, False, "", entries)
    assert len(encode(reply)) > MAX_CLIENT_CONTROL_PACKET
    assert pair.s2c(reply) == [reply]


def test_sender_refuses_packets_over_the_max(pair):
    pair = ConnectionPair().ready(DEFAULT_MAX_PACKET)
    pair.c2s(m.ListRequest(1, 5000, "", ""))
    entries = tuple(m.FileEntry(i, 1, 0, 0, DIGEST, f"{i:08}") for i in range(100))
    with pytest.raises(LocalProtocolError) as info:
        pair.server.send(m.ListResponse(1, m.LookupStatus.OK, False, "", entries))
    assert info.value.code is ErrorCode.PACKET_TOO_LARGE
    assert 1 in pair.server.requests.pending, "a refused send changes nothing"


@pytest.mark.parametrize("length", [0, 1, HEADER_SIZE - 1])
def test_length_shorter_than_the_header(length):
    tr_error(FSConnection(Role.SERVER), HEADER.pack(length, T.PING), ErrorCode.MALFORMED, at=4)


@pytest.mark.parametrize("length", [0, HEADER_SIZE, DATA_HEADER_SIZE - 1])
def test_data_length_shorter_than_its_header(pair, length):
    """Refused from the 5 header bytes alone, before the file id arrives."""
    packet = HEADER.pack(length, T.FILE_SYNC_DATA) + b"\x00\x00\x00\x01"
    tr_error(pair.server, packet, ErrorCode.MALFORMED, at=4)
    tr_error(FSConnection(Role.CLIENT), packet, ErrorCode.MALFORMED, at=4)


# -- packet types ------------------------------------------------------------------------------


UNKNOWN_TYPES = [t for t in (max(T) + 1, max(T) + 2, 99, 128, 255) if t not in set(T)]


@pytest.mark.parametrize("ptype", UNKNOWN_TYPES)
def test_unknown_packet_type(pair, ptype):
    packet = HEADER.pack(HEADER_SIZE + 3, ptype) + b"abc"
    tr_error(FSConnection(Role.SERVER), packet, ErrorCode.UNKNOWN_TYPE, at=len(packet) - 1)
    tr_error(pair.client, packet, ErrorCode.UNKNOWN_TYPE, at=len(packet) - 1)


def test_role_tables():
    """Docs 3.1: the session packets flow both ways, Data (type 2) is sent by nobody, and every
    other type has exactly one sender."""
    assert {
        T.ERROR,
        T.PING,
        T.FILE_SYNC_DATA,
        T.FILE_SYNC_CHECK_HASH,
        T.FILE_SYNC_CHECK_HASH_RESPONSE,
    } == CLIENT_SENDS & SERVER_SENDS
    assert T.DATA not in CLIENT_SENDS | SERVER_SENDS
    assert {T.VERSION_HANDSHAKE, T.FILE_SYNC_INIT, T.FILE_SYNC_CANCEL, T.DOWNLOAD_REQUEST} <= (
        CLIENT_SENDS - SERVER_SENDS
    )
    assert {T.VERSION_HANDSHAKE_RESPONSE, T.FILE_SYNC_RETRY_UPLOAD, T.FILE_SYNC_FINISH} <= (
        SERVER_SENDS - CLIENT_SENDS
    )


def test_every_packet_type_has_a_sender():
    """A packet type that no role may send is dead (only the seed's Data is)."""
    assert set(T) - (CLIENT_SENDS | SERVER_SENDS) == {T.DATA}


# -- uploads -----------------------------------------------------------------------------------


def test_upload_with_a_mismatch_then_a_retry(pair):
    body = bytes(range(256)) * 40  # 10240 bytes
    pair.c2s(m.FileSyncInit(4, len(body), 5, 0o600, 0, DIGEST, "dir/file.bin"))
    assert pair.server.sessions.phase(4) is Phase.AWAIT_INIT_RESPONSE
    pair.s2c(m.FileSyncInitResponse(4, m.InitStatus.ACCEPTED, 0, 0, ""))
    assert pair.server.sessions.phase(4) is Phase.UPLOADING
    pair.stream(pair.client, 4, body[:5000])
    pair.stream(pair.client, 4, body[5000:])
    assert pair.c2s(m.FileSyncCheckHash(4, DIGEST)) == [m.FileSyncCheckHash(4, DIGEST)]
    assert pair.client.sessions.phase(4) is Phase.AWAIT_HASH_RESULT
    # the client may not send more while the server verifies
    with pytest.raises(LocalProtocolError):
        pair.client.send(m.FileSyncData(4, b""))
    pair.s2c(m.FileSyncCheckHashResponse(4, m.HashStatus.MISMATCH, OTHER_DIGEST))
    assert pair.client.sessions.phase(4) is Phase.AWAIT_RETRY
    with pytest.raises(LocalProtocolError):
        pair.client.send(m.FileSyncData(4, b"x"))
    pair.s2c(m.FileSyncRetryUpload(4, 1))
    session = pair.server.sessions.sessions[4]
    assert (session.phase, session.size, session.transferred) == (Phase.UPLOADING, len(body), 0)
    pair.stream(pair.client, 4, body)
    pair.c2s(m.FileSyncCheckHash(4, DIGEST))
    pair.s2c(m.FileSyncCheckHashResponse(4, m.HashStatus.OK, DIGEST))
    assert pair.server.sessions.phase(4) is Phase.AWAIT_FINISH
    pair.s2c(m.FileSyncFinish(4, 1))
    assert len(pair.client.sessions) == len(pair.server.sessions) == 0
    # the id is free again
    pair.upload_accepted(4, 0)
    pair.c2s(m.FileSyncCheckHash(4, DIGEST))


def test_a_resumed_upload_sends_the_rest_and_a_retry_all_of_it(pair):
    """Section 5.13: the server holds 6000 bytes; the client sends the other 4240, then (after
    a mismatch) the whole file again."""
    pair.c2s(m.FileSyncInit(4, 10240, 5, 0o600, 0, None, "big.bin"))
    pair.s2c(m.FileSyncInitResponse(4, m.InitStatus.ACCEPTED, 0, 6000, ""))
    for end in (pair.client, pair.server):
        session = end.sessions.sessions[4]
        assert (session.phase, session.size, session.transferred) == (Phase.UPLOADING, 10240, 6000)
    with pytest.raises(LocalProtocolError) as sent_too_much:
        pair.client.send(m.FileSyncData(4, bytes(4241)))
    assert sent_too_much.value.code is ErrorCode.LIMIT_EXCEEDED
    pair.stream(pair.client, 4, bytes(4240))
    pair.c2s(m.FileSyncCheckHash(4, DIGEST))
    pair.s2c(m.FileSyncCheckHashResponse(4, m.HashStatus.MISMATCH, OTHER_DIGEST))
    pair.s2c(m.FileSyncRetryUpload(4, 1))
    with pytest.raises(LocalProtocolError):
        pair.client.send(m.FileSyncCheckHash(4, DIGEST))  # the retry needs every byte
    pair.stream(pair.client, 4, bytes(10240))
    pair.c2s(m.FileSyncCheckHash(4, DIGEST))
    pair.assert_agree()


def test_a_download_resumes_at_the_offset_asked(pair):
    entry = m.FileEntry(100, 7, 0, 0o644, DIGEST, "d")
    pair.c2s(m.DownloadRequest(3, 60, DIGEST, "d"))
    pair.s2c(m.DownloadResponse(3, m.LookupStatus.OK, 60, "", entry))
    assert pair.client.sessions.sessions[3].transferred == 60
    pair.stream(pair.server, 3, bytes(40))
    pair.s2c(m.FileSyncCheckHash(3, DIGEST))
    pair.c2s(m.FileSyncCheckHashResponse(3, m.HashStatus.OK, DIGEST))
    # asked for an offset, answered from the first byte: the content changed
    pair.c2s(m.DownloadRequest(3, 60, OTHER_DIGEST, "d"))
    pair.s2c(m.DownloadResponse(3, m.LookupStatus.OK, 0, "", entry))
    pair.stream(pair.server, 3, bytes(100))
    pair.s2c(m.FileSyncCheckHash(3, DIGEST))
    pair.assert_agree()


def test_empty_file_upload(pair):
    pair.upload_accepted(1, 0)
    pair.stream(pair.client, 1, b"")
    assert pair.c2s(m.FileSyncData(1, b"")) == []
    pair.c2s(m.FileSyncCheckHash(1, DIGEST))
    pair.s2c(m.FileSyncCheckHashResponse(1, m.HashStatus.OK, DIGEST))
    pair.s2c(m.FileSyncFinish(1, 9))
    assert len(pair.server.sessions) == 0


def test_already_have_content(pair):
    pair.c2s(m.FileSyncInit(2, 1000, 0, 0, 0, DIGEST, "dup"))
    pair.s2c(m.FileSyncInitResponse(2, m.InitStatus.ALREADY_HAVE_CONTENT, 3, 0, ""))
    assert pair.client.sessions.phase(2) is pair.server.sessions.phase(2) is Phase.AWAIT_FINISH
    pair.s2c(m.FileSyncFinish(2, 3))
    assert pair.client.sessions.phase(2) is pair.server.sessions.phase(2) is None


def test_cancel(pair):
    pair.upload_accepted(1, 100)
    pair.upload_accepted(2, 100)
    sink = ViewSink(memoryview(bytearray(100)))
    pair.server.attach_sink(1, sink)
    pair.server.feed(pair.client.send(m.FileSyncData(1, b"abc")))
    assert bytes(sink.view[:3]) == b"abc"
    assert pair.c2s(m.FileSyncCancel(1)) == [m.FileSyncCancel(1)]
    assert pair.client.sessions.phase(1) is pair.server.sessions.phase(1) is None
    assert pair.server.sessions.phase(2) is Phase.UPLOADING, "other sessions untouched"
    assert 1 not in pair.server._sinks, "cancel detaches the sink"


def test_answered_requests_and_ended_sessions_free_their_slot():
    pair = ConnectionPair(max_in_flight=1).ready()
    for rid in range(3):
        pair.c2s(m.StatRequest(rid, "x"))
        pair.s2c(m.StatResponse(rid, m.LookupStatus.NOT_FOUND, "", None))
    for fid in range(3):
        pair.c2s(m.FileSyncInit(fid, 0, 0, 0, 0, None, "a"))
        pair.s2c(m.FileSyncInitResponse(fid, m.InitStatus.NO_SPACE, 0, 0, ""))
    assert len(pair.server.sessions) == len(pair.server.requests) == 0


# -- downloads ---------------------------------------------------------------------------------


@pytest.mark.parametrize("verdict", list(m.HashStatus), ids=lambda s: s.name)
def test_download(pair, verdict):
    body = b"0123456789" * 1000
    pair.download_started(3, len(body))
    assert pair.server.sessions.sessions[3].size == len(body)
    with pytest.raises(LocalProtocolError):
        pair.client.send(m.FileSyncData(3, b"x"))
    pair.stream(pair.server, 3, body)
    with pytest.raises(LocalProtocolError):
        pair.server.frame_data(3, memoryview(b"x"))
    pair.s2c(m.FileSyncCheckHash(3, DIGEST))
    assert pair.client.sessions.phase(3) is Phase.AWAIT_VERDICT
    pair.c2s(m.FileSyncCheckHashResponse(3, verdict, DIGEST))
    assert len(pair.client.sessions) == len(pair.server.sessions) == 0


def test_upload_and_download_side_by_side(pair):
    pair.upload_accepted(1, 6)
    pair.download_started(2, 4)
    pair.stream(pair.client, 1, b"abc")
    pair.stream(pair.server, 2, b"wxyz")
    pair.stream(pair.client, 1, b"def")
    pair.s2c(m.FileSyncCheckHash(2, DIGEST))
    pair.c2s(m.FileSyncCheckHash(1, DIGEST))
    pair.c2s(m.FileSyncCheckHashResponse(2, m.HashStatus.OK, DIGEST))
    pair.s2c(m.FileSyncCheckHashResponse(1, m.HashStatus.OK, DIGEST))
    pair.s2c(m.FileSyncFinish(1, 2))
    assert len(pair.client.sessions) == 0


# -- Error packets -----------------------------------------------------------------------------


def _to_phase(pair: ConnectionPair, fid: int, phase: Phase) -> None:
    if phase in (Phase.AWAIT_DOWNLOAD_RESPONSE, Phase.DOWNLOADING, Phase.AWAIT_VERDICT):
        pair.c2s(m.DownloadRequest(fid, 0, None, "x"))
        if phase is Phase.AWAIT_DOWNLOAD_RESPONSE:
            return
        entry = m.FileEntry(2, 1, 0, 0, DIGEST, "x")
        pair.s2c(m.DownloadResponse(fid, m.LookupStatus.OK, 0, "", entry))
        pair.stream(pair.server, fid, b"ab")
        if phase is Phase.AWAIT_VERDICT:
            pair.s2c(m.FileSyncCheckHash(fid, DIGEST))
        return
    pair.c2s(m.FileSyncInit(fid, 2, 0, 0, 0, None, "x"))
    if phase is Phase.AWAIT_INIT_RESPONSE:
        return
    pair.s2c(m.FileSyncInitResponse(fid, m.InitStatus.ACCEPTED, 0, 0, ""))
    pair.stream(pair.client, fid, b"ab")
    if phase is Phase.UPLOADING:
        return
    pair.c2s(m.FileSyncCheckHash(fid, DIGEST))
    if phase is Phase.AWAIT_HASH_RESULT:
        return
    if phase is Phase.AWAIT_RETRY:
        pair.s2c(m.FileSyncCheckHashResponse(fid, m.HashStatus.MISMATCH, DIGEST))
    else:
        pair.s2c(m.FileSyncCheckHashResponse(fid, m.HashStatus.OK, DIGEST))


LIVE_PHASES = [p for p in Phase if p is not Phase.DONE]


@pytest.mark.parametrize("phase", LIVE_PHASES, ids=lambda p: p.name)
@pytest.mark.parametrize("sender_role", list(Role), ids=lambda r: r.name)
def test_error_with_a_file_id_ends_that_session(pair, phase, sender_role):
    _to_phase(pair, 5, phase)
    _to_phase(pair, 6, Phase.UPLOADING)
    assert pair.client.sessions.phase(5) is phase
    sender = pair.client if sender_role is Role.CLIENT else pair.server
    error = m.Error(ErrorCode.NO_SPACE, 5, "store full")
    assert pair.deliver(sender, error) == [error]
    assert pair.client.sessions.phase(5) is pair.server.sessions.phase(5) is None
    assert pair.server.sessions.phase(6) is Phase.UPLOADING
    assert pair.client.phase is pair.server.phase is ConnPhase.READY
    # the id may be used again at once
    pair.upload_accepted(5, 1)


def test_error_for_an_unknown_file_is_harmless(pair):
    pair.s2c(m.Error(ErrorCode.UNKNOWN_FILE, 77, "?"))
    pair.c2s(m.Error(ErrorCode.UNKNOWN_FILE, 78, "?"))
    assert pair.client.phase is pair.server.phase is ConnPhase.READY


def test_error_detaches_the_sink(pair):
    pair.upload_accepted(5, 10)
    pair.server.attach_sink(5, ViewSink(memoryview(bytearray(10))))
    pair.s2c(m.Error(ErrorCode.INTERNAL, 5, "oops"))
    assert 5 not in pair.server._sinks


# -- list / stat / delete ----------------------------------------------------------------------

ENTRY = m.FileEntry(3, 2, 1_700_000_000_000_000_000, 0o644, DIGEST, "a/b.txt")
REQUESTS = [
    (
        m.ListRequest(7, 100, "a/", ""),
        m.ListResponse(7, m.LookupStatus.OK, True, "", (ENTRY, ENTRY)),
    ),
    (m.StatRequest(7, "a/b.txt"), m.StatResponse(7, m.LookupStatus.OK, "", ENTRY)),
    (m.StatRequest(7, "nope"), m.StatResponse(7, m.LookupStatus.NOT_FOUND, "missing", None)),
    (m.DeleteRequest(7, 2, "a/b.txt"), m.DeleteResponse(7, m.LookupStatus.OK, 3, "")),
]
request_ids = pytest.mark.parametrize(("req", "response"), REQUESTS, ids=lambda v: type(v).__name__)


@request_ids
def test_request_and_response(pair, req, response):
    assert pair.c2s(req) == [req]
    assert pair.server.requests.pending == {7: type(response)}
    assert pair.s2c(response) == [response]
    assert len(pair.client.requests) == len(pair.server.requests) == 0
    # the id is free again
    pair.c2s(req)


def test_request_ids_and_file_ids_are_separate(pair):
    pair.upload_accepted(7, 1)
    pair.c2s(m.StatRequest(7, "x"))
    pair.c2s(m.ListRequest(8, 1, "", ""))
    pair.s2c(m.ListResponse(8, m.LookupStatus.OK, False, "", ()))
    pair.s2c(m.StatResponse(7, m.LookupStatus.NOT_FOUND, "", None))
    assert pair.server.sessions.phase(7) is Phase.UPLOADING


# -- subscriptions ---------------------------------------------------------------------------


def test_subscribe_then_notifications(pair):
    note = m.ChangeNotification(False, ENTRY)
    pair.c2s(m.SubscribeRequest(4, 0))
    assert not pair.client.subscribed and not pair.server.subscribed
    pair.s2c(m.SubscribeResponse(4, m.LookupStatus.OK, 12, ""))
    assert pair.client.subscribed and pair.server.subscribed
    assert pair.s2c(note) == [note]
    gone = m.ChangeNotification(True, ENTRY)
    assert pair.s2c(gone) == [gone]


def test_refused_subscription(pair):
    pair.c2s(m.SubscribeRequest(4, 0))
    pair.s2c(m.SubscribeResponse(4, m.LookupStatus.NOT_FOUND, 0, "no"))
    assert not pair.client.subscribed
    pair.c2s(m.SubscribeRequest(4, 0))  # may ask again


# -- sinks and zero copy -----------------------------------------------------------------------


def test_sink_receives_payload_instead_of_events(pair):
    body = bytes(range(200))
    pair.upload_accepted(1, len(body))
    store = bytearray(len(body))
    pair.server.attach_sink(1, ViewSink(memoryview(store)))
    out = pair.client.frame_data(1, memoryview(body))
    for i in range(0, len(out), 7):  # in odd pieces
        assert pair.server.feed(bytes(out[i : i + 7])) == []
    assert store == body
    pair.c2s(m.FileSyncCheckHash(1, DIGEST))
    assert 1 not in pair.server._sinks, "CheckHash from the peer detaches the sink"


def test_direct_target_zero_copy(pair):
    body = bytes(range(256)) * 10
    pair.upload_accepted(1, len(body))
    store = bytearray(len(body))
    sink = ViewSink(memoryview(store))
    pair.server.attach_sink(1, sink)
    packet = pair.client.send(m.FileSyncData(1, body))
    assert pair.server.direct_target() is None, "no payload in flight yet"
    events, used = pair.server.receive(memoryview(packet[: DATA_HEADER_SIZE + 100]))
    assert (events, used) == ([], DATA_HEADER_SIZE + 100)
    assert store[:100] == body[:100]
    target = pair.server.direct_target()
    assert target is not None and len(target) == len(body) - 100
    # the caller reads the socket straight into the store, in two reads
    target[:1000] = body[100:1100]
    pair.server.direct_received(1000)
    target = pair.server.direct_target()
    assert len(target) == len(body) - 1100
    target[:] = body[1100:]
    pair.server.direct_received(len(target))
    assert pair.server.direct_target() is None
    assert store == body
    assert sink.pos == len(body)
    # the packet is done: the next one parses normally
    assert tr(
        pair.server,
        pair.client.send(m.FileSyncCheckHash(1, DIGEST)),
        [m.FileSyncCheckHash(1, DIGEST)],
    )


def test_direct_target_is_capped_at_the_payload(pair):
    pair.upload_accepted(1, 100)
    pair.server.attach_sink(1, ViewSink(memoryview(bytearray(1000))))
    header = pair.client.data_header(1, 10)
    assert pair.server.receive(memoryview(header)) == ([], DATA_HEADER_SIZE)
    target = pair.server.direct_target()
    assert len(target) == 10


def test_direct_target_without_a_sink(pair):
    pair.upload_accepted(1, 100)
    header = pair.client.data_header(1, 10)
    assert pair.server.receive(memoryview(header)) == ([], DATA_HEADER_SIZE)
    assert pair.server.direct_target() is None
    events, used = pair.server.receive(memoryview(b"0123456789"))
    assert materialize(events) == [DataChunk(1, b"0123456789")] and used == 10


def test_download_into_a_sink(pair):
    body = b"z" * 9000
    pair.download_started(2, len(body))
    store = bytearray(len(body))
    pair.client.attach_sink(2, ViewSink(memoryview(store)))
    out = pair.server.frame_data(2, memoryview(body))
    assert pair.client.feed(bytes(out)) == []
    assert store == body
    pair.s2c(m.FileSyncCheckHash(2, DIGEST))
    assert 2 not in pair.client._sinks


def test_sink_attached_mid_stream_keeps_payload_order(pair):
    """Payload already handed out as events in one receive call is not overtaken by later bytes
    of the same file going straight into a sink attached meanwhile: the rest of that call stays
    events, and the sink takes over from the next call."""
    pair.upload_accepted(1, 30)
    first = pair.client.send(m.FileSyncData(1, b"A" * 10))
    second = pair.client.send(m.FileSyncData(1, b"B" * 10))
    third = pair.client.send(m.FileSyncData(1, b"C" * 10))
    events, used = pair.server.receive(memoryview(first[:12]))
    assert materialize(events) == [DataChunk(1, b"AAA")]
    store = bytearray(30)
    pair.server.attach_sink(1, ViewSink(memoryview(store)))
    rest = first[used:] + second
    events, used = pair.server.receive(memoryview(rest))
    assert used == len(rest)
    assert merge(events) == [DataChunk(1, b"A" * 7 + b"B" * 10)]
    assert store == bytes(30), "nothing may reach the sink ahead of those events"
    events, used = pair.server.receive(memoryview(third))
    assert (events, used) == ([], len(third))
    assert store[:10] == b"C" * 10


class ExtentSink:
    """A sink over several separate extents, as a store hands out memory in pieces."""

    def __init__(self, sizes: list[int]) -> None:
        self.extents = [bytearray(n) for n in sizes]
        self.index = 0
        self.pos = 0
        self.written = 0

    def target(self) -> memoryview:
        while self.index < len(self.extents) and self.pos == len(self.extents[self.index]):
            self.index += 1
            self.pos = 0
        if self.index == len(self.extents):
            return memoryview(bytearray())
        return memoryview(self.extents[self.index])[self.pos :]

    def advance(self, nbytes: int) -> None:
        assert 0 <= nbytes <= len(self.target())
        self.pos += nbytes
        self.written += nbytes

    def data(self) -> bytes:
        return b"".join(self.extents)[: self.written]


@st.composite
def extents(draw: st.DrawFn, size: int) -> list[int]:
    """Extent sizes that add up to *size*."""
    cuts = draw(st.lists(st.integers(0, size), max_size=4))
    bounds = sorted({0, size, *cuts})
    return [b - a for a, b in itertools.pairwise(bounds)] or [0]


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_payload_delivery_property(data):
    """Uploads of several files, interleaved packet by packet, some into sinks (attached at the
    start or in the middle, over one or several extents), delivered in arbitrary pieces, and
    sometimes read straight into ``direct_target()``: every file's bytes come out complete and
    in order, the DataChunk events of a file always precede what went to its sink."""
    pair = ConnectionPair().ready(data.draw(st.sampled_from([4096, 4500, 8192])))
    client, server = pair.client, pair.server
    files = {
        fid: bytes([fid]) * 3 + data.draw(st.binary(min_size=0, max_size=12_000))
        for fid in range(1, data.draw(st.integers(1, 3)) + 1)
    }
    for fid, body in files.items():
        pair.upload_accepted(fid, len(body))
    sinks: dict[int, ExtentSink] = {}
    late: dict[int, int] = {}  # fid -> stream offset at which its sink gets attached
    for fid, body in files.items():
        how = data.draw(st.sampled_from(["events", "sink", "late"]))
        if how == "sink":
            sinks[fid] = ExtentSink(data.draw(extents(len(body))))
            server.attach_sink(fid, sinks[fid])
        elif how == "late":
            sinks[fid] = ExtentSink([len(body)])
    # interleave chunks of the files, each framed into packets
    stream = bytearray()
    offsets = dict.fromkeys(files, 0)
    while any(offsets[f] < len(files[f]) for f in files):
        fid = data.draw(st.sampled_from([f for f in files if offsets[f] < len(files[f])]))
        n = data.draw(st.integers(1, 9000))
        chunk = files[fid][offsets[fid] : offsets[fid] + n]
        stream += client.frame_data(fid, memoryview(chunk))
        offsets[fid] += len(chunk)
    for fid in sinks.keys() - server._sinks.keys():
        late[fid] = data.draw(st.integers(0, len(stream)))
    stream = bytes(stream)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    direct = data.draw(st.booleans())
    got: dict[int, bytes] = dict.fromkeys(files, b"")
    pending, pos = b"", 0
    for cut in [*cuts, len(stream)]:
        if cut < pos:
            continue
        for fid, at in late.items():
            if pos >= at and fid not in server._sinks:
                server.attach_sink(fid, sinks[fid])
                # nothing may reach the sink while events for this file are pending
                assert sinks[fid].written == 0
        buf = pending + stream[pos:cut]
        pos = cut
        events, used = server.receive(memoryview(buf))
        pending = buf[used:]
        for ev in materialize(events):
            assert isinstance(ev, DataChunk)
            assert not sinks.get(ev.file_id) or not sinks[ev.file_id].written, "order broken"
            got[ev.file_id] += ev.data
        target = server.direct_target()
        if direct and target is not None:
            assert pending == b""
            n = min(len(target), cut - pos + data.draw(st.integers(0, 5000)), len(stream) - pos)
            target[:n] = stream[pos : pos + n]
            server.direct_received(n)
            pos += n
    assert pending == b"" and pos == len(stream)
    assert server.direct_target() is None
    for fid, body in files.items():
        sink_part = sinks[fid].data() if fid in sinks else b""
        assert got[fid] + sink_part == body, fid
        assert server.sessions.sessions[fid].transferred == len(body)
        if fid in sinks and fid not in late:
            assert got[fid] == b"", "a sink attached up front gets every byte"
    for fid in files:
        pair.c2s(m.FileSyncCheckHash(fid, DIGEST))


def test_sink_that_runs_out_of_room_fails_the_connection(pair):
    """A sink smaller than the payload due to it is this side's bug; the connection cannot go
    on (the bytes have nowhere to go), so it fails like any protocol error, as INTERNAL."""
    pair.upload_accepted(1, 20)
    pair.server.attach_sink(1, ViewSink(memoryview(bytearray(5))))
    packet = pair.client.send(m.FileSyncData(1, bytes(range(20))))
    with pytest.raises(RemoteProtocolError) as info:
        pair.server.receive(memoryview(packet))
    assert info.value.code is ErrorCode.INTERNAL
    assert_broken(pair.server)


def test_detach_sink_mid_payload(pair):
    pair.upload_accepted(1, 10)
    store = bytearray(10)
    pair.server.attach_sink(1, ViewSink(memoryview(store)))
    packet = pair.client.send(m.FileSyncData(1, b"0123456789"))
    assert pair.server.feed(packet[:12]) == []
    pair.server.detach_sink(1)
    assert pair.server.direct_target() is None
    assert pair.server.feed(packet[12:]) == [DataChunk(1, b"3456789")]
    assert store[:3] == b"012"


# -- framing -----------------------------------------------------------------------------------


def split_packets(out: bytes) -> list[tuple[int, int, bytes]]:
    """``(length, file_id, payload)`` of each FileSyncData packet in *out*."""
    packets = []
    pos = 0
    while pos < len(out):
        length, ptype, fid = DATA_HEADER.unpack_from(out, pos)
        assert ptype == T.FILE_SYNC_DATA
        packets.append((length, fid, bytes(out[pos + DATA_HEADER_SIZE : pos + length])))
        pos += length
    assert pos == len(out)
    return packets


@pytest.mark.parametrize(
    ("size", "lengths"),
    [
        (0, []),
        (1, [10]),
        (4086, [4095]),
        (4087, [4096]),
        (4088, [4096, 10]),
        (4087 * 2, [4096, 4096]),
        (4087 * 3 + 5, [4096, 4096, 4096, 14]),
    ],
)
def test_frame_data_splits_at_max_payload(size, lengths):
    pair = ConnectionPair().ready(DEFAULT_MAX_PACKET)
    assert pair.client.max_payload == 4087
    pair.upload_accepted(1, size)
    body = bytes(i % 251 for i in range(size))
    out = pair.client.frame_data(1, memoryview(body))
    packets = split_packets(bytes(out))
    assert [p[0] for p in packets] == lengths
    assert all(fid == 1 for _, fid, _ in packets)
    assert b"".join(p[2] for p in packets) == body
    assert tr(pair.server, bytes(out), [DataChunk(1, body)] if body else []) == (
        [DataChunk(1, body)] if body else []
    )
    assert pair.server.sessions.sessions[1].transferred == size


@settings(max_examples=60, deadline=None)
@given(
    proposal=st.sampled_from([4096, 4097, 5000, 8192, 65536]),
    sizes=st.lists(st.integers(0, 20_000), min_size=1, max_size=4),
)
def test_frame_data_property(proposal, sizes):
    pair = ConnectionPair().ready(proposal)
    step = proposal - DATA_HEADER_SIZE
    assert pair.client.max_payload == step
    pair.upload_accepted(1, sum(sizes))
    sent = b""
    for n, size in enumerate(sizes):
        body = bytes([n]) * size
        out = pair.client.frame_data(1, memoryview(body))
        packets = split_packets(bytes(out))
        assert all(length <= proposal for length, _, _ in packets)
        assert all(length == proposal for length, _, _ in packets[:-1])
        assert len(packets) == -(-size // step)
        assert b"".join(p[2] for p in packets) == body
        sent += body
        events = pair.server.feed(bytes(out))
        assert b"".join(e.data for e in events) == body
    assert pair.server.sessions.sessions[1].transferred == len(sent)
    pair.c2s(m.FileSyncCheckHash(1, DIGEST))


def test_data_header_then_payload(pair):
    pair.upload_accepted(1, 5)
    header = pair.client.data_header(1, 5)
    assert header == DATA_HEADER.pack(DATA_HEADER_SIZE + 5, T.FILE_SYNC_DATA, 1)
    assert tr(pair.server, header + b"hello", [DataChunk(1, b"hello")]) == [DataChunk(1, b"hello")]


# -- sticky ERROR ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        HEADER.pack(1 << 30, T.PING),
        HEADER.pack(HEADER_SIZE, 200),
        encode(m.FileSyncCancel(3)),
        data_packet(9, b"x"),
        HEADER.pack(HEADER_SIZE + 1, T.PING) + b"\x00",
    ],
    ids=["too-large", "unknown-type", "unknown-file", "unknown-data", "malformed"],
)
def test_connection_stays_failed(pair, bad):
    pair.upload_accepted(1, 10)
    good = encode(m.Ping(1, False))
    with pytest.raises(RemoteProtocolError):
        pair.server.receive(memoryview(good + bad + good))
    assert_broken(pair.server)
    assert_broken(pair.server)


def test_feed_keeps_partial_packets(pair):
    packet = pair.client.send(m.StatRequest(1, "a/b"))
    assert pair.server.feed(packet[:3]) == []
    assert pair.server.feed(packet[3:-1]) == []
    assert pair.server.feed(packet[-1:] + packet[:2]) == [m.StatRequest(1, "a/b")]
    assert bytes(pair.server._pending) == packet[:2]


# -- a random walk of legal moves --------------------------------------------------------------


Move = tuple[str, int, Any]
"""``("send", file_id, message)`` or ``("stream", file_id, nbytes)``; the sender is the role
that may send it."""


def legal_moves(pair: ConnectionPair) -> list[tuple[Role, Move]]:
    """Every move the protocol allows now, with the role that makes it."""
    c = pair.client
    C, S = Role.CLIENT, Role.SERVER
    fid = next(i for i in range(1, 100) if i not in c.sessions.sessions)
    rid = next(i for i in range(1, 100) if i not in c.requests.pending)
    entry = m.FileEntry(2500, 1, 0, 0, DIGEST, "p")
    moves: list[tuple[Role, Move]] = [
        (C, ("send", fid, m.FileSyncInit(fid, 3000, 0, 0, 0, None, "p"))),
        (C, ("send", fid, m.DownloadRequest(fid, 0, None, "p"))),
        (C, ("send", 0, m.StatRequest(rid, "p"))),
        (C, ("send", 0, m.ListRequest(rid, 10, "", ""))),
        (C, ("send", 0, m.DeleteRequest(rid, 1, "p"))),
        (S, ("send", 0, m.Ping(rid, True))),
    ]
    replies = {
        m.StatResponse: lambda r: [m.StatResponse(r, m.LookupStatus.NOT_FOUND, "", None)],
        m.ListResponse: lambda r: [m.ListResponse(r, m.LookupStatus.OK, False, "", ())],
        m.DeleteResponse: lambda r: [m.DeleteResponse(r, m.LookupStatus.OK, 1, "")],
        m.SubscribeResponse: lambda r: [
            m.SubscribeResponse(r, m.LookupStatus.OK, 5, ""),
            m.SubscribeResponse(r, m.LookupStatus.NOT_FOUND, 0, "no"),
        ],
    }
    for req, kind in c.requests.pending.items():
        moves += [(S, ("send", 0, reply)) for reply in replies[kind](req)]
    if c.subscribed:
        moves.append((S, ("send", 0, m.ChangeNotification(False, entry))))
    elif m.SubscribeResponse not in c.requests.pending.values():
        moves.append((C, ("send", 0, m.SubscribeRequest(rid, 0))))
    for fid, session in c.sessions.sessions.items():
        phase, left = session.phase, session.size - session.transferred
        moves.append((S, ("send", fid, m.Error(ErrorCode.INTERNAL, fid, "x"))))
        if phase is Phase.AWAIT_INIT_RESPONSE:
            moves += [
                (S, ("send", fid, m.FileSyncInitResponse(fid, st, 0, 0, ""))) for st in m.InitStatus
            ]
        elif phase is Phase.UPLOADING:
            moves.append((C, ("send", fid, m.FileSyncCancel(fid))))
            if left:
                moves.append((C, ("stream", fid, min(left, 1500))))
            else:
                moves.append((C, ("send", fid, m.FileSyncCheckHash(fid, DIGEST))))
        elif phase is Phase.AWAIT_HASH_RESULT:
            moves += [
                (S, ("send", fid, m.FileSyncCheckHashResponse(fid, st, DIGEST)))
                for st in m.HashStatus
            ]
        elif phase is Phase.AWAIT_RETRY:
            moves.append((S, ("send", fid, m.FileSyncRetryUpload(fid, 1))))
        elif phase is Phase.AWAIT_FINISH:
            moves.append((S, ("send", fid, m.FileSyncFinish(fid, 1))))
        elif phase is Phase.AWAIT_DOWNLOAD_RESPONSE:
            moves.append(
                (S, ("send", fid, m.DownloadResponse(fid, m.LookupStatus.OK, 0, "", entry)))
            )
            moves.append(
                (S, ("send", fid, m.DownloadResponse(fid, m.LookupStatus.NOT_FOUND, 0, "", None)))
            )
        elif phase is Phase.DOWNLOADING:
            if left:
                moves.append((S, ("stream", fid, min(left, 2000))))
            else:
                moves.append((S, ("send", fid, m.FileSyncCheckHash(fid, DIGEST))))
        elif phase is Phase.AWAIT_VERDICT:
            moves += [
                (C, ("send", fid, m.FileSyncCheckHashResponse(fid, st, DIGEST)))
                for st in m.HashStatus
            ]
    return moves


@settings(max_examples=60, deadline=None)
@given(choices=st.lists(st.integers(0, 1000), min_size=1, max_size=30))
def test_random_walk_of_legal_moves(choices):
    """Any sequence of legal moves is accepted by the peer, parsed the same three ways, and
    leaves both ends agreeing on every session and request."""
    pair = ConnectionPair().ready(DEFAULT_MAX_PACKET)
    for choice in choices:
        moves = legal_moves(pair)
        role, (kind, fid, what) = moves[choice % len(moves)]
        sender = pair.client if role is Role.CLIENT else pair.server
        if kind == "stream":
            pair.stream(sender, fid, bytes([fid]) * what)
        else:
            assert pair.deliver(sender, what) == [what]
        pair.assert_agree()
        assert pair.client.phase is pair.server.phase is ConnPhase.READY


# -- packets crossing a session-level Error ----------------------------------------------------


@pytest.mark.parametrize("direction", ["server-ends-upload", "client-ends-download"])
def test_packets_crossing_a_session_error_are_not_fatal(pair, direction):
    pair.upload_accepted(1, 100)
    pair.download_started(2, 100)
    pair.upload_accepted(3, 10)
    if direction == "server-ends-upload":
        ender, other, fid = pair.server, pair.client, 1
    else:
        ender, other, fid = pair.client, pair.server, 2
    in_flight = other.frame_data(fid, memoryview(b"x" * 40))  # already on the wire
    error = ender.send(m.Error(ErrorCode.INTERNAL, fid, "giving up on this one"))
    assert other.feed(error) == [m.Error(ErrorCode.INTERNAL, fid, "giving up on this one")]
    ender.receive(memoryview(bytes(in_flight)))
    assert ender.phase is ConnPhase.READY
    pair.stream(pair.client, 3, b"0123456789")


@pytest.mark.parametrize("sink", [False, True], ids=["events", "sink"])
def test_the_rest_of_a_payload_for_a_session_this_side_just_ended_is_dropped(pair, sink):
    """A data packet half here when this side ends its session by an Error: the other half is
    as stale as the packets that follow, and must not surface for the ended file id."""
    pair.upload_accepted(1, 100)
    pair.upload_accepted(3, 10)
    if sink:
        pair.server.attach_sink(1, ViewSink(memoryview(bytearray(100))))
    packet = bytes(pair.client.frame_data(1, memoryview(b"x" * 40)))
    half = HEADER_SIZE + 4 + 20
    first = materialize(pair.server.feed(packet[:half]))
    assert first == ([] if sink else [DataChunk(1, b"x" * 20)])
    pair.client.feed(pair.server.send(m.Error(ErrorCode.INTERNAL, 1, "giving up")))
    assert pair.server.feed(packet[half:]) == []
    assert pair.server.phase is ConnPhase.READY
    pair.stream(pair.client, 3, b"0123456789")  # the connection goes on
