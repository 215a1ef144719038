"""Big uploads written to the data dir while they arrive (``fsserver.store.writebehind``): the
staged file becomes a segment of its own at the commit, a retry starts it over, an upload that
ends without a commit leaves nothing, and a restart loads the big file byte-exact."""

from __future__ import annotations

import mmap
import os
import threading
from pathlib import Path

import pytest
import xxhash

from fsclient import Client
from fsserver.store.segments import HEADER_SIZE, SegmentWriter, copy_record, segment_name
from fsserver.store.writebehind import STAGE_MIN, StagedUploads
from tests.conftest import run
from tests.serverproc import start_server, wait_for

MiB = 1 << 20


def read_record(folder: Path, segment: int, offset: int, blob: tuple[int, int, bytes]) -> bytes:
    """The content of a record, checked (header, size, digest) as a restart checks it."""
    with open(folder / segment_name(segment), "rb") as f:
        mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        into = bytearray(blob[1])
        copy_record(memoryview(mapped), offset, memoryview(into), blob, "test")
        return bytes(into)
    finally:
        mapped.close()


@pytest.fixture
def arena() -> memoryview:
    return memoryview(bytearray(8 * MiB))


def test_a_staged_upload_becomes_a_segment_of_its_own_after_the_open_one(tmp_path, arena):
    content = os.urandom(3 * MiB)
    arena[MiB : 4 * MiB] = content
    digest = xxhash.xxh3_128_digest(content)
    writer = SegmentWriter(tmp_path, 5)
    small = writer.append_all([(1, xxhash.xxh3_128_digest(b"tiny"), memoryview(b"tiny"))])
    staged = StagedUploads(tmp_path, arena, durable=True)
    written = [staged.stage(77, MiB, len(content), done) for done in (MiB, 2 * MiB, 2 * MiB)]
    assert written == [MiB, MiB, 0]
    assert (tmp_path / "77.part").exists()
    path, last = staged.take(77, 2, digest, MiB, len(content))  # type: ignore[misc]
    assert last == MiB + HEADER_SIZE  # only the last stretch and the header were left
    placed = writer.adopt(path)
    writer.sync()
    assert (small[0].segment, placed.segment, placed.offset) == (5, 6, 0)
    assert not list(tmp_path.glob("*.part"))
    assert read_record(tmp_path, 6, 0, (2, len(content), digest)) == content
    assert read_record(tmp_path, 5, 0, (1, 4, xxhash.xxh3_128_digest(b"tiny"))) == b"tiny"
    again = writer.append_all([(3, xxhash.xxh3_128_digest(b"next"), memoryview(b"next"))])
    assert again[0].segment == 7  # the next append opens a new segment after it
    writer.close()


def test_a_retry_after_a_digest_mismatch_writes_the_upload_again(tmp_path, arena):
    arena[: 2 * MiB] = b"x" * (2 * MiB)  # the first attempt's bytes
    staged = StagedUploads(tmp_path, arena, durable=False)
    staged.stage(9, 0, 2 * MiB, 2 * MiB)
    good = os.urandom(2 * MiB)
    arena[: 2 * MiB] = good  # the second attempt starts over: its first report says 0
    assert staged.stage(9, 0, 2 * MiB, 0) == 0
    assert staged.stage(9, 0, 2 * MiB, MiB) == MiB
    digest = xxhash.xxh3_128_digest(good)
    path, _ = staged.take(9, 4, digest, 0, 2 * MiB)  # type: ignore[misc]
    writer = SegmentWriter(tmp_path, 1)
    placed = writer.adopt(path)
    assert read_record(tmp_path, placed.segment, 0, (4, 2 * MiB, digest)) == good


def test_an_upload_that_ends_without_a_commit_leaves_nothing(tmp_path, arena):
    (tmp_path / "3.part").write_bytes(b"left by a persister that died")
    staged = StagedUploads(tmp_path, arena, durable=True)
    assert not (tmp_path / "3.part").exists()  # stale ones go at start
    staged.stage(10, 0, MiB, MiB // 2)
    staged.end(10)  # parked, given up, or committed as content stored already
    assert (tmp_path / "10.part").exists()  # (a blob record of the same group may take it)
    staged.drop_ended()
    assert not list(tmp_path.glob("*.part"))
    assert staged.take(10, 1, bytes(16), 0, MiB) is None  # so its commit appends as usual
    assert staged.take(11, 1, bytes(16), 0, MiB) is None  # never staged


def test_a_stage_that_cannot_be_written_leaves_the_upload_to_its_commit(tmp_path, arena):
    staged = StagedUploads(tmp_path / "missing", arena, durable=True)  # every open fails
    assert staged.stage(12, 0, MiB, MiB) == 0
    assert staged.stage(12, 0, MiB, MiB) == 0  # not tried again for this upload
    assert staged.take(12, 1, bytes(16), 0, MiB) is None


@pytest.mark.parametrize("fsync", ["always", "interval", "never"])
def test_a_big_upload_is_on_disk_as_its_own_segment_and_survives_a_restart(tmp_path, fsync):
    data_dir = tmp_path / "data"
    content = os.urandom(STAGE_MIN + 5 * MiB)
    small = os.urandom(5000)
    args = ("--data-dir", str(data_dir), "--workers", "1", "--store-size", "128MiB",
            "--fsync", fsync)  # fmt: skip
    server = start_server(*args)
    try:

        async def put() -> None:
            async with await Client.connect(server.address) as client:
                await client.put_bytes(small, "small.bin")
                await client.put_bytes(content, "big.bin")

        run(put())

        def sizes() -> list[int]:
            return [p.stat().st_size for p in (data_dir / "segments").glob("*.seg")]

        # (with interval and never the answer does not wait for the disk)
        wait_for(lambda: HEADER_SIZE + len(content) in sizes(), 10, "a segment of its own")
        assert not list((data_dir / "segments").glob("*.part"))
        wait_for(lambda: server.metric_total("fs_disk_write_bytes_total") >= len(content), 10,
                 "the write to be counted")  # fmt: skip
        written = server.metric_total("fs_disk_write_bytes_total")
        assert written < len(content) + MiB  # each byte written once
    finally:
        server.stop()
    server = start_server(*args)
    try:

        async def get() -> bytes:
            target = tmp_path / "big.out"
            async with await Client.connect(server.address) as client:
                await client.get("big.bin", str(target))
            return target.read_bytes()

        assert run(get()) == content
    finally:
        server.stop()


def test_a_big_upload_cut_by_a_kill_leaves_no_staged_file_after_a_restart(tmp_path):
    data_dir = tmp_path / "data"
    args = ("--data-dir", str(data_dir), "--workers", "1", "--store-size", "256MiB")
    server = start_server(*args)
    try:
        source = tmp_path / "big.bin"
        source.write_bytes(os.urandom(160 * MiB))

        async def put() -> None:
            async with await Client.connect(server.address) as client:
                client.dial = None
                await client.put(str(source), "big.bin")

        failed: list[BaseException] = []
        thread = threading.Thread(target=lambda: _catch(lambda: run(put()), failed))
        thread.start()
        folder = data_dir / "segments"
        wait_for(lambda: list(folder.glob("*.part")) or not thread.is_alive(), 30,
                 "the upload to be staged")  # fmt: skip
        assert list(folder.glob("*.part")), "the upload ended before it was staged"
        os.killpg(server.pid, 9)
        server.proc.wait(10)
        thread.join(30)
    finally:
        server.stop()
    server = start_server(*args)
    try:
        wait_for(lambda: not list((data_dir / "segments").glob("*.part")), 10,
                 "the stale staged file to be removed")  # fmt: skip
        segments = [p.stat().st_size for p in (data_dir / "segments").glob("*.seg")]
        assert all(size < 100 * MiB for size in segments)  # nothing of it was committed
    finally:
        server.stop()


def _catch(body, failed: list[BaseException]) -> None:
    try:
        body()
    except Exception as exc:  # the kill ends the upload: expected
        failed.append(exc)
