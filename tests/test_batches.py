"""Small-file batches in the sans-IO core: ``SmallFileBatch`` (24) and its response (25).

Both ends run the same rules (``common.batches``): a batch only on a connection that agreed on
packets of at least MIN_BATCH_MAX_PACKET, 1..MAX_BATCH_FILES files of at most
MAX_BATCH_FILE_BYTES each, a packet of at most MAX_BATCH_PACKET, at most MAX_BATCHES_IN_FLIGHT
outstanding, and exactly one result per file in the reply.
"""

from __future__ import annotations

import struct

import pytest

from common import messages as m
from common.codec import HEADER, encode
from common.connection import FSConnection
from common.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from common.limits import (
    ANY_VERSION,
    DIGEST_SIZE,
    MAGIC,
    MAX_BATCH_FILE_BYTES,
    MAX_BATCH_FILES,
    MAX_BATCH_PACKET,
    MAX_BATCHES_IN_FLIGHT,
    MIN_BATCH_MAX_PACKET,
    PROTOCOL_VERSION,
)
from common.state import Role
from tests.test_connection import tr, tr_error

T = m.PacketType
S = m.FileStatus
DIGEST = bytes(range(DIGEST_SIZE))
BIG = 1 << 20


def pair(max_packet: int = BIG) -> tuple[FSConnection, FSConnection]:
    """A client and a server after a handshake that agreed on *max_packet*."""
    client = FSConnection(Role.CLIENT, max_packet_limit=max(max_packet, 4096))
    server = FSConnection(Role.SERVER, max_packet_limit=max(max_packet, 4096))
    hello = m.VersionHandshake(MAGIC, PROTOCOL_VERSION, max_packet, "c", "s", b"")
    server.receive(memoryview(client.send(hello)))
    agreed = server.negotiate(max_packet)
    answer = m.VersionHandshakeResponse(m.HandshakeStatus.OK, PROTOCOL_VERSION, agreed, 0,
                                        bytes(16), 4096, "")  # fmt: skip
    client.receive(memoryview(server.send(answer)))
    return client, server


def small(n: int, size: int = 10, path: str = "") -> m.SmallFile:
    return m.SmallFile(0, 0o644, ANY_VERSION, DIGEST, path or f"d/f{n}", bytes(size))


def batch(rid: int, count: int, size: int = 10) -> m.SmallFileBatch:
    return m.SmallFileBatch(rid, tuple(small(n, size) for n in range(count)))


def reply(rid: int, count: int) -> m.SmallFileBatchResponse:
    return m.SmallFileBatchResponse(rid, tuple(m.FileResult(S.STORED, n, "") for n in range(count)))


def test_a_batch_and_its_reply_pass_both_ends():
    client, server = pair()
    msg = batch(1, 3)
    assert tr(server, client.send(msg), [msg]) == [msg]
    assert server.batches.pending == {1: 3} and client.batches.pending == {1: 3}
    answer = reply(1, 3)
    assert tr(client, server.send(answer), [answer]) == [answer]
    assert not client.batches.pending and not server.batches.pending
    assert not client.requests.pending and not server.requests.pending


def test_a_batch_needs_a_large_enough_packet_size():
    client, server = pair(max_packet=MIN_BATCH_MAX_PACKET - 1)
    with pytest.raises(LocalProtocolError, match="at least"):
        client.send(batch(1, 1))
    packet = encode(batch(1, 1))
    tr_error(server, packet, ErrorCode.UNEXPECTED_PACKET)


def test_an_empty_batch_is_refused():
    client, server = pair()
    with pytest.raises(LocalProtocolError, match="without files"):
        client.send(m.SmallFileBatch(1, ()))
    tr_error(server, encode(m.SmallFileBatch(1, ())), ErrorCode.MALFORMED)


def test_batches_in_flight_are_bounded():
    client, server = pair()
    data = b"".join(client.send(batch(rid, 1)) for rid in range(1, MAX_BATCHES_IN_FLIGHT + 1))
    server.receive(memoryview(data))
    with pytest.raises(LocalProtocolError, match="batches in flight"):
        client.send(batch(999, 1))
    tr_error(server, encode(batch(999, 1)), ErrorCode.LIMIT_EXCEEDED)
    # an answered batch makes room again
    client.receive(memoryview(encode(reply(1, 1))))
    client.send(batch(1000, 1))


def test_the_reply_must_carry_one_result_per_file():
    client, server = pair()
    server.receive(memoryview(client.send(batch(7, 3))))
    with pytest.raises(LocalProtocolError, match="2 results for 3 files"):
        server.send(reply(7, 2))
    tr_error(client, encode(reply(7, 4)), ErrorCode.UNEXPECTED_PACKET)


def test_a_reply_to_no_batch_is_refused():
    client, _ = pair()
    tr_error(client, encode(reply(5, 1)), ErrorCode.UNEXPECTED_PACKET)


def test_only_the_client_sends_batches_and_only_the_server_answers():
    client, server = pair()
    with pytest.raises(LocalProtocolError):
        server.send(batch(1, 1))
    with pytest.raises(LocalProtocolError):
        client.send(reply(1, 1))
    tr_error(client, encode(batch(1, 1)), ErrorCode.UNEXPECTED_PACKET)
    tr_error(server, encode(reply(1, 1)), ErrorCode.UNEXPECTED_PACKET)


def test_a_batch_before_the_handshake_is_refused():
    server = FSConnection(Role.SERVER)
    tr_error(server, encode(batch(1, 1)), ErrorCode.UNEXPECTED_PACKET)


def test_a_packet_over_the_batch_limit_is_refused_from_its_header():
    client, server = pair()
    files = tuple(small(n, MAX_BATCH_FILE_BYTES) for n in range(3))
    too_big = m.SmallFileBatch(1, files)
    with pytest.raises(LocalProtocolError, match="exceeds"):
        client.send(too_big)
    packet = encode(too_big)
    assert len(packet) > MAX_BATCH_PACKET
    tr_error(server, packet, ErrorCode.PACKET_TOO_LARGE, at=HEADER.size - 1)


def test_file_count_and_size_limits_are_checked_by_the_codec():
    _, server = pair()
    body = bytearray(encode(batch(1, 1))[HEADER.size :])
    struct.pack_into(">H", body, 4, MAX_BATCH_FILES + 1)  # the record count
    tr_error(server, HEADER.pack(HEADER.size + len(body), T.SMALL_FILE_BATCH) + body,
             ErrorCode.MALFORMED)  # fmt: skip
    _, server = pair()
    record = encode(batch(1, 1))[HEADER.size :]
    data_len_at = len(record) - 10 - 4  # the u32 length before the 10 data bytes
    body = bytearray(record)
    struct.pack_into(">I", body, data_len_at, MAX_BATCH_FILE_BYTES + 1)
    tr_error(server, HEADER.pack(HEADER.size + len(body), T.SMALL_FILE_BATCH) + body,
             ErrorCode.MALFORMED)  # fmt: skip


@pytest.mark.parametrize("cut", [1, 5, 10, 11])
def test_a_record_cut_short_is_malformed(cut):
    """The lengths inside must add up to the packet's: a data length that runs past the end,
    or bytes left over after the last record, end the connection."""
    _, server = pair()
    body = encode(batch(1, 2))[HEADER.size : -cut]
    tr_error(server, HEADER.pack(HEADER.size + len(body), T.SMALL_FILE_BATCH) + body,
             ErrorCode.MALFORMED)  # fmt: skip


def test_trailing_bytes_after_the_records_are_malformed():
    _, server = pair()
    body = encode(batch(1, 2))[HEADER.size :] + b"\x00"
    tr_error(server, HEADER.pack(HEADER.size + len(body), T.SMALL_FILE_BATCH) + body,
             ErrorCode.MALFORMED)  # fmt: skip


def test_the_largest_reply_fits_the_smallest_packet_a_batch_may_use():
    """Why MIN_BATCH_MAX_PACKET: every result's message is clipped, so a full reply fits."""
    client, server = pair(max_packet=MIN_BATCH_MAX_PACKET)
    msg = batch(1, MAX_BATCH_FILES, size=0)
    server.receive(memoryview(client.send(msg)))
    long = "x" * 10_000
    answer = m.SmallFileBatchResponse(
        1, tuple(m.FileResult(S.INVALID_PATH, 0, long) for _ in range(MAX_BATCH_FILES))
    )
    packet = server.send(answer)
    assert len(packet) <= MIN_BATCH_MAX_PACKET
    [got] = client.receive(memoryview(packet))[0]
    assert len(got.results) == MAX_BATCH_FILES


def test_unknown_file_status_is_malformed():
    client, server = pair()
    server.receive(memoryview(client.send(batch(1, 1))))
    packet = bytearray(server.send(reply(1, 1)))
    packet[HEADER.size + 4 + 2] = 200  # the first result's status byte
    with pytest.raises(RemoteProtocolError) as info:
        client.receive(memoryview(bytes(packet)))
    assert info.value.code is ErrorCode.MALFORMED
