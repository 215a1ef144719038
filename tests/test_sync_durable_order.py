"""The sync client's writes, in the order a power cut needs (a power cut can't be had here, so
the order is checked): ``DiskModel`` follows every rename, unlink, mkdir, rmdir and fsync the
client makes, and knows what a power cut at each moment would leave (a name stays only once
its folder was flushed, a new file's bytes once the file was). Every write to the state DB is
checked against that: a base row only for a file that would survive with that name and its
bytes, a removed row only for a file that would stay gone. The engine runs in this process
against a real server: downloads into new folders, a change, deletes (one that prunes a
folder), a server-side rename (a local copy), a conflict, and a local delete."""

from __future__ import annotations

import asyncio
import os
import stat
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from common.digest import digest_of
from fsclient import Client, durable
from fsclient.durable import FolderSync
from fsclient.sync.engine import SyncEngine
from fsclient.sync.state import BaseEntry, StateDB
from tests.conftest import run
from tests.syncproc import files


class DiskModel:
    """Folder -> name -> inode, as the client sees it (*volatile*) and as a power cut would
    leave it (*durable*); which inodes' bytes are on the disk. Files there at the start are."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.lock = threading.RLock()
        self.ids = iter(range(1, 1 << 30))
        self.volatile: dict[str, dict[str, int]] = {}
        self.written: set[int] = set()
        self.loose: dict[str, int] = {}
        """Files flushed under a name the model never saw made (temp files)."""
        for parent, dirs, names in os.walk(root):
            self.volatile[parent] = {name: next(self.ids) for name in dirs + names}
            self.written |= set(self.volatile[parent].values())
        self.durable = {folder: dict(names) for folder, names in self.volatile.items()}
        self.violations: list[str] = []
        self.checked: Counter[str] = Counter()

    def mine(self, path: str) -> bool:
        inside = path == self.root or path.startswith(self.root + os.sep)
        return inside and "/.fsync" not in path

    # -- what the client does ----------------------------------------------------------------

    def take(self, path: str) -> int:
        """The inode at *path*, out of its folder (a name the model never saw: a new one)."""
        folder, name = os.path.split(path)
        inode = self.volatile.get(folder, {}).pop(name, None)
        return inode if inode is not None else self.loose.pop(path, None) or next(self.ids)

    def renamed(self, src: str, dst: str) -> None:
        self.volatile.setdefault(os.path.dirname(dst), {})[os.path.basename(dst)] = self.take(src)

    def unlinked(self, path: str) -> None:
        self.take(path)

    def made_folder(self, path: str) -> None:
        self.volatile.setdefault(os.path.dirname(path), {})[os.path.basename(path)] = next(self.ids)
        self.volatile[path], self.durable[path] = {}, {}

    def flushing(self, path: str, is_folder: bool) -> tuple[str, object]:
        """At an fsync's start: what it will have made durable once it returns."""
        if is_folder:
            return "folder", dict(self.volatile.get(path, {}))
        folder, name = os.path.split(path)
        inode = self.volatile.get(folder, {}).get(name)
        if inode is None:
            inode = self.loose.setdefault(path, next(self.ids))
        return "file", inode

    def flushed(self, path: str, what: tuple[str, object]) -> None:
        kind, state = what
        if kind == "folder":
            self.durable[path] = state  # type: ignore[assignment]
        else:
            self.written.add(state)  # type: ignore[arg-type]

    # -- what the state DB says ------------------------------------------------------------

    def lookup(self, path: str, names: dict[str, dict[str, int]]) -> int | None:
        folder = self.root
        inode = None
        for part in os.path.relpath(path, self.root).split(os.sep):
            inode = names.get(folder, {}).get(part)
            if inode is None:
                return None
            folder = os.path.join(folder, part)
        return inode

    def row(self, path: str) -> None:
        """A base for *path*: a power cut must leave this very file there, whole."""
        self.checked["row"] += 1
        now = self.lookup(path, self.volatile)
        if now is None:
            return  # nothing there now: the row will be compared with the disk anyway
        if self.lookup(path, self.durable) != now or now not in self.written:
            self.violations.append(f"row for {path} before it was on the disk for good")

    def gone(self, path: str) -> None:
        """No base for *path*: a power cut must not bring the file back."""
        self.checked["gone"] += 1
        if self.lookup(path, self.volatile) is None and self.lookup(path, self.durable):
            self.violations.append(f"row of {path} removed before its delete was on the disk")


@pytest.fixture
def disk(monkeypatch):
    """Install a DiskModel over a folder: ``disk(root)`` starts following it."""
    models: list[DiskModel] = []

    def follow(root: Path) -> DiskModel:
        model = DiskModel(root)
        models.append(model)
        hook(monkeypatch, model)
        return model

    return follow


def hook(monkeypatch, model: DiskModel) -> None:
    real = {name: getattr(os, name) for name in ("fsync", "replace", "rename", "unlink",
                                                   "mkdir", "rmdir")}  # fmt: skip

    def fsync(fd: int) -> None:
        # A folder removed since it was opened (a prune racing a flush) reads "... (deleted)";
        # its flush still makes its entries' removal durable.
        path = os.readlink(f"/proc/self/fd/{fd}").removesuffix(" (deleted)")
        if not model.mine(path):
            return real["fsync"](fd)
        with model.lock:
            what = model.flushing(path, stat.S_ISDIR(os.fstat(fd).st_mode))
        real["fsync"](fd)
        with model.lock:
            model.flushed(path, what)

    def moving(name: str):
        def move(src, dst, **kw):
            real[name](src, dst, **kw)
            if model.mine(os.fspath(src)):
                with model.lock:
                    model.renamed(os.path.abspath(src), os.path.abspath(dst))

        return move

    def one_path(name: str, then):
        def call(path, *args, **kw):
            real[name](path, *args, **kw)
            full = os.path.abspath(path)
            if model.mine(full):
                with model.lock:
                    then(full)

        return call

    real_put, real_remove = StateDB.put, StateDB.remove

    def put(self, entries):
        entries = list(entries)
        with model.lock:
            for entry in entries:
                model.row(os.path.join(model.root, entry.path))
        real_put(self, entries)

    def remove(self, paths):
        paths = list(paths)
        with model.lock:
            for path in paths:
                model.gone(os.path.join(model.root, path))
        real_remove(self, paths)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", moving("replace"))
    monkeypatch.setattr(os, "rename", moving("rename"))
    monkeypatch.setattr(os, "unlink", one_path("unlink", model.unlinked))
    monkeypatch.setattr(os, "mkdir", one_path("mkdir", model.made_folder))
    monkeypatch.setattr(os, "rmdir", one_path("rmdir", model.unlinked))
    monkeypatch.setattr(StateDB, "put", put)
    monkeypatch.setattr(StateDB, "remove", remove)


async def server_changes(address: str, puts: dict[str, bytes], removes: list[str]) -> None:
    async with await Client.connect(address) as client:
        for path, data in puts.items():
            await client.put_bytes(data, path)
        for path in removes:
            await client.rm(path)


async def sync_once(folder: Path, address: str) -> int:
    db = StateDB(folder, create=not StateDB.exists(folder))
    try:
        return await SyncEngine(folder, db, address, "default", "test", once=True).run()
    finally:
        db.close()


async def server_files(address: str) -> dict[str, bytes]:
    async with await Client.connect(address) as client:
        return {e.path: e.digest for e in await client.ls()}


def test_every_state_write_follows_what_it_records_onto_the_disk(server, tmp_path, disk):
    folder = (tmp_path / "B").resolve()
    folder.mkdir()
    first = {"a.txt": b"a 1", "dir/b.txt": b"b", "dir/c.txt": b"c", "gone/x.txt": b"x",
             "gone/y.txt": b"y", "ren/old.txt": b"renamed on the server", "conf.txt": b"c 1",
             "mine.txt": b"deleted here"}  # fmt: skip
    run(server_changes(server.address, first, []))
    assert run(sync_once(folder, server.address)) == 0
    model = disk(folder)
    run(server_changes(
        server.address,
        {"deep/er/n1.txt": b"new in new folders", "deep/n2.txt": b"n2", "a.txt": b"a 2",
         "solo/only/n3.txt": b"alone in new folders",
         "ren/new.txt": b"renamed on the server", "conf.txt": b"c 2 from there"},
        ["dir/b.txt", "gone/x.txt", "gone/y.txt", "ren/old.txt"],
    ))  # fmt: skip
    (folder / "conf.txt").write_bytes(b"c 2 from here")  # a conflict
    (folder / "mine.txt").unlink()  # a local delete
    assert run(sync_once(folder, server.address)) == 0

    assert model.violations == []
    assert model.checked["row"] >= 6 and model.checked["gone"] >= 6, model.checked
    here = files(folder)
    assert {p: digest_of(d) for p, d in here.items()} == run(server_files(server.address))
    assert not (folder / "gone").exists() and "mine.txt" not in here
    assert here["ren/new.txt"] == b"renamed on the server" and here["conf.txt"] == b"c 2 from there"
    assert [p for p in here if p.startswith("conf.sync-conflict-")], here


def test_the_disk_model_sees_a_row_written_before_the_flush(tmp_path, disk):
    """The check has teeth: a rename not yet flushed, then a row, is a violation; so is a
    delete whose folder was not flushed before its row went."""
    root = (tmp_path / "F").resolve()
    root.mkdir()
    (root / "old.txt").write_bytes(b"old")
    model = disk(root)
    temp = root / ".new.txt.fs-tmp-1"
    temp.write_bytes(b"new")
    durable.fsync_path(temp)
    os.replace(temp, root / "new.txt")
    model.row(str(root / "new.txt"))
    os.unlink(root / "old.txt")
    model.gone(str(root / "old.txt"))
    assert len(model.violations) == 2, model.violations
    durable.fsync_path(root)
    model.row(str(root / "new.txt"))
    model.gone(str(root / "old.txt"))
    assert len(model.violations) == 2, model.violations


def test_folder_flushes_are_shared_and_each_waits_for_one_begun_after_it(tmp_path, monkeypatch):
    flushes: list[tuple[float, float]] = []
    real = durable.fsync_path

    def timed(path) -> None:
        began = time.monotonic()
        real(path)
        flushes.append((began, time.monotonic()))

    monkeypatch.setattr(durable, "fsync_path", timed)

    async def main() -> list[tuple[float, float]]:
        shared = FolderSync()

        async def one(delay: int) -> tuple[float, float]:
            for _ in range(delay):
                await asyncio.sleep(0)
            asked = time.monotonic()
            await shared.sync(tmp_path)
            return asked, time.monotonic()

        return await asyncio.gather(*(one(i % 7) for i in range(60)))

    calls = asyncio.run(main())
    for asked, returned in calls:
        assert any(asked <= began and ended <= returned for began, ended in flushes)
    assert len(flushes) < len(calls) / 4, f"{len(flushes)} flushes for {len(calls)} calls"


def test_a_failed_folder_flush_fails_its_waiters_and_the_next_one_works(tmp_path):
    async def main() -> None:
        shared = FolderSync()
        missing = tmp_path / "missing"
        results = await asyncio.gather(*(shared.sync(missing) for _ in range(5)),
                                       return_exceptions=True)  # fmt: skip
        assert all(isinstance(r, FileNotFoundError) for r in results), results
        missing.mkdir()
        await shared.sync(missing)
        assert not shared.running and not shared.next

    asyncio.run(main())


def test_a_file_written_right_after_its_download_is_read_again(server, tmp_path, monkeypatch):
    """An edit that lands between a download's rename and its base row: the base gets no
    inode and the path is decided again, so the edit is read and sent (in the same run), not
    taken for the downloaded content."""
    folder = tmp_path / "B"
    folder.mkdir()
    run(server_changes(server.address, {"late.txt": b"from the server"}, []))
    real = FolderSync.sync_all
    edited = b"edited right after the download"

    async def edit_meanwhile(self, folders) -> None:
        if (folder / "late.txt").read_bytes() != edited:
            (folder / "late.txt").write_bytes(edited)
        await real(self, folders)

    monkeypatch.setattr(FolderSync, "sync_all", edit_meanwhile)
    assert run(sync_once(folder, server.address)) == 0
    db = StateDB(folder)
    base: BaseEntry | None = db.get("late.txt")
    db.close()
    assert base is not None and base.digest == digest_of(edited)
    assert run(server_files(server.address))["late.txt"] == digest_of(edited)


def test_a_crash_while_taking_a_new_store_leaves_the_old_one_recorded(tmp_path, monkeypatch):
    """A new store's id, the forgotten versions and the position from 0 are one commit: a
    crash before the position is written must not leave the new id with the old store's
    position (the next start would skip the new store's changes below it for good)."""
    folder = tmp_path / "B"
    folder.mkdir()
    db = StateDB(folder, create=True)
    db.set_meta(store_id="aa" * 16, last_seq=50)
    db.put([BaseEntry("f.txt", 1, 1, 0o644, 1, b"d" * 16, 40)])
    engine = SyncEngine(folder, db, "127.0.0.1:1", "default", "test", once=True)
    real = StateDB.set_meta

    def crash_at_the_position(self, **values):
        if "last_seq" in values:
            raise KeyboardInterrupt("the process dies here")
        real(self, **values)

    monkeypatch.setattr(StateDB, "set_meta", crash_at_the_position)
    with pytest.raises(KeyboardInterrupt):
        engine.check_store(bytes.fromhex("bb" * 16))
    db.close()
    after = StateDB(folder)
    assert (after.meta("store_id"), after.meta("last_seq")) == ("aa" * 16, "50")
    assert after.get("f.txt").version == 40
    after.close()


def test_a_download_into_a_folder_another_one_just_made_flushes_its_parent_too(tmp_path):
    """Two downloads into one new folder: the second finds the folder made, but its name is
    on the disk only once the first download's flush of the parent ends. Until then the
    second flushes that parent as well (the race a flaky run of the test above showed)."""
    made = durable.NewFolders()
    first = made.make(tmp_path / "deep" / "er", tmp_path)
    assert first == [tmp_path / "deep" / "er", tmp_path / "deep"]
    assert (tmp_path / "deep" / "er").is_dir()
    assert made.make(tmp_path / "deep", tmp_path) == [tmp_path / "deep"]  # still fresh
    made.flushed(first)
    assert made.make(tmp_path / "deep", tmp_path) == []
    assert made.make(tmp_path / "deep" / "er", tmp_path) == []
    assert made.make(tmp_path / "new", tmp_path) == [tmp_path / "new"]
