"""A crash while the last group commit was synced: the catalog ahead of the segment.

The persister syncs a group's segment records while SQLite commits its rows (issue 11,
``fsserver/store/persister.py``). A power cut between the two fsyncs leaves rows whose records
the segment lacks, or holds only in part (pages reach the disk in any order). Such a group was
never acknowledged. These tests build that state for real: a clean stop leaves the last
group's records on disk and the catalog marking where they begin; cutting or zeroing the
segment from there is what the power cut would have left. The server must start with exactly
what came before that group, a warning, and the damage counted.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest
import xxhash

from fsclient import Client
from tests.conftest import run
from tests.serverproc import ServerProcess, wait_for
from tests.test_durability import durable_server, listing, server_state

HEADER = 48


def last_group(data_dir: Path) -> tuple[Path, int, list[int]]:
    """The segment the last group went to, where its records begin, and the offsets of the
    records at or after that (from the catalog, read as an operator would)."""
    db = sqlite3.connect(data_dir / "index.sqlite")
    try:
        meta = dict(db.execute("SELECT key, value FROM meta"))
        segment, begun = meta.get("unsynced_segment"), meta.get("unsynced_offset")
        assert segment is not None, "the last group was not committed alongside its fsync"
        offsets = [row[0] for row in db.execute(
            "SELECT offset FROM blobs WHERE segment = ? AND offset >= ? ORDER BY offset",
            (segment, begun))]  # fmt: skip
    finally:
        db.close()
    return data_dir / "segments" / f"{int(segment):08d}.seg", int(begun), offsets


def put_all(server: ServerProcess, files: dict[str, bytes]) -> dict[str, int]:
    """Upload one by one (each its own group); path -> acknowledged version."""

    async def put() -> dict[str, int]:
        async with await Client.connect(server.address) as client:
            return {name: (await client.put_bytes(data, name)).version
                    for name, data in files.items()}  # fmt: skip

    return run(put())


def expect_torn_start(data_dir: Path, damaged: int) -> ServerProcess:
    """Start on *data_dir*; it must be ready, say "a torn tail" and count *damaged*."""
    server = durable_server(data_dir)
    try:
        wait_for(lambda: "a torn tail" in server.log.text(), 10, "the torn-tail warning")
        assert server.metric("fs_recovery_damaged_records_total") == damaged
    except BaseException:
        server.stop()
        raise
    return server


def test_a_cut_last_group_gives_its_paths_back_their_acknowledged_versions(tmp_path):
    data_dir = tmp_path / "data"
    first = {"a.bin": os.urandom(30_000), "b.bin": os.urandom(20_000)}
    server = durable_server(data_dir)
    try:
        versions = put_all(server, first)
        put_all(server, {"a.bin": os.urandom(40_000)})  # the last group: overwrites a.bin
    finally:
        server.stop()
    segment, begun, offsets = last_group(data_dir)
    assert len(offsets) == 1
    os.truncate(segment, begun + HEADER + 1000)  # the power cut: part of the new a.bin
    server = expect_torn_start(data_dir, 1)
    try:
        state = server_state(server, fetch="a")  # a.bin's bytes fetched, not only listed
        assert sorted(state) == ["a.bin", "b.bin"]
        for name, data in first.items():
            version, listed, got = state[name]
            assert listed == got == xxhash.xxh3_128_digest(data), name
            assert version == versions[name]
        assert "1 paths back at their earlier version" in server.log.text()
    finally:
        server.stop()
    # the rollback is on disk: the next start finds nothing torn and the same files
    server = durable_server(data_dir)
    try:
        assert sorted(server_state(server)) == ["a.bin", "b.bin"]
        assert server.metric("fs_recovery_damaged_records_total") == 0
    finally:
        server.stop()


async def put_batch(address: str, files: dict[str, bytes], folder: Path) -> None:
    pairs = []
    for n, (name, data) in enumerate(files.items()):
        (folder / str(n)).write_bytes(data)
        pairs.append((str(folder / str(n)), name))
    async with await Client.connect(address) as client:
        results = await client.put_many(pairs)
    assert all(hasattr(r, "version") for r in results)


def test_a_hole_inside_the_last_group_is_a_torn_tail_not_damage_in_the_middle(tmp_path):
    """Writeback order is the kernel's: a record of the last group may be lost while a later
    one of the same group reached the disk."""
    data_dir, folder = tmp_path / "data", tmp_path / "src"
    folder.mkdir()
    kept = {f"old-{n}.bin": os.urandom(5000) for n in range(5)}
    server = durable_server(data_dir)
    try:
        put_all(server, kept)
        for attempt in range(8):  # pipelined: the last group holds several records
            batch = {f"new-{attempt}-{n}.bin": os.urandom(6000) for n in range(60)}
            asyncio.run(put_batch(server.address, batch, folder))
            if len(last_group(data_dir)[2]) >= 3:
                break
        else:
            pytest.fail("no group of three or more records in eight batches")
    finally:
        server.stop()
    segment, _, offsets = last_group(data_dir)
    every = set(paths_at(data_dir, segment, None))
    lost = set(paths_at(data_dir, segment, offsets[:1]))
    assert lost and set(kept) <= every
    with open(segment, "r+b") as f:  # the group's first record never reached the disk
        f.seek(offsets[0])
        f.write(bytes(offsets[1] - offsets[0]))
    server = expect_torn_start(data_dir, 1)
    try:
        assert set(listing(server)) == every - lost
    finally:
        server.stop()


def paths_at(data_dir: Path, segment: Path, offsets: list[int] | None) -> list[str]:
    """The paths whose blobs lie at *offsets* of *segment* (None: every path)."""
    db = sqlite3.connect(data_dir / "index.sqlite")
    try:
        if offsets is None:
            return [row[0] for row in db.execute("SELECT path FROM entries")]
        marks = ",".join("?" * len(offsets))
        query = ("SELECT e.path FROM entries e JOIN blobs b ON e.blob = b.id "
                 f"WHERE b.segment = ? AND b.offset IN ({marks})")  # fmt: skip
        return [row[0] for row in db.execute(query, (int(segment.stem), *offsets))]
    finally:
        db.close()


def test_roll_back_gives_the_catalog_its_state_before_the_last_group(tmp_path):
    """``Catalog.roll_back`` (also what a failed segment fsync after the commit does)."""
    from fsserver.store.catalog import Catalog
    from fsserver.store.segments import Placed

    catalog = Catalog(tmp_path)
    try:
        old = [("blob", 1, "s", b"1" * 16, 10), ("put", "s", "a", 1, 5, 0o644, 1),
               ("blob", 2, "s", b"2" * 16, 20), ("put", "s", "b", 2, 5, 0o644, 2)]  # fmt: skip
        catalog.apply(old, {1: Placed(1, 0), 2: Placed(1, 58)}, lsn=1)
        before = sorted(catalog.entries())
        new = [
            ("blob", 3, "s", b"3" * 16, 30),
            ("put", "s", "a", 3, 6, 0o644, 3),
            ("free", 1),
            ("blob", 4, "s", b"4" * 16, 40),
            ("put", "s", "c", 4, 6, 0o644, 4),
        ]
        catalog.apply(new, {3: Placed(1, 126), 4: Placed(1, 204)}, lsn=2,
                      unsynced=Placed(1, 126))  # fmt: skip
        assert catalog.unsynced() == Placed(1, 126)
        assert [row[0] for row in catalog.blobs()] == [2, 3, 4]  # 1 waits in "freeing"
        done = catalog.roll_back([3, 4], lsn=1)
        assert (done.back, done.gone, done.again) == (1, 1, [1])
        assert sorted(catalog.entries()) == before and catalog.lsn == 1
        assert [row[0] for row in catalog.blobs()] == [1, 2]
        catalog.settled()
        assert catalog.unsynced() is None and [r[0] for r in catalog.blobs()] == [1, 2]
    finally:
        catalog.close()
