"""zstd payloads in the sans-IO core (docs/PROTOCOL.md 5.14): two ``FSConnection`` ends that
agreed on compression carry files byte for byte, whatever the chunks and packet size, and a
receiver refuses every corrupt stream (flipped bits, a truncated frame, a zip bomb, more wire
bytes than the size allows) with a protocol error before a wrong byte reaches its sink."""

from __future__ import annotations

import contextlib
import os

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from common import messages as m
from common.codec import DATA_HEADER, encode
from common.compression import WORTH, wire_limit
from common.connection import DataChunk, FSConnection, ViewSink
from common.digest import digest_of
from common.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from common.limits import ANY_VERSION, MAGIC, PROTOCOL_VERSION
from common.state import Role

ZSTD = m.HandshakeFlags.ZSTD
PZ = m.PayloadFlags.ZSTD
LOG_TEXT = b"".join(b"2026-12-07 10:%02d:%02d INFO request %d done\n" % (i // 60 % 60, i % 60, i)
                    for i in range(5000))  # fmt: skip


def pair(max_packet: int = 1 << 20, *, offer: bool = True,
         agree: bool = True) -> tuple[FSConnection, FSConnection]:  # fmt: skip
    """A client and a server end after a handshake (compression as asked)."""
    client = FSConnection(Role.CLIENT, max_packet_limit=max_packet)
    server = FSConnection(Role.SERVER, max_packet_limit=max_packet)
    hello = m.VersionHandshake(MAGIC, PROTOCOL_VERSION, max_packet, "c", "s", b"",
                               ZSTD if offer else 0)  # fmt: skip
    server.feed(client.send(hello))
    answer = m.VersionHandshakeResponse(
        m.HandshakeStatus.OK,
        PROTOCOL_VERSION,
        max_packet,
        0,
        bytes(16),
        64,
        "",
        ZSTD if offer and agree else 0,
    )
    client.feed(server.send(answer))  # fmt: skip
    return client, server


def received(events: list) -> bytes:
    return b"".join(bytes(e.data) for e in events if isinstance(e, DataChunk))


def feed_in(conn: FSConnection, wire: bytes, step: int) -> list:
    events = []
    for pos in range(0, len(wire), step):
        events += conn.feed(wire[pos : pos + step])
    return events


def open_upload(client: FSConnection, server: FSConnection, size: int, flags: int = PZ) -> None:
    server.feed(client.send(m.FileSyncInit(1, size, 0, 0o644, ANY_VERSION, None, "f", flags)))
    client.feed(server.send(m.FileSyncInitResponse(1, m.InitStatus.ACCEPTED, 0, 0, "")))


def data_packets(file_id: int, payload: bytes, step: int = 4000) -> bytes:
    """Raw FileSyncData packets, as a peer that ignores the core's rules would send them."""
    return b"".join(
        DATA_HEADER.pack(9 + len(piece), m.PacketType.FILE_SYNC_DATA, file_id) + piece
        for piece in (payload[i : i + step] for i in range(0, max(len(payload), 1), step))
    )


@settings(max_examples=40, deadline=None)
@given(
    data=st.one_of(
        st.just(b""),
        st.just(LOG_TEXT),
        st.binary(max_size=20_000),
        st.integers(1, 300_000).map(lambda n: (b"abc" * n)[:n]),
    ),
    chunk=st.integers(1, 70_000),
    step=st.integers(1, 9000),
    max_packet=st.sampled_from([4096, 65536, 1 << 20]),
)
def test_an_upload_in_a_compressed_session_arrives_byte_for_byte(data, chunk, step, max_packet):
    client, server = pair(max_packet)
    open_upload(client, server, len(data))
    wire = b"".join(client.frame_data(1, memoryview(data)[i : i + chunk])
                    for i in range(0, len(data), chunk))  # fmt: skip
    wire += client.send(m.FileSyncCheckHash(1, digest_of(data)))
    events = feed_in(server, wire, step)
    assert received(events) == data
    assert isinstance(events[-1], m.FileSyncCheckHash)
    assert server.coding.payload[0] == client.coding.payload[1] == len(data)


@pytest.mark.parametrize("size", [0, 1, 4087, 4096, 131_072, 1 << 20])
def test_a_compressed_download_fills_the_sink_exactly(size):
    """The server's side sends, the client's side decompresses into a sink (as the reference
    client and server do), sizes around the packet and zstd's block included."""
    data = (LOG_TEXT * (size // len(LOG_TEXT) + 1))[:size]
    client, server = pair(65536)
    target = bytearray(size)
    client.attach_sink(3, ViewSink(memoryview(target)))
    server.feed(client.send(m.DownloadRequest(3, 0, None, "f", PZ)))
    entry = m.FileEntry(size, 1, 0, 0o644, digest_of(data), "f")
    wire = server.send(m.DownloadResponse(3, m.LookupStatus.OK, 0, "", entry, PZ))
    wire += server.frame_data(3, memoryview(data)) + server.send(
        m.FileSyncCheckHash(3, entry.digest)
    )
    events = feed_in(client, wire, 1500)
    assert bytes(target) == data
    assert isinstance(events[-1], m.FileSyncCheckHash)
    if size >= 4096:
        assert server.tx_bytes[m.PacketType.FILE_SYNC_DATA] < size * WORTH


def test_a_retry_starts_a_new_stream():
    client, server = pair()
    open_upload(client, server, len(LOG_TEXT))
    wire = client.frame_data(1, memoryview(LOG_TEXT))
    wire += client.send(m.FileSyncCheckHash(1, bytes(16)))
    assert received(server.feed(wire)) == LOG_TEXT
    for msg in (m.FileSyncCheckHashResponse(1, m.HashStatus.MISMATCH, bytes(16)),
                m.FileSyncRetryUpload(1, 1)):  # fmt: skip
        client.feed(server.send(msg))
    wire = client.frame_data(1, memoryview(LOG_TEXT)) + client.send(
        m.FileSyncCheckHash(1, b"x" * 16)
    )
    assert received(server.feed(wire)) == LOG_TEXT


def refused(server: FSConnection, wire: bytes) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as caught:
        server.feed(wire)
    return caught.value


def test_flipped_bits_are_a_protocol_error():
    client, server = pair()
    open_upload(client, server, len(LOG_TEXT))
    frame = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(LOG_TEXT))
    frame[len(frame) // 2] ^= 0x10
    error = refused(server, data_packets(1, bytes(frame)))
    assert error.code is ErrorCode.MALFORMED
    assert "corrupt compressed payload" in error.message


def test_a_truncated_frame_cannot_be_checked():
    client, server = pair()
    open_upload(client, server, len(LOG_TEXT))
    frame = zstandard.ZstdCompressor(write_checksum=True).compress(LOG_TEXT)
    server.feed(data_packets(1, frame[: len(frame) // 2]))
    error = refused(server, encode(m.FileSyncCheckHash(1, digest_of(LOG_TEXT))))
    assert error.code is ErrorCode.UNEXPECTED_PACKET
    assert f"of {len(LOG_TEXT)} bytes" in error.message


def test_a_zip_bomb_stops_at_the_declared_size():
    """8 KiB that decompress to 256 MiB, for a file of 100,000 bytes (so within the wire
    bytes its size allows): refused once the output would pass the size, and what was made
    before never more than the size."""
    client, server = pair()
    size = 100_000
    open_upload(client, server, size)
    pieces: list[int] = []
    server.attach_sink(1, ViewSink(memoryview(bytearray(size))))
    bomb = zstandard.ZstdCompressor(level=19).compress(bytes(256 << 20))
    assert len(bomb) < wire_limit(size)
    original = server._deliver
    server._deliver = lambda data: (pieces.append(len(data)), original(data))  # type: ignore[method-assign]
    error = refused(server, data_packets(1, bomb, 60_000))
    assert error.code is ErrorCode.LIMIT_EXCEEDED
    assert "past its declared size" in error.message
    assert sum(pieces) <= size


def test_a_stream_of_empty_frames_is_cut_at_the_wire_limit():
    client, server = pair()
    open_upload(client, server, 100)
    empty = zstandard.ZstdCompressor(write_checksum=True).compress(b"")
    frames = empty * (wire_limit(100) // len(empty) + 2)
    error = refused(server, data_packets(1, frames))
    assert error.code is ErrorCode.LIMIT_EXCEEDED
    assert "compressed bytes exceed" in error.message


def test_flags_without_the_agreement_are_malformed():
    client, server = pair(agree=False)
    assert not client.coding.agreed and not server.coding.agreed
    with pytest.raises(LocalProtocolError, match="without zstd"):
        client.send(m.FileSyncInit(1, 5, 0, 0, ANY_VERSION, None, "f", PZ))
    sneaked = encode(m.FileSyncInit(1, 5, 0, 0, ANY_VERSION, None, "f", PZ))
    assert refused(server, sneaked).code is ErrorCode.MALFORMED


def test_an_agreement_the_client_did_not_offer_is_malformed():
    client = FSConnection(Role.CLIENT)
    client.send(m.VersionHandshake(MAGIC, PROTOCOL_VERSION, 1 << 20, "c", "s", b""))
    answer = m.VersionHandshakeResponse(m.HandshakeStatus.OK, 1, 1 << 20, 0, bytes(16), 64, "",
                                        ZSTD)  # fmt: skip
    with pytest.raises(RemoteProtocolError, match="did not offer"):
        client.feed(encode(answer))


def test_a_compressed_download_must_have_been_asked_for():
    client, _server = pair()
    client.send(m.DownloadRequest(3, 0, None, "f"))
    entry = m.FileEntry(5, 1, 0, 0o644, bytes(16), "f")
    with pytest.raises(RemoteProtocolError, match="not asked for"):
        client.feed(encode(m.DownloadResponse(3, m.LookupStatus.OK, 0, "", entry, PZ)))


def a_batch(n: int = 40) -> m.SmallFileBatch:
    files = tuple(m.SmallFile(0, 0o644, ANY_VERSION, digest_of(LOG_TEXT[:3000]), f"d/{i}.log",
                              LOG_TEXT[i * 10 : i * 10 + 3000]) for i in range(n))  # fmt: skip
    return m.SmallFileBatch(9, files)


def test_a_batch_travels_compressed_and_arrives_as_itself():
    client, server = pair()
    client.coding.batches = True
    batch = a_batch()
    wire = client.send(batch)
    assert wire[4] == m.PacketType.SMALL_FILE_BATCH_ZSTD
    assert len(wire) < len(encode(batch)) * WORTH
    assert server.feed(wire) == [batch]


def test_a_batch_that_does_not_shrink_goes_as_it_is():
    client, server = pair()
    client.coding.batches = True
    noise = os.urandom(3000)
    batch = m.SmallFileBatch(2, (m.SmallFile(0, 0o644, ANY_VERSION, digest_of(noise), "r", noise),))
    wire = client.send(batch)
    assert wire[4] == m.PacketType.SMALL_FILE_BATCH
    assert server.feed(wire) == [batch]


def batch_packet(size: int, frame: bytes) -> bytes:
    return encode(m.SmallFileBatchZstd(9, size, frame))


@pytest.mark.parametrize(
    ("case", "code", "text"),
    [
        ("not agreed", ErrorCode.MALFORMED, "without zstd"),
        ("too big", ErrorCode.MALFORMED, "exceeds"),
        ("short", ErrorCode.MALFORMED, "not the"),
        ("bomb", ErrorCode.LIMIT_EXCEEDED, "past its declared size"),
        ("corrupt", ErrorCode.MALFORMED, "corrupt compressed payload"),
    ],
)
def test_a_bad_compressed_batch_is_refused(case, code, text):
    _client, server = pair(agree=case != "not agreed")
    files = encode(a_batch())[9:]
    frame = zstandard.ZstdCompressor(write_checksum=True).compress(files)
    size = len(files)
    if case == "too big":
        size = 200_000
    elif case == "short":
        size += 10
    elif case == "bomb":
        frame = zstandard.ZstdCompressor(level=19).compress(bytes(50 << 20))
    elif case == "corrupt":
        frame = frame[:-1] + bytes([frame[-1] ^ 1])
    error = refused(server, batch_packet(size, frame))
    assert error.code is code
    assert text in error.message


def gauged(
    level: int, *, waited: float, busy: float, steps: int = 1, buffered: int | list[int] = 0
) -> tuple[int, bool, bool, bool]:
    """A ``LinkGauge`` after *steps* steps in each of which the sender waited for the socket
    *waited* of the time and compressed *busy* of it, *buffered* bytes left in the
    transport (one figure for every step, or a list: one step each): (level, a new frame
    due, still compressing, probing the link next)."""
    from fsclient.compress import TUNE_STEP, CompressSetting, LinkGauge, PayloadPolicy

    client, _server = pair()
    policy = PayloadPolicy(CompressSetting("auto", level), client, local=False)
    gauge = LinkGauge(policy, compressed=True)
    changed = False
    queued = buffered if isinstance(buffered, list) else [buffered] * steps
    for left in queued:
        gauge.started -= 1.0  # a step that took a second
        gauge.waited, gauge.busy = waited, busy
        changed = gauge.retune(TUNE_STEP, left)
    return client.coding.level, changed, policy.active, policy.probe


def test_auto_climbs_while_the_link_holds_it_back():
    from fsclient.compress import TOP_LEVEL

    assert gauged(2, waited=0.5, busy=0.2) == (3, True, True, False)
    # no wait yet, but the queue for the link grew from one window to the next: it fills
    # long before the sender ever waits (the first window only takes its measure)
    assert gauged(2, waited=0.0, busy=0.2, buffered=4 << 20) == (2, False, True, False)
    assert gauged(2, waited=0.0, busy=0.2, buffered=[1 << 20, 4 << 20]) == (3, True, True, False)
    # a queue that stays as it was: the link keeps up with this level
    assert gauged(2, waited=0.0, busy=0.2, buffered=[4 << 20] * 3) == (2, False, True, False)
    assert gauged(TOP_LEVEL, waited=0.5, busy=0.2) == (TOP_LEVEL, False, True, False)


def test_auto_sets_the_level_of_batches_by_what_waits_for_the_link():
    """Small-file batches: more than two batches' bytes waiting for the link raise the level,
    less than one lowers it again (never below the default); ``BATCH_STEP`` batches apart."""
    from common.compression import DEFAULT_LEVEL
    from fsclient.compress import BATCH_STEP, TOP_LEVEL, CompressSetting, PayloadPolicy

    client, _server = pair()
    policy = PayloadPolicy(CompressSetting("auto"), client, local=False)
    levels = []
    for backlog in [900_000] * (2 * BATCH_STEP * TOP_LEVEL) + [0] * (2 * BATCH_STEP * TOP_LEVEL):
        policy.batch_sent(backlog, 100_000)
        levels.append(client.coding.level)
    assert max(levels) == TOP_LEVEL and levels[-1] == DEFAULT_LEVEL
    assert levels[BATCH_STEP - 2] == DEFAULT_LEVEL and levels[BATCH_STEP - 1] == DEFAULT_LEVEL + 1
    fixed = PayloadPolicy(CompressSetting.parse("4"), pair()[0], local=False)
    for _ in range(4 * BATCH_STEP):
        fixed.batch_sent(900_000, 100_000)
    assert fixed.conn.coding.level == 4  # a level given by hand stays


def test_the_backlog_counts_what_the_socket_still_holds():
    """``unsent``: bytes the kernel holds for a peer that does not read (a stuck link)."""
    import socket

    from common.sockqueues import unsent

    with socket.create_server(("127.0.0.1", 0)) as listener:
        sender = socket.create_connection(listener.getsockname())
        peer, _ = listener.accept()
        with sender, peer:
            assert unsent(sender.fileno()) == 0
            sender.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while True:
                    sender.send(bytes(1 << 16))
            assert unsent(sender.fileno()) > 0
    assert unsent(-1) == 0


def test_auto_comes_down_while_compression_holds_it_back_twice():
    assert gauged(5, waited=0.0, busy=0.9) == (5, False, True, False)  # once: buffers fill
    assert gauged(5, waited=0.0, busy=0.9, steps=2) == (4, True, True, False)
    assert gauged(5, waited=0.1, busy=0.5, steps=3) == (5, False, True, False)  # neither


def test_auto_probes_the_link_at_level_1_and_keeps_the_faster_way():
    from fsclient.compress import TUNE_STEP

    assert gauged(1, waited=0.0, busy=0.95, steps=2) == (1, False, True, True)
    client, _server = pair()
    from fsclient.compress import CompressSetting, PayloadPolicy

    policy = PayloadPolicy(CompressSetting("auto"), client, local=False)
    policy.probe, policy.rate_compressed = True, 500e6
    assert policy.upload_flags("big.log", TUNE_STEP, lambda: LOG_TEXT) == 0  # the probe: plain
    policy.measured(100e6)  # slower than compressing: keep compressing
    assert policy.active and not policy.probe
    policy.probe = True
    policy.measured(900e6)  # faster: stop
    assert not policy.active and not client.coding.batches


def test_several_frames_make_one_stream():
    """A level change ends the frame and starts another: the receiver reads them as one."""
    client, server = pair()
    open_upload(client, server, 2 * len(LOG_TEXT))
    wire = client.frame_data(1, memoryview(LOG_TEXT)) + client.new_frame(1)
    client.coding.level = 9
    wire += client.frame_data(1, memoryview(LOG_TEXT)) + client.send(
        m.FileSyncCheckHash(1, bytes(16))
    )
    events = server.feed(wire)
    assert received(events) == LOG_TEXT * 2
    assert isinstance(events[-1], m.FileSyncCheckHash)


def test_a_frame_that_asks_for_a_huge_window_is_refused():
    """A frame may not make its receiver hold more than 8 MiB of window (zstd level 19's):
    a header claiming 128 MiB would cost the server that much for every such upload."""
    client, server = pair()
    open_upload(client, server, 1 << 20)
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=27)
    packer = zstandard.ZstdCompressor(compression_params=params).compressobj()
    frame = packer.compress(LOG_TEXT) + packer.flush()
    error = refused(server, data_packets(1, frame))
    assert error.code is ErrorCode.MALFORMED
    assert "corrupt compressed payload" in error.message


def test_a_compressed_batch_counts_its_files_once_decompressed():
    client, server = pair()
    client.coding.batches = True
    wire = client.send(a_batch())
    assert wire[4] == m.PacketType.SMALL_FILE_BATCH_ZSTD
    server.feed(wire)
    assert server.coding.payload[0] == client.coding.payload[1] > len(wire)


def test_a_refusal_may_not_say_zstd_without_the_agreement():
    client, _server = pair(agree=False)
    client.send(m.DownloadRequest(3, 0, None, "f"))
    refusal = m.DownloadResponse(3, m.LookupStatus.NOT_FOUND, 0, "", None, PZ)
    assert refused(client, encode(refusal)).code is ErrorCode.MALFORMED


def test_a_checked_session_lets_its_decompressor_go():
    client, server = pair()
    open_upload(client, server, len(LOG_TEXT))
    wire = client.frame_data(1, memoryview(LOG_TEXT))
    server.feed(wire)
    assert server.sessions.sessions[1].coder is not None
    server.feed(client.send(m.FileSyncCheckHash(1, digest_of(LOG_TEXT))))
    assert server.sessions.sessions[1].coder is None
