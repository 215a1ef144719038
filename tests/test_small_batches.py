"""Small-file batches against a real server: every file of a batch gets its own status, only
verified bytes are committed, nothing is held after a batch ends, and bad batches end the
connection like any malformed packet."""

from __future__ import annotations

import asyncio
import contextlib
import os

import pytest
import xxhash

from common import messages as m
from common.codec import HEADER, encode
from common.errors import ErrorCode, InvalidPath, PermissionDenied
from common.limits import ANY_VERSION, MAX_BATCH_PACKET, MAX_BATCHES_IN_FLIGHT, NO_VERSION
from fsclient import Client
from fsserver.auth import add_token
from fsserver.store.allocator import aligned
from fsserver.store.staging import STAGING_BYTES
from tests.conftest import run
from tests.rawclient import RawClient
from tests.serverproc import wait_for

S = m.FileStatus
BIG = 1 << 20


def record(path: str, data: bytes, base: int = ANY_VERSION, digest: bytes | None = None
           ) -> m.SmallFile:  # fmt: skip
    return m.SmallFile(1_000, 0o640, base, digest or xxhash.xxh3_128_digest(data), path, data)


def metric(server, packet_type: str) -> float:
    return server.metric(f'fs_received_packets_total{{packet_type="{packet_type}"}}', 0.0)


def listing(address: str, **kwargs) -> dict[str, m.FileEntry]:
    async def main():
        async with await Client.connect(address, **kwargs) as client:
            return {e.path: e for e in await client.ls()}

    return run(main())


def test_put_many_sends_small_files_in_batches(server, tmp_path):
    pairs, digests = [], {}
    for n in range(300):
        data = os.urandom(n * 37 % 5000)
        (tmp_path / f"{n}.bin").write_bytes(data)
        pairs.append((tmp_path / f"{n}.bin", f"dir/{n:03d}.bin"))
        digests[f"dir/{n:03d}.bin"] = xxhash.xxh3_128_digest(data)

    async def main():
        async with await Client.connect(server.address) as client:
            return await client.put_many(pairs)

    results = run(main())
    assert [r.path for r in results] == [remote for _, remote in pairs]
    assert [r.version for r in results] == list(range(1, 301))  # in order, one each
    assert {p: e.digest for p, e in listing(server.address).items()} == digests
    wait_for(lambda: metric(server, "small_file_batch") > 0, 5, "batch traffic")
    assert metric(server, "file_sync_init") == 0  # not one file session


def test_put_many_reports_each_file_as_it_is_done(server, tmp_path):
    """``on_result`` hears of each file once, as soon as it is done: the small files, sent in
    batches, before the big first file, which goes through a file session after them."""
    (tmp_path / "big.bin").write_bytes(os.urandom(2 * BIG))
    pairs = [(tmp_path / "big.bin", "big.bin")]
    for n in range(100):
        (tmp_path / f"{n}.txt").write_bytes(os.urandom(n + 1))
        pairs.append((tmp_path / f"{n}.txt", f"{n}.txt"))
    reported: list[tuple[int, object]] = []

    async def main():
        async with await Client.connect(server.address) as client:
            return await client.put_many(pairs, on_result=lambda i, r: reported.append((i, r)))

    results = run(main())
    assert sorted(i for i, _ in reported) == list(range(len(pairs)))
    assert all(results[i] is r for i, r in reported)
    assert reported[-1][0] == 0  # the big file is the last one done


def test_every_file_of_a_batch_gets_its_own_status(server_factory):
    server = server_factory("--store-size", "16MiB", "--max-file-size", "1000")
    raw = RawClient(server.address, max_packet=BIG)
    raw.send(m.SmallFileBatch(1, (record("a.txt", b"first"),)))
    [first] = raw.expect(m.SmallFileBatchResponse).results
    assert first.status is S.STORED
    files = (
        record("b.txt", b"fresh"),  # stored
        record("a-copy.txt", b"first"),  # the share holds this content already
        record("../escape", b"x"),  # a bad path ends only its own file
        record("c.txt", b"lie", digest=bytes(16)),  # the bytes do not match the digest
        record("big.bin", bytes(2000)),  # over --max-file-size
        record("a.txt", b"stale", base=first.version + 5),  # a version the path is not at
        record("new.txt", b"new", base=NO_VERSION),  # must not exist yet: it does not
    )
    raw.send(m.SmallFileBatch(2, files))
    results = raw.expect(m.SmallFileBatchResponse).results
    assert [r.status for r in results] == [
        S.STORED, S.ALREADY_HAVE_CONTENT, S.INVALID_PATH, S.MISMATCH, S.TOO_LARGE,
        S.CONFLICT, S.STORED,
    ]  # fmt: skip
    assert results[5].version == first.version  # a conflict names the current version
    raw.send(m.Ping(1, reply=False))  # the connection carries on
    assert raw.expect(m.Ping).reply
    raw.close()
    stored = listing(server.address)
    assert sorted(stored) == ["a-copy.txt", "a.txt", "b.txt", "new.txt"]
    assert stored["a.txt"].version == first.version and stored["a.txt"].mode == 0o640
    # only verified, committed bytes hold space ("first" once, "fresh", "new"): no
    # reservation is left behind
    wait_for(lambda: server.metric("fs_store_used_bytes") == 3 * aligned(5), 5, "used bytes")


def test_a_read_only_token_may_not_write_in_a_batch(server_factory, tmp_path):
    tokens = str(tmp_path / "tokens.toml")
    reader = add_token(tokens, "reader", ["default"], read_only=True)
    writer = add_token(tokens, "writer", ["default"], read_only=False)
    server = server_factory("--store-size", "16MiB", "--tokens", tokens)
    (tmp_path / "f.txt").write_bytes(b"hello")

    async def put(token: str) -> list:
        from fsclient.access import Access

        async with await Client.connect(server.address, access=Access(token=token)) as client:
            return await client.put_many([(tmp_path / "f.txt", "f.txt")])

    [refused] = run(put(reader))
    assert isinstance(refused, PermissionDenied)
    [entry] = run(put(writer))
    assert isinstance(entry, m.FileEntry)
    from fsclient.access import Access

    assert list(listing(server.address, access=Access(token=reader))) == ["f.txt"]


def test_client_maps_batch_statuses_to_results_and_errors(server, tmp_path):
    (tmp_path / "ok.txt").write_bytes(b"ok")

    async def main():
        async with await Client.connect(server.address) as client:
            return await client.put_many([(tmp_path / "ok.txt", "ok.txt"),
                                          (tmp_path / "ok.txt", "bad//path")])  # fmt: skip

    ok, bad = run(main())
    assert isinstance(ok, m.FileEntry) and ok.path == "ok.txt"
    assert isinstance(bad, InvalidPath)
    assert list(listing(server.address)) == ["ok.txt"]


def test_client_resends_a_batch_mismatch_through_a_file_session(server, tmp_path, monkeypatch):
    """A file whose batch record the server finds damaged (MISMATCH: here its digest is made
    wrong on the way out) is sent again, by itself, through a file session."""
    import fsclient.batch

    right = fsclient.batch.digest_of
    damaged: list[bytes] = []

    def digest_of(data: bytes) -> bytes:
        if data == b"damaged on the way" and not damaged:
            damaged.append(data)
            return bytes(16)
        return right(data)

    monkeypatch.setattr(fsclient.batch, "digest_of", digest_of)
    contents = {"fine.txt": b"fine", "resent.txt": b"damaged on the way"}
    for name, data in contents.items():
        (tmp_path / name).write_bytes(data)

    async def main():
        async with await Client.connect(server.address) as client:
            return await client.put_many([(tmp_path / name, name) for name in contents])

    results = run(main())
    assert damaged, "the batch did not carry the damaged record"
    assert [(r.path, r.digest) for r in results] == [(n, right(d)) for n, d in contents.items()]
    assert {p: e.digest for p, e in listing(server.address).items()} == {
        n: right(d) for n, d in contents.items()
    }
    wait_for(lambda: metric(server, "small_file_batch") >= 1, 5, "the batch")
    wait_for(lambda: metric(server, "file_sync_init") == 1, 5, "one file session: the resend")


def oversized_batch() -> bytes:
    files = tuple(record(f"f{n}", os.urandom(60_000)) for n in range(3))
    body = encode(m.SmallFileBatch(1, files))[HEADER.size :]
    assert HEADER.size + len(body) > MAX_BATCH_PACKET
    return HEADER.pack(HEADER.size + len(body), m.PacketType.SMALL_FILE_BATCH) + body


def batch_with_lengths_that_do_not_add_up() -> bytes:
    body = bytearray(encode(m.SmallFileBatch(1, (record("f", b"12345"),)))[HEADER.size :])
    body = body[:-2]  # the data field claims 5 bytes, 3 follow
    return HEADER.pack(HEADER.size + len(body), m.PacketType.SMALL_FILE_BATCH) + body


def small_batch() -> bytes:
    return encode(m.SmallFileBatch(1, (record("f", b"x"),)))


@pytest.mark.parametrize(
    ("max_packet", "packet", "code"),
    [
        (BIG, oversized_batch, ErrorCode.PACKET_TOO_LARGE),
        (BIG, batch_with_lengths_that_do_not_add_up, ErrorCode.MALFORMED),
        (4096, small_batch, ErrorCode.UNEXPECTED_PACKET),  # the seed's packets: no batches
    ],
    ids=["over-the-batch-size-limit", "lengths-do-not-add-up", "on-a-4096-byte-connection"],
)
def test_a_bad_batch_ends_the_connection_and_stores_nothing(server, max_packet, packet, code):
    with contextlib.closing(RawClient(server.address, max_packet=max_packet)) as raw:
        raw.send_raw(packet())
        error = raw.error_or_close()
    assert error is not None and error.code is code
    assert listing(server.address) == {}


def full_window(tag: str, per_file: int = 40_000) -> list[m.SmallFileBatch]:
    """A connection's whole window of batches, each near the batch packet limit."""
    batches = []
    for rid in range(1, MAX_BATCHES_IN_FLIGHT + 1):
        files = tuple(record(f"{tag}/{rid}-{n}", os.urandom(per_file)) for n in range(3))
        batches.append(m.SmallFileBatch(rid, files))
    return batches


def test_a_connection_closed_mid_batch_leaves_no_reservation(server_factory):
    """Batches cut short by their connection's end give back their store space and their
    room in the worker's staging area: later batches still get through."""
    server = server_factory("--store-size", "16MiB", "--workers", "1")
    for attempt in range(3):  # three windows: more than the worker's staging area
        raw = RawClient(server.address, max_packet=BIG)
        for batch in full_window(f"r{attempt}"):
            raw.send(batch)
        raw.close()  # before the replies

    # each batch either committed or gave its space back: used space is the stored files'
    def settled() -> bool:
        return server.metric("fs_store_used_bytes") == aligned(40_000) * len(
            listing(server.address)
        )

    wait_for(settled, 10, "used bytes to match the stored files")
    raw = RawClient(server.address, max_packet=BIG)
    for batch in full_window("after"):
        raw.send(batch)
    for _ in range(MAX_BATCHES_IN_FLIGHT):
        assert {r.status for r in raw.expect(m.SmallFileBatchResponse).results} == {S.STORED}
    raw.close()


def test_batches_beyond_the_staging_area_wait_for_room_and_all_arrive(server_factory):
    """Three connections send their whole window at once to one worker: more bytes than its
    staging area holds. The batches beyond it wait their turn; every file is stored whole."""
    server = server_factory("--store-size", "32MiB", "--workers", "1")
    conns = [RawClient(server.address, max_packet=BIG) for _ in range(3)]
    sent: dict[str, bytes] = {}
    for n, raw in enumerate(conns):
        for batch in full_window(f"c{n}"):
            sent.update((f.path, f.digest) for f in batch.files)
            raw.send(batch)
    assert len(sent) * 40_000 > STAGING_BYTES
    for raw in conns:
        replies = [raw.expect(m.SmallFileBatchResponse) for _ in range(MAX_BATCHES_IN_FLIGHT)]
        assert sorted(r.request_id for r in replies) == list(range(1, MAX_BATCHES_IN_FLIGHT + 1))
        assert {r.status for reply in replies for r in reply.results} == {S.STORED}
        raw.close()
    assert {p: e.digest for p, e in listing(server.address).items()} == sent


def test_an_on_result_that_raises_ends_put_many_with_its_error(server, tmp_path):
    """The callback runs inside the client's protocol callbacks: what it raises must end
    ``put_many`` with that error once the files in flight are answered, not stall it."""
    pairs = []
    for n in range(40):
        (tmp_path / f"{n}.txt").write_bytes(os.urandom(n + 1))
        pairs.append((tmp_path / f"{n}.txt", f"raise/{n}.txt"))
    calls = []

    def on_result(index: int, result: object) -> None:
        calls.append(index)
        if len(calls) == 5:
            raise OSError(28, "No space left on device")

    async def main():
        async with await Client.connect(server.address) as client:
            with pytest.raises(OSError, match="No space left"):
                await asyncio.wait_for(client.put_many(pairs, on_result=on_result), 20)
            return await client.ping()

    run(main())
    assert len(calls) == 5  # not called after it raised
    assert len(listing(server.address)) == len(pairs)  # the upload itself went on


def test_many_put_many_at_once_share_the_connections_batch_slots(server, tmp_path):
    """A live sync client uploads each debounced path with its own put_many, all on one
    connection: together they must stay within the connection's batches in flight, waiting
    for a free one rather than failing."""
    pairs = []
    for n in range(40):
        (tmp_path / f"{n}.txt").write_bytes(os.urandom(100 + n))
        pairs.append((tmp_path / f"{n}.txt", f"at-once/{n:02d}.txt"))

    async def main():
        async with await Client.connect(server.address) as client:
            results = await asyncio.gather(*(client.put_many([pair]) for pair in pairs))
            return [r for (r,) in results], await client.ping()

    results, _ = run(main())
    assert [getattr(r, "path", r) for r in results] == [remote for _, remote in pairs]
    assert sorted(listing(server.address)) == sorted(remote for _, remote in pairs)


def test_files_that_fill_a_whole_batch_packet_go_by_file_session(server_factory, tmp_path):
    """With the smallest packets that allow batches, a file near the batch file limit plus
    its record and path does not fit one: it is sent through a file session instead."""
    server = server_factory("--max-packet", "64KiB")
    sizes = [65536, 65500, 65000, 1000, 0]
    pairs, digests = [], {}
    for size in sizes:
        data = os.urandom(size)
        (tmp_path / f"f{size}").write_bytes(data)
        pairs.append((tmp_path / f"f{size}", f"f{size}"))
        digests[f"f{size}"] = xxhash.xxh3_128_digest(data)

    async def main():
        async with await Client.connect(server.address) as client:
            assert client.max_packet == 64 * 1024
            return await client.put_many(pairs)

    results = run(main())
    assert [getattr(r, "path", r) for r in results] == [remote for _, remote in pairs]
    assert {p: e.digest for p, e in listing(server.address).items()} == digests
    wait_for(lambda: metric(server, "small_file_batch") > 0, 5, "batches for the small ones")
    wait_for(lambda: metric(server, "file_sync_init") > 0, 5, "sessions for the big ones")
