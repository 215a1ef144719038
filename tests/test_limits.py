"""Acceptance: the server's limits and deadlines, against real servers.

Handshake, idle and packet ("slow loris") timeouts, the largest file, the share quota, the
connection limit and the sessions in flight per connection. The deadlines are checked by a sweep
that runs once a second in every worker, so a connection is closed between *timeout* and
*timeout* + 1 s after the fact. A test fails only well after that (a loaded machine runs a sweep
late, and a passing test never waits for the slack), and what must happen before a deadline
has seconds of margin: a test process stalled for a second breaks none of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from common import messages as m
from common.codec import HEADER, decode_body, encode
from common.connection import DataChunk, FSConnection
from common.digest import digest_of
from common.errors import ErrorCode, RemoteError, StoreFull
from common.limits import ANY_VERSION, MAGIC, NO_FILE, PROTOCOL_VERSION
from common.state import Role
from fsclient import Client
from fsserver.store import Reserved, Store
from tests.conftest import run
from tests.rawclient import Closed, RawClient
from tests.serverproc import ServerProcess, eventually, wait_for

KiB = 1024
MiB = 1024 * KiB
ACTIVE = "fs_connections_active"
"""Summed over the workers (absent before the first connection)."""
SWEEP_EVERY = 1.0
"""The deadline sweep's period in every worker."""
SWEEP_SLACK = 10.0
"""Seconds a deadline may be overshot before a test fails: the once-a-second sweep, plus a
loaded machine's scheduling."""


# -- helpers ---------------------------------------------------------------------------------


def packets(data: bytes) -> list[m.Message]:
    """Every whole packet in *data*, decoded by its header alone; a partial tail is an error."""
    found, pos = [], 0
    while pos < len(data):
        assert len(data) - pos >= HEADER.size, f"partial header at the end of {data!r}"
        length, ptype = HEADER.unpack_from(data, pos)
        assert len(data) - pos >= length, f"partial packet at the end of {data!r}"
        found.append(decode_body(ptype, memoryview(data)[pos + HEADER.size : pos + length]))
        pos += length
    return found


def read_until_closed(socks: list[socket.socket], deadline: float) -> dict[int, bytes]:
    """Read every socket until its EOF; fail if one is still open at *deadline*. Returns
    what each one received, by its index in *socks*."""
    received = {i: b"" for i in range(len(socks))}
    with selectors.DefaultSelector() as sel:
        for i, sock in enumerate(socks):
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ, i)
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"{len(sel.get_map())} of {len(socks)} connections still open at the deadline"
                )
            for key, _ in sel.select(remaining):
                try:
                    chunk = key.fileobj.recv(1 << 16)  # type: ignore[union-attr]
                except BlockingIOError:
                    continue
                if chunk:
                    received[key.data] += chunk
                else:
                    sel.unregister(key.fileobj)
    return received


def still_open(sock: socket.socket) -> bool:
    """Nothing to read and no EOF: the server has not closed *sock*."""
    sock.setblocking(False)  # (with a timeout set, recv would wait for data first)
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return True
    return False


def trickle(raw: RawClient, pieces: Iterator[bytes], every: float, deadline: float
            ) -> tuple[bytes, float, int]:  # fmt: skip
    """Send one piece every *every* seconds until the server closes the connection.

    Returns what the server sent, the seconds from the first piece to the close, and how
    many pieces were sent. Fails if the connection is still open at *deadline*."""
    sock = raw.sock
    received = b""
    sent = 0
    start = time.monotonic()
    next_send = start
    while True:
        now = time.monotonic()
        if now > deadline:
            raise AssertionError(f"still open {now - start:.1f} s after the first piece")
        if now >= next_send:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(next(pieces))
                sent += 1
            next_send += every
        sock.settimeout(max(0.001, min(next_send, deadline) - time.monotonic()))
        try:
            chunk = sock.recv(1 << 16)
        except TimeoutError:
            continue
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return received, time.monotonic() - start, sent
        received += chunk


def the_error(received: bytes) -> m.Error:
    """The connection-level Error that is the last packet the server sent."""
    sent = packets(received)
    assert sent, "the server closed the connection without an Error"
    error = sent[-1]
    assert isinstance(error, m.Error), f"last packet was {error!r}"
    return error


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    """Sockets a test opens; all closed at the end, whatever happens."""
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


@pytest.fixture
def raws() -> Iterator[Callable[..., RawClient]]:
    """RawClients a test opens; all closed at the end, whatever happens."""
    opened: list[RawClient] = []

    def make(*args, **kwargs) -> RawClient:
        raw = RawClient(*args, **kwargs)
        opened.append(raw)
        return raw

    yield make
    for raw in opened:
        raw.close()


# -- handshake timeout -----------------------------------------------------------------------

IDLE_SOCKETS = 200


def test_silent_connections_are_closed_by_the_handshake_timeout_and_honest_clients_served(
    server_factory, sockets, tmp_path
):
    """Issue 5: 200 connections that open and send nothing are closed by the handshake
    timeout, and an honest client still connects."""
    timeout = 5.0  # the honest round trip below (well under a second) must fit before it
    server = server_factory("--workers", "2", "--store-size", "16MiB",
                            "--handshake-timeout", str(timeout),
                            "--max-connections", "1000")  # fmt: skip
    baseline = server.metric_total(ACTIVE)
    assert baseline == 0
    host, port = server.address.rsplit(":", 1)
    for _ in range(IDLE_SOCKETS):
        last_opened = time.monotonic()  # no server clock starts before this
        sockets.append(socket.create_connection((host, int(port)), timeout=10))
    wait_for(lambda: server.metric_total(ACTIVE) == baseline + IDLE_SOCKETS, SWEEP_SLACK,
             "the server to hold every silent connection")  # fmt: skip
    held = time.monotonic()  # every clock has started

    data = os.urandom(100 * KiB)

    async def honest() -> m.FileEntry:
        async with await Client.connect(server.address, client_id="honest") as client:
            assert server.metric_total(ACTIVE) == baseline + IDLE_SOCKETS + 1
            await client.put_bytes(data, "honest/while-busy.bin")
            entry = await client.get("honest/while-busy.bin", tmp_path / "copy.bin")
            assert (tmp_path / "copy.bin").read_bytes() == data
            return entry

    entry = run(honest())
    assert entry.size == len(data)
    open_now = sum(still_open(sock) for sock in sockets)
    assert open_now == IDLE_SOCKETS, (
        f"the honest client was served only after {IDLE_SOCKETS - open_now} silent connections "
        f"were closed (took {time.monotonic() - last_opened:.1f} s of the {timeout:g} s timeout)"
    )

    received = read_until_closed(sockets, held + timeout + SWEEP_SLACK)
    closed_after = time.monotonic() - last_opened
    assert closed_after >= timeout, f"the last closed {closed_after:.2f} s after it opened"
    for i, got in received.items():
        assert packets(got) == [
            m.Error(ErrorCode.TIMEOUT, NO_FILE, f"no handshake within {timeout:g} s")
        ], f"connection {i} got {got!r}"
    wait_for(lambda: server.metric_total(ACTIVE) == baseline, SWEEP_SLACK,
             "fs_connections_active back to its baseline")  # fmt: skip

    async def honest_again() -> list[m.FileEntry]:
        async with await Client.connect(server.address, client_id="honest") as client:
            return await client.ls("honest/")

    assert [e.path for e in run(honest_again())] == ["honest/while-busy.bin"]
    wait_for(lambda: server.metric_total(ACTIVE) == baseline, SWEEP_SLACK,
             "the honest client to leave")  # fmt: skip


# -- idle timeout ----------------------------------------------------------------------------

PING_EVERY = 0.25
"""How often the pinging client pings: far more often than the 2 s idle timeout."""


def test_idle_connection_is_closed_and_a_pinging_client_stays(server_factory, raws):
    """A silent connection is closed once idle for the timeout; one that pings every
    PING_EVERY seconds (a stall of 1.5 s in this test still keeps it under the timeout) lives
    on past the sweep that closed the silent one, and the sweep after it."""
    idle = 2.0
    server = server_factory("--workers", "1", "--store-size", "16MiB",
                            "--idle-timeout", str(idle))  # fmt: skip

    start = time.monotonic()  # before the handshake: the server's clock starts after it
    raw = raws(server.address)
    assert raw.hello is not None and raw.hello.status is m.HandshakeStatus.OK
    idle_error = m.Error(ErrorCode.TIMEOUT, NO_FILE, f"idle for {idle:g} s (clients ping)")

    def raw_closed() -> None:
        """On the wire: the Error, then the end of the connection."""
        error = raw.error_or_close(timeout=idle + SWEEP_SLACK)
        waited = time.monotonic() - start
        assert error == idle_error
        assert waited >= idle, f"closed after {waited:.2f} s of silence"
        with pytest.raises(Closed):
            raw.next_event(timeout=SWEEP_SLACK)

    async def clients() -> None:
        begun = time.monotonic()
        async with (
            await Client.connect(server.address, client_id="silent") as silent,
            await Client.connect(server.address, client_id="pinger") as pinger,
        ):
            stop = asyncio.Event()
            raw_check = asyncio.create_task(asyncio.to_thread(raw_closed))

            async def keep_pinging() -> int:
                pings = 0
                while not stop.is_set():
                    await pinger.ping()
                    pings += 1
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), PING_EVERY)
                return pings

            pinging = asyncio.create_task(keep_pinging())
            await eventually(lambda: silent.proto.failure is not None, idle + SWEEP_SLACK,
                             "the silent client to be disconnected")  # fmt: skip
            closed = time.monotonic()
            assert closed - begun >= idle
            failure = silent.proto.failure
            assert isinstance(failure, RemoteError), failure
            assert failure.code is ErrorCode.TIMEOUT
            assert str(failure) == f"server error {idle_error.code.name}: {idle_error.message}"
            await raw_check

            # the pinger, as old as the silent client, outlives two more sweeps
            await asyncio.sleep(max(0.0, closed + 2 * SWEEP_EVERY - time.monotonic()))
            stop.set()
            pings = await pinging
            lived = time.monotonic() - begun
            assert pings > lived / idle, f"{pings} pings in {lived:.1f} s"
            assert pinger.proto.failure is None
            await pinger.put_bytes(b"still here", "alive.txt")
            assert [e.path for e in await pinger.ls()] == ["alive.txt"]

    run(clients())


class SlowReader:
    """A raw client with a small receive window (no autotuning) that downloads at a set pace."""

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * KiB)
        self.sock.settimeout(10)
        self.sock.connect((host, int(port)))
        self.conn = FSConnection(Role.CLIENT, max_packet_limit=MiB)
        self.send(m.VersionHandshake(MAGIC, PROTOCOL_VERSION, MiB, "slow", "default", b""))
        self.events = self.conn.feed(self.sock.recv(64 * KiB))
        assert [type(e) for e in self.events] == [m.VersionHandshakeResponse], self.events
        self.events.clear()

    def send(self, msg: m.Message) -> None:
        self.sock.sendall(self.conn.send(msg))

    def expect(self, kind: type) -> m.Message:
        while not self.events:
            self.events += self.conn.feed(self.sock.recv(64 * KiB))
        event = self.events.pop(0)
        assert isinstance(event, kind), event
        return event

    def download(self, fid: int, rate: float) -> tuple[bytes, float]:
        """The bytes of the download *fid* (requested already), verified and so told, and
        the seconds it took at *rate* B/s."""
        got, check, received = 0, None, bytearray()
        start = time.monotonic()
        while check is None:
            data = self.sock.recv(256 * KiB)
            assert data, f"the server closed the download after {got} bytes"
            for event in self.conn.feed(data):
                assert not isinstance(event, m.Error), event
                if isinstance(event, DataChunk) and event.file_id == fid:
                    received += event.data
                    got += len(event.data)
                elif isinstance(event, m.FileSyncCheckHash) and event.file_id == fid:
                    check = event
                elif not isinstance(event, m.DownloadResponse):
                    self.events.append(event)
            pace = start + got / rate - time.monotonic()
            if pace > 0:
                time.sleep(pace)
        took = time.monotonic() - start
        assert check.digest == digest_of(received)
        self.send(m.FileSyncCheckHashResponse(fid, m.HashStatus.OK, check.digest))
        return bytes(received), took


def stored(server: ServerProcess, content: bytes, path: str) -> None:
    async def upload() -> None:
        async with await Client.connect(server.address) as client:
            await client.put_bytes(content, path)

    run(upload())


def test_a_client_reading_a_long_download_is_not_idle(server_factory):
    """The client sends nothing while a large download streams to it, yet it is busy: bytes
    it takes off the server's buffers count as activity. Read at about 8 MB/s, the file takes
    several idle timeouts; the kernel's buffers (a few MB) drain well within one."""
    idle = 2.0
    server = server_factory("--workers", "1", "--store-size", "64MiB",
                            "--idle-timeout", str(idle))  # fmt: skip
    content = random.Random(5).randbytes(40 << 20)
    stored(server, content, "big.bin")
    reader = SlowReader(server.address)
    with contextlib.closing(reader.sock):
        reader.send(m.DownloadRequest(1, 0, None, "big.bin"))
        received, took = reader.download(1, 8 << 20)
        assert received == content
        assert took > 2 * idle, f"the download took only {took:.1f} s: not a test of idleness"
        reader.send(m.Ping(7, False))
        assert reader.expect(m.Ping) == m.Ping(7, True)


def test_the_packet_deadline_waits_while_the_server_stops_reading(server_factory):
    """A client half-way through an upload packet also downloads, slowly: the server stops
    reading while its replies wait (back-pressure), so the packet cannot finish meanwhile.
    That is the server's doing, not a slow loris: the packet's clock restarts when it reads
    again, and both transfers complete."""
    server = server_factory("--workers", "1", "--store-size", "64MiB",
                            "--packet-timeout", "1", "--idle-timeout", "60")  # fmt: skip
    content = random.Random(6).randbytes(16 << 20)
    stored(server, content, "big.bin")
    reader = SlowReader(server.address)
    payload = os.urandom(500 * KiB)
    with contextlib.closing(reader.sock):
        reader.send(m.FileSyncInit(3, len(payload), 0, 0o644, ANY_VERSION,
                                   digest_of(payload), "up.bin"))  # fmt: skip
        assert reader.expect(m.FileSyncInitResponse).status is m.InitStatus.ACCEPTED
        reader.send(m.DownloadRequest(1, 0, None, "big.bin"))
        packet = reader.conn.send(m.FileSyncData(3, payload))
        cut = 50 * KiB
        reader.sock.sendall(packet[:cut])  # the rest follows over a slow uplink
        later = threading.Timer(0.5, reader.sock.sendall, (packet[cut:],))
        later.start()
        try:
            received, took = reader.download(1, 2 << 20)
        finally:
            later.join()
        assert received == content and took > 3, f"{took:.1f} s"
        reader.send(m.FileSyncCheckHash(3, digest_of(payload)))
        assert reader.expect(m.FileSyncCheckHashResponse).status is m.HashStatus.OK
        assert isinstance(reader.expect(m.FileSyncFinish), m.FileSyncFinish)


# -- packet timeout (slow loris) -------------------------------------------------------------

PACKET_TIMEOUT = 1.0


@pytest.fixture
def slow_server(server_factory) -> ServerProcess:
    """Only the packet deadline is short: a close can only come from it."""
    return server_factory("--workers", "1", "--store-size", "16MiB",
                          "--packet-timeout", str(PACKET_TIMEOUT),
                          "--idle-timeout", "60")  # fmt: skip


def one_byte_at_a_time(data: bytes) -> Iterator[bytes]:
    """The bytes of *data* one by one; the first piece is the first three bytes."""
    yield data[:3]
    for i in range(3, len(data)):
        yield data[i : i + 1]
    raise AssertionError("the whole packet went out: the trickle was meant to outlast it")


def started_control_packet(raw: RawClient) -> bytes:
    """A StatRequest of 2 KiB, of which a trickle will take minutes."""
    return encode(m.StatRequest(1, "slow/" + "x" * 2000))


def started_data_packet(raw: RawClient) -> bytes:
    """The data packet of an accepted upload: header, then 4000 bytes of payload."""
    raw.send(m.FileSyncInit(7, 100_000, 0, 0o644, ANY_VERSION, None, "slow.bin"))
    reply = raw.expect(m.FileSyncInitResponse)
    assert reply.status is m.InitStatus.ACCEPTED
    return raw.conn.data_header(7, 4000) + os.urandom(4000)


@pytest.mark.parametrize("packet", [started_control_packet, started_data_packet],
                         ids=["control-packet", "data-payload"])  # fmt: skip
def test_a_packet_trickled_byte_by_byte_is_closed_by_the_packet_timeout(slow_server, raws, packet):
    """The deadline is per packet, not per byte: a byte now and then does not extend it."""
    raw = raws(slow_server.address)
    pieces = one_byte_at_a_time(packet(raw))
    deadline = time.monotonic() + PACKET_TIMEOUT + SWEEP_SLACK
    received, took, sent = trickle(raw, pieces, every=0.1, deadline=deadline)
    assert the_error(received) == m.Error(
        ErrorCode.TIMEOUT, NO_FILE, f"a packet took over {PACKET_TIMEOUT:g} s"
    )
    assert took >= PACKET_TIMEOUT - 0.1
    assert sent >= PACKET_TIMEOUT / 0.1 - 1, "the trickle kept going until the deadline"


def test_a_client_that_keeps_finishing_packets_is_not_a_slow_loris(server_factory, raws):
    """Pings cut across writes, so that every write ends one packet and starts the next: a
    packet is always partly here (a busy client's normal case), but none takes longer than
    the gap between two writes. That is not one slow packet. The packet timeout here is ten
    gaps: a write may come late by over a second and still be in time."""
    timeout, cut, gap = 2.0, 7, 0.2
    server = server_factory("--workers", "1", "--store-size", "16MiB",
                            "--packet-timeout", str(timeout), "--idle-timeout", "60")  # fmt: skip
    raw = raws(server.address)
    replied: set[int] = set()

    def take_replies(wait: float) -> None:
        with contextlib.suppress(TimeoutError):
            while True:
                event = raw.next_event(timeout=wait)
                assert not isinstance(event, m.Error), f"closed by the server: {event}"
                assert isinstance(event, m.Ping) and event.reply, event
                replied.add(event.nonce)

    nonce = 0
    started = encode(m.Ping(nonce, reply=False))
    raw.send_raw(started[:cut])
    start = last_write = time.monotonic()
    longest = 0.0  # the longest any packet was partly here, as this side can tell
    # past the first sweep that would close one packet as old as the connection, and the next
    while time.monotonic() - start < timeout + 2 * SWEEP_EVERY:
        nonce += 1
        ping = encode(m.Ping(nonce, reply=False))
        raw.send_raw(started[cut:] + ping[:cut])
        now = time.monotonic()
        longest, last_write = max(longest, now - last_write), now
        started = ping
        take_replies(gap)
    raw.send_raw(started[cut:])
    deadline = time.monotonic() + SWEEP_SLACK
    while nonce not in replied and time.monotonic() < deadline:
        take_replies(0.1)
    assert replied == set(range(nonce + 1))
    assert longest < timeout, f"the test stalled: a packet was partly here for {longest:.1f} s"


# -- largest file ----------------------------------------------------------------------------


def test_an_upload_over_the_file_size_limit_is_refused_and_one_at_it_works(
    server_factory, tmp_path
):
    limit = 64 * KiB
    server = server_factory("--workers", "1", "--store-size", "16MiB",
                            "--max-file-size", "64KiB")  # fmt: skip

    async def uploads() -> None:
        async with await Client.connect(server.address) as client:
            with pytest.raises(StoreFull) as refused:
                await client.put_bytes(os.urandom(limit + 1), "big.bin")
            assert refused.value.code is ErrorCode.NO_SPACE
            assert str(refused.value) == (
                f"big.bin: larger than this server's limit of {limit} bytes"
            )
            # the refusal ends only that file, and nothing of it is kept
            assert await client.ls() == []
            data = os.urandom(limit)
            entry = await client.put_bytes(data, "exact.bin")
            assert entry.size == limit
            await client.get("exact.bin", tmp_path / "exact.bin")
            assert (tmp_path / "exact.bin").read_bytes() == data
            # a replacement over the limit is refused, and the file stays as it was
            with pytest.raises(StoreFull):
                await client.put_bytes(data + b"!", "exact.bin")
            assert await client.ls() == [entry]

    run(uploads())
    assert server.metric("fs_store_used_bytes") == limit


def test_the_file_size_refusal_on_the_wire(server_factory, raws):
    server = server_factory("--workers", "1", "--store-size", "16MiB",
                            "--max-file-size", "1000")  # fmt: skip
    raw = raws(server.address)
    raw.send(m.FileSyncInit(1, 1001, 0, 0o644, ANY_VERSION, None, "a.bin"))
    reply = raw.expect(m.FileSyncInitResponse)
    assert reply == m.FileSyncInitResponse(
        1, m.InitStatus.TOO_LARGE, 0, 0, "a.bin: larger than this server's limit of 1000 bytes"
    )
    assert server.metric("fs_store_used_bytes") == 0  # refused before any space was reserved
    raw.send(m.FileSyncInit(1, 1000, 0, 0o644, ANY_VERSION, None, "a.bin"))
    assert raw.expect(m.FileSyncInitResponse).status is m.InitStatus.ACCEPTED


# -- share quota -----------------------------------------------------------------------------


def test_share_quota(server_factory):
    quota = 100 * KiB
    server = server_factory("--workers", "1", "--store-size", "16MiB",
                            "--share-quota", "100KiB")  # fmt: skip

    async def scenario() -> None:
        async with (
            await Client.connect(server.address, share="a") as a,
            await Client.connect(server.address, share="b") as b,
        ):
            first = os.urandom(60 * KiB)
            await a.put_bytes(first, "one.bin")
            await a.put_bytes(os.urandom(40 * KiB), "two.bin")  # exactly the quota
            with pytest.raises(StoreFull) as refused:
                await a.put_bytes(b"x", "three.bin")
            assert refused.value.code is ErrorCode.NO_SPACE
            assert str(refused.value) == (
                f"no space: share a would hold {quota + 1} bytes, over its quota of {quota}"
            )
            # content the share already holds counts again under another name
            with pytest.raises(StoreFull):
                await a.put_bytes(first, "copy-of-one.bin")
            assert sorted(e.path for e in await a.ls()) == ["one.bin", "two.bin"]

            await b.put_bytes(os.urandom(quota), "full.bin")  # another share, its own quota

            await a.put_bytes(os.urandom(30 * KiB), "one.bin")  # smaller replacement: 70 KiB
            with pytest.raises(StoreFull, match=f"would hold {101 * KiB} bytes"):
                await a.put_bytes(os.urandom(31 * KiB), "three.bin")
            await a.put_bytes(os.urandom(30 * KiB), "three.bin")  # 100 KiB again
            with pytest.raises(StoreFull):  # a bigger replacement that does not fit
                await a.put_bytes(os.urandom(31 * KiB), "one.bin")
            await a.rm("two.bin")  # frees 40 KiB
            await a.put_bytes(os.urandom(40 * KiB), "four.bin")
            sizes = {e.path: e.size for e in await a.ls()}
            assert sizes == {"one.bin": 30 * KiB, "three.bin": 30 * KiB, "four.bin": 40 * KiB}

    run(scenario())


def test_share_quota_holds_for_uploads_in_flight_together(server_factory):
    """Uploads reserved at the same time count against the quota together: pipelining
    cannot take a share over it."""
    quota = 100 * KiB
    server = server_factory("--workers", "1", "--store-size", "16MiB",
                            "--share-quota", "100KiB")  # fmt: skip

    async def scenario() -> tuple[list[object], int]:
        async with await Client.connect(server.address, share="a") as a:
            results = await asyncio.gather(
                *(a.put_bytes(os.urandom(40 * KiB), f"f{i}.bin") for i in range(4)),
                return_exceptions=True,
            )
            held = sum(e.size for e in await a.ls())
            return results, held

    results, held = run(scenario())
    refused = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(r, StoreFull) for r in refused), refused
    assert held <= quota, f"share a holds {held} bytes, over its quota of {quota}"
    assert len(refused) == 2


@pytest.mark.parametrize("seed", range(10))
def test_quota_counts_uploads_in_progress_whatever_happens_to_them(seed):
    """The store's side of the quota: reservations count until committed, aborted, or
    dropped with their worker, and no sequence takes a share over its quota."""
    rng = random.Random(seed)
    quota = 1000
    store = Store(64 * 1024, quota=quota)
    tickets: list[tuple[int, int, str, str]] = []
    for _ in range(500):
        op, owner, share = rng.random(), rng.randrange(2), rng.choice(["a", "b"])
        path = f"p{rng.randrange(5)}"
        if op < 0.4:
            size = rng.choice([0, 1, 100, 300, 600, 1000])
            digest = rng.choice([None, bytes([size % 7]) * 16])
            result = store.reserve(owner, share, path, size, 0, 0, digest, ANY_VERSION)
            if isinstance(result, Reserved):
                tickets.append((owner, result.ticket, share, path))
        elif op < 0.7 and tickets:
            owner, ticket, share, path = tickets.pop(rng.randrange(len(tickets)))
            digest = bytes([rng.randrange(3)]) * 16
            store.commit(owner, ticket, share, path, 0, 0, digest, rng.choice([ANY_VERSION, 1]))
        elif op < 0.8 and tickets:
            owner, ticket, *_ = tickets.pop(rng.randrange(len(tickets)))
            store.abort(owner, ticket)
        elif op < 0.9:
            store.delete(share, path, ANY_VERSION)
        else:
            store.drop_owner(owner)
            tickets = [t for t in tickets if t[0] != owner]
        pending = {}
        for hold in store.holds.values():
            if hold.blob is None and hold.size:
                pending[hold.share] = pending.get(hold.share, 0) + hold.size
        assert store.reserved == pending
        for name, sh in store.shares.items():
            assert sh.bytes <= quota, f"share {name} holds {sh.bytes} bytes"
    for owner in (0, 1):
        store.drop_owner(owner)
    assert store.reserved == {}


# -- connection limit ------------------------------------------------------------------------


def test_connection_over_the_limit_is_told_busy_and_a_freed_slot_is_reused(server_factory, raws):
    limit = 3
    server = server_factory("--workers", "1", "--store-size", "16MiB",
                            "--max-connections", str(limit))  # fmt: skip
    held = [raws(server.address, share=f"s{i}") for i in range(limit)]
    assert all(r.hello is not None and r.hello.status is m.HandshakeStatus.OK for r in held)

    busy = raws(server.address, handshake=False)
    assert busy.error_or_close(timeout=5) == m.Error(
        ErrorCode.LIMIT_EXCEEDED, NO_FILE, "server busy: too many connections, retry later"
    )
    with pytest.raises(Closed):
        busy.next_event(timeout=5)

    async def refused() -> None:  # whether the Error beats its handshake out or not
        with pytest.raises(RemoteError, match="server busy"):
            await Client.connect(server.address)

    for _ in range(5):
        run(refused())
    for r in held:  # the refusal disturbed nobody
        r.send(m.Ping(1, reply=False))
        assert r.expect(m.Ping) == m.Ping(1, reply=True)

    held.pop().close()
    wait_for(
        lambda: server.metric_total(ACTIVE) == limit - 1,
        5,
        "the closed slot to free",
    )
    again = raws(server.address)
    assert again.hello is not None and again.hello.status is m.HandshakeStatus.OK
    again.send(m.Ping(2, reply=False))
    assert again.expect(m.Ping) == m.Ping(2, reply=True)


# -- sessions and requests in flight ---------------------------------------------------------

IN_FLIGHT = 4


def init(fid: int) -> m.FileSyncInit:
    return m.FileSyncInit(fid, 10, 0, 0o644, ANY_VERSION, None, f"f{fid}.bin")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (init, f"more than {IN_FLIGHT} sessions in flight"),
        (lambda i: m.StatRequest(i, f"f{i}.bin"), f"more than {IN_FLIGHT} requests in flight"),
    ],
    ids=["upload-sessions", "requests"],
)
def test_more_in_flight_than_allowed_ends_the_connection_only(server_factory, raws, make, message):
    server = server_factory("--workers", "1", "--store-size", "16MiB",
                            "--max-in-flight", str(IN_FLIGHT))  # fmt: skip
    greedy = raws(server.address)
    greedy.send_raw(b"".join(encode(make(i)) for i in range(1, IN_FLIGHT + 2)))
    error = greedy.error_or_close(timeout=5)
    assert error == m.Error(ErrorCode.LIMIT_EXCEEDED, NO_FILE, message)

    async def others() -> None:
        async with await Client.connect(server.address) as client:
            await client.put_bytes(b"fine", "fine.txt")
            assert [e.path for e in await client.ls()] == ["fine.txt"]

    run(others())


def test_after_a_connection_level_error_every_client_call_raises_it(server_factory):
    server = server_factory("--workers", "1", "--store-size", "16MiB",
                            "--max-in-flight", str(IN_FLIGHT))  # fmt: skip

    async def scenario() -> None:
        async with await Client.connect(server.address) as client:
            client.proto.conn.sessions.max_in_flight = 1000  # as if it ignored the handshake's
            with pytest.raises(RemoteError, match="more than 4 sessions in flight"):
                await asyncio.gather(
                    *(client.put_bytes(b"x", f"f{i}") for i in range(IN_FLIGHT + 2))
                )
            with pytest.raises(RemoteError, match="more than 4 sessions in flight"):
                await client.ping()

    run(scenario())


def test_sessions_up_to_the_limit_work_and_a_finished_one_frees_its_place(server_factory, raws):
    server = server_factory("--workers", "1", "--store-size", "16MiB",
                            "--max-in-flight", str(IN_FLIGHT))  # fmt: skip
    raw = raws(server.address)
    for fid in range(1, IN_FLIGHT + 1):
        raw.send(init(fid))
    for _ in range(IN_FLIGHT):
        assert raw.expect(m.FileSyncInitResponse).status is m.InitStatus.ACCEPTED
    raw.send(m.FileSyncCancel(1))
    raw.send(init(IN_FLIGHT + 1))
    reply = raw.expect(m.FileSyncInitResponse)
    assert (reply.file_id, reply.status) == (IN_FLIGHT + 1, m.InitStatus.ACCEPTED)
    raw.send(m.Ping(3, reply=False))
    assert raw.expect(m.Ping) == m.Ping(3, reply=True)
