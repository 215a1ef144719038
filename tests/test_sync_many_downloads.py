"""A first pass that downloads many small files (issue 13) pays per batch, not per file: the
state rows go in transactions of ``DB_CHUNK``, and the temp files' flushes in shared thread
jobs. (That each row still follows its file's flushes is ``tests/test_sync_durable_order.py``.)"""

from __future__ import annotations

import asyncio
import os
import stat

import pytest

from fsclient import Client, durable
from fsclient.sync.actions import DB_CHUNK, Actions
from fsclient.sync.ignore import IgnoreRules
from fsclient.sync.plan import RemoteState
from fsclient.sync.reconcile import DOWNLOAD_WINDOW, Reconcile
from fsclient.sync.scan import Scanner
from fsclient.sync.state import StateDB
from fsclient.sync.survey import FolderSurvey
from tests.bulkfill import data_of, fill, path_of
from tests.conftest import run

FILES = 2_500
SIZE = 8


def test_a_first_pass_of_many_downloads_writes_its_rows_in_chunks(server, tmp_path, monkeypatch):
    assert fill(server.address, FILES, SIZE) == FILES
    folder = tmp_path / "B"
    folder.mkdir()
    db = StateDB(folder, create=True)
    puts: list[int] = []
    real_put = StateDB.put

    def counted(self: StateDB, entries) -> None:
        entries = list(entries)
        puts.append(len(entries))
        real_put(self, entries)

    monkeypatch.setattr(StateDB, "put", counted)
    tasks: list[int] = []
    real_apply = Reconcile.apply

    async def apply(self: Reconcile, *item: object) -> None:
        tasks.append(len(asyncio.all_tasks()))
        await real_apply(self, *item)

    monkeypatch.setattr(Reconcile, "apply", apply)

    async def main() -> dict:
        scanner = Scanner(folder, IgnoreRules.load(folder))
        actions = Actions(folder, db, scanner, "b")
        async with await Client.connect(server.address) as client:
            actions.client = client
            remote = {e.path: RemoteState(e.version, False, e.size, e.mtime_ns, e.mode, e.digest)
                      for e in await client.ls()}  # fmt: skip
            return await Reconcile(scanner, db, actions).run(remote, False, FolderSurvey(folder))

    assert run(main()) == {}
    assert len(tasks) == FILES
    assert max(tasks) <= 3 * DOWNLOAD_WINDOW < FILES  # a window of workers, not a task a file
    assert sum(puts) == FILES
    assert len(puts) == -(-FILES // DB_CHUNK)  # one commit per chunk, not one per file
    rows = {entry.path: entry for entry in db.all()}
    db.close()
    assert len(rows) == FILES
    for n in range(0, FILES, 97):
        path = folder / path_of(n)
        assert path.read_bytes() == data_of(n, SIZE)
        assert rows[path_of(n)].inode == path.stat().st_ino


def test_files_waiting_for_a_flush_share_thread_jobs(tmp_path, monkeypatch):
    jobs: list[int] = []
    real = durable._settle_all

    def counted(files):
        jobs.append(len(files))
        return real(files)

    monkeypatch.setattr(durable, "_settle_all", counted)
    paths = [tmp_path / f"f{n}" for n in range(200)]
    for path in paths:
        path.write_bytes(b"x")

    async def main() -> list[BaseException | None]:
        flush = durable.FileFlush()
        settles = [flush.settle(path, 0o640, 1_700_000_000 * 10**9) for path in paths]
        settles.append(flush.settle(tmp_path / "missing", 0o640, 0))
        return await asyncio.gather(*settles, return_exceptions=True)

    results = run(main())
    assert results[:-1] == [0o640] * len(paths)  # the permissions each file kept
    assert isinstance(results[-1], FileNotFoundError)  # only its own caller hears of it
    assert sum(jobs) == len(paths) + 1
    assert max(jobs) <= durable.FLUSH_BATCH
    assert len(jobs) <= len(paths) // 4  # not a job per file
    for path in paths:
        st = os.stat(path)
        assert stat.S_IMODE(st.st_mode) == 0o640
        assert st.st_mtime_ns == 1_700_000_000 * 10**9


@pytest.mark.parametrize("stop", [True, False])
def test_deferred_rows_are_written_when_the_downloads_end(tmp_path, stop):
    """Rows wait for their chunk only while deferred; what is left goes at the end."""
    from fsclient.sync.state import BaseEntry

    db = StateDB(tmp_path, create=True)
    actions = Actions(tmp_path, db, Scanner(tmp_path, IgnoreRules.load(tmp_path)), "b")
    actions.defer_bases()
    actions.put_base(BaseEntry("a", 1, 1, 0o644, 1, b"d" * 16, 1))
    assert db.get("a") is None
    actions.write_deferred(stop=stop)
    assert db.get("a") is not None
    actions.put_base(BaseEntry("b", 1, 1, 0o644, 1, b"d" * 16, 1))
    assert (db.get("b") is not None) is stop  # written at once unless still deferred
    db.close()
