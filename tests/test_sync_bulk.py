"""The sync client's first pass made for big trees (issue 13): the state's digest index made
again after a bulk upload, and results told but not kept."""

from __future__ import annotations

import os
import sqlite3
import tracemalloc
from pathlib import Path

from fsclient import Client
from fsclient.sync.items import Paths, UploadList
from fsclient.sync.plan import LocalFile
from fsclient.sync.reconcile import BULK_MIN
from fsclient.sync.state import DB_NAME, MARKER, BaseEntry, StateDB
from tests.conftest import run
from tests.syncproc import once


def indexes(folder: Path) -> set[str]:
    with sqlite3.connect(folder / MARKER / DB_NAME) as db:
        return {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='index'")}


def test_a_bulk_write_drops_the_digest_index_and_makes_it_again(tmp_path):
    db = StateDB(tmp_path, create=True)
    assert "files_digest" in indexes(tmp_path)
    entry = BaseEntry("a.txt", 1, 2, 0o644, 3, b"d" * 16, 4)
    with db.bulk():
        assert "files_digest" not in indexes(tmp_path)
        db.put([entry])
    assert "files_digest" in indexes(tmp_path)
    assert db.with_digest(b"d" * 16) == [entry]
    db.db.execute("DROP INDEX files_digest")  # as a client killed inside ``bulk`` leaves it
    db.close()
    StateDB(tmp_path).close()
    assert "files_digest" in indexes(tmp_path)


def test_an_initial_sync_of_many_files_keeps_its_digest_index(server, tmp_path):
    """Past BULK_MIN uploads the index is dropped for the upload: it is there at the end."""
    for i in range(BULK_MIN + 10):
        (tmp_path / f"f{i:05d}.txt").write_text(str(i))
    result = once(tmp_path, server.address)
    assert result.returncode == 0, result.stderr
    assert f"{BULK_MIN + 10} uploaded" in result.stdout
    assert "files_digest" in indexes(tmp_path)
    db = StateDB(tmp_path)
    assert sum(1 for _ in db.all()) == BULK_MIN + 10
    assert [e.path for e in db.with_digest(db.get("f00007.txt").digest)] == ["f00007.txt"]
    db.close()


def test_put_many_without_keep_tells_each_result_and_returns_none(server, tmp_path):
    pairs = []
    for n in range(40):
        (tmp_path / f"{n}.txt").write_bytes(os.urandom(n + 1))
        pairs.append((tmp_path / f"{n}.txt", f"{n}.txt"))
    told: dict[int, object] = {}

    async def main() -> list[object]:
        async with await Client.connect(server.address) as client:
            return await client.put_many(pairs, on_result=told.__setitem__, keep=False)

    assert run(main()) == []
    assert sorted(told) == list(range(len(pairs)))
    assert all(getattr(told[n], "size", None) == n + 1 for n in range(len(pairs)))


def test_an_upload_list_keeps_each_file_as_it_was_given_in_little_memory():
    files = [(LocalFile("a/x", 5, -1_000_000_007, 0o755, 2**64 - 2, b""), 2**64 - 1),
             (LocalFile("b", 0, 1_700_000_000_000_000_000, 0o600, 7, b"d" * 16), 3)]  # fmt: skip
    uploads = UploadList(files)
    assert list(uploads) == files
    assert (len(uploads), uploads.bytes, uploads.digests) == (2, 5, {1: b"d" * 16})
    assert list(Paths(uploads)) == [("a/x", 2**64 - 1), ("b", 3)] == Paths(uploads)[0:2]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        many = UploadList()
        for n in range(20_000):
            many.append(LocalFile(f"d{n // 100:04}/f{n:07}.txt", 1024, n, 0o644, n, b""), 0)
        per_file = (tracemalloc.get_traced_memory()[0] - before) / 20_000
    finally:
        tracemalloc.stop()
    assert per_file < 130  # (a list of (LocalFile, version) pairs: about 300)
