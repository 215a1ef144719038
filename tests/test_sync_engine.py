"""The sync engine in this process against a real server: cases that need a look inside (its
queue, its tally, one injected failure) or many sessions of one engine, as ``run()`` makes
them on reconnects. Every wait is for a condition with a deadline."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from common.digest import digest_of
from fsclient import Client
from fsclient.sync import engine as engine_module
from fsclient.sync.actions import Actions, Outcome
from fsclient.sync.engine import SyncEngine
from fsclient.sync.ignore import IgnoreRules
from fsclient.sync.items import UploadList
from fsclient.sync.pending import ServerNews
from fsclient.sync.plan import RemoteState
from fsclient.sync.scan import Scanner
from fsclient.sync.state import StateDB
from tests.conftest import run
from tests.serverproc import eventually
from tests.syncproc import once

DEADLINE = 15.0


async def listing(address: str) -> set[str]:
    async with await Client.connect(address) as client:
        return {e.path for e in await client.ls()}


def server_paths(address: str) -> set[str]:
    return run(listing(address))


async def until_listed(address: str, want: Callable[[set[str]], bool], what: str) -> None:
    """Wait (the loop going on) until the server's listing is as *want* says."""
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while not want(await listing(address)):
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def make_engine(folder: Path, address: str) -> SyncEngine:
    return SyncEngine(folder, StateDB(folder, create=True), address, "default", "test",
                      debounce=0.2)  # fmt: skip


class Settled(logging.Handler):
    """The paths the engine settles, in order (a wrapper around ``settle``), and whether it
    is live (its 'watching' log line)."""

    def __init__(self, engine: SyncEngine) -> None:
        super().__init__()
        self.paths: list[str] = []
        self.watching = False
        settle = engine.settle

        async def counting(path: str) -> None:
            self.paths.append(path)
            await settle(path)

        engine.settle = counting  # type: ignore[method-assign]

    def emit(self, record: logging.LogRecord) -> None:
        self.watching |= record.getMessage().startswith("watching ")


async def live(engine: SyncEngine, during: Callable[[Settled], Awaitable[None]]) -> Settled:
    """Run *engine* live, do *during* once it watches, then stop it (it must not have ended)."""
    settled = Settled(engine)
    logger = logging.getLogger("fsclient.sync")
    logger.addHandler(settled)
    logger.setLevel(logging.INFO)
    task = asyncio.create_task(engine.run())
    try:
        await eventually(lambda: settled.watching or task.done(), DEADLINE, "the engine live")
        assert not task.done(), task.result()
        await during(settled)
        assert not task.done(), task.result()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        logger.removeHandler(settled)
        engine.db.close()
    return settled


def test_a_path_ignored_since_it_was_synced_is_not_deleted_on_the_server(
    server, tmp_path, monkeypatch
):
    monkeypatch.setattr(engine_module, "RESCAN_EVERY", 0.2)
    folder = tmp_path / "A"
    folder.mkdir()
    (folder / "app.log").write_bytes(b"a log everyone shares")
    assert once(folder, server.address).returncode == 0
    (folder / ".fsignore").write_text("*.log\n")  # "stop syncing my logs"

    async def rescanned(settled: Settled) -> None:  # a rescan sees app.log gone from view
        await eventually(lambda: "app.log" in settled.paths, DEADLINE, "app.log looked at")

    run(live(make_engine(folder, server.address), rescanned))
    assert "app.log" in server_paths(server.address)
    assert (folder / "app.log").exists()


def test_after_a_store_reset_a_file_whose_upload_failed_once_is_sent(
    server_factory, tmp_path, monkeypatch
):
    first = server_factory("--workers", "1", "--store-size", "16MiB")
    folder = tmp_path / "A"
    folder.mkdir()
    (folder / "x.txt").write_bytes(b"x")
    (folder / "y.txt").write_bytes(b"y")
    assert once(folder, first.address).returncode == 0
    second = server_factory("--workers", "1", "--store-size", "16MiB")  # a new, empty store
    upload = Actions.upload
    calls = []

    async def refused_once(self: Actions, files: UploadList) -> dict[str, Outcome]:
        calls.append(files)
        if len(calls) == 1:  # the reseed's batch: x.txt refused this once (say, NO_SPACE)
            undone = await upload(self, UploadList(f for f in files if f[0].path != "x.txt"))
            return {**undone, "x.txt": self.fail("x.txt", OSError("no space (for now)"))}
        return await upload(self, files)

    monkeypatch.setattr(Actions, "upload", refused_once)

    async def sent(settled: Settled) -> None:  # the retry comes after a second
        await until_listed(second.address, lambda p: p == {"x.txt", "y.txt"}, "x.txt sent")

    engine = make_engine(folder, second.address)
    run(live(engine, sent))
    assert engine.actions.tally.failed == {}


def test_a_failed_path_that_later_needs_nothing_is_no_longer_failed(server_factory, tmp_path):
    server = server_factory("--workers", "1", "--store-size", "16MiB", "--max-files", "1")
    folder = tmp_path / "A"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"a")
    assert once(folder, server.address).returncode == 0
    engine = make_engine(folder, server.address)

    async def refused_then_deleted(settled: Settled) -> None:
        (folder / "b.txt").write_bytes(b"b")  # refused: the server holds its one file
        await eventually(lambda: "b.txt" in engine.actions.tally.failed, DEADLINE, "refusal")
        (folder / "b.txt").unlink()  # the user gives up on it
        await eventually(lambda: not engine.actions.tally.failed, DEADLINE, "no failure left")

    run(live(engine, refused_then_deleted))


def test_one_new_file_in_a_big_folder_settles_that_file_only(server, tmp_path):
    folder = tmp_path / "A"
    (folder / "photos").mkdir(parents=True)
    for i in range(3000):
        (folder / "photos" / f"{i}.jpg").write_bytes(b"")
    assert once(folder, server.address).returncode == 0
    engine = make_engine(folder, server.address)

    async def one_file(settled: Settled) -> None:
        (folder / "photos" / "new.jpg").write_bytes(b"new")
        await eventually(lambda: "photos/new.jpg" in settled.paths, DEADLINE, "new.jpg")
        await eventually(lambda: engine.queue.idle and not engine.timers, DEADLINE, "quiet")
        # not the 3,000 beside it (its folder's mark is looked at: is the folder empty now?)
        assert set(settled.paths) <= {"photos/new.jpg", "photos/.fsfolder"}
        assert "photos/new.jpg" in settled.paths

    run(live(engine, one_file))
    assert "photos/new.jpg" in server_paths(server.address)


def test_an_unreadable_file_fails_alone_and_the_client_goes_on(server, tmp_path, monkeypatch):
    """As a non-root user, ``chmod 000 secret.txt`` after an edit; simulated (the tests run as
    root, which reads anything)."""
    folder = tmp_path / "A"
    folder.mkdir()
    (folder / "secret.txt").write_bytes(b"v1")
    assert once(folder, server.address).returncode == 0
    hash_file = Scanner.hash

    def unreadable(self: Scanner, path: str) -> tuple:
        if path == "secret.txt":
            raise PermissionError(13, "Permission denied", path)
        return hash_file(self, path)

    monkeypatch.setattr(Scanner, "hash", unreadable)
    engine = make_engine(folder, server.address)

    async def edited(settled: Settled) -> None:
        (folder / "secret.txt").write_bytes(b"v2, then chmod 000")
        await eventually(lambda: "secret.txt" in engine.actions.tally.failed, DEADLINE,
                         "the failure")  # fmt: skip
        (folder / "other.txt").write_bytes(b"the client goes on")
        await until_listed(server.address, lambda p: "other.txt" in p, "another file sent")

    run(live(engine, edited))


def test_a_store_reset_in_a_running_client_forgets_the_old_stores_versions(
    server_factory, tmp_path
):
    """One engine across sessions, as ``run()`` reconnects: 35 changes of ours went to the
    first store, then the server comes back empty. The position saved for the new store must
    not be one of the old store's versions (the changes of others below it would be skipped)."""
    first = server_factory("--workers", "1", "--store-size", "16MiB")
    second = server_factory("--workers", "1", "--store-size", "16MiB")
    folder = tmp_path / "A"
    folder.mkdir()
    for i in range(20):
        (folder / f"{i}.txt").write_bytes(str(i).encode())
    engine = make_engine(folder, first.address)
    engine.once = True

    async def sessions() -> None:
        assert await engine.run() == 0
        for i in range(5, 20):
            (folder / f"{i}.txt").unlink()
        assert await engine.run() == 0  # 15 deletes: our last version is 35
        engine.server = second.address
        assert await engine.run() == 0  # a new store: 5 uploads, versions 1..5

    run(sessions())
    saved = int(engine.db.meta("last_seq"))
    engine.db.close()

    async def others() -> None:  # versions 6..45
        async with await Client.connect(second.address) as client:
            await client.put_many([(bytes_file(tmp_path, i), f"other{i}.txt") for i in range(40)])

    run(others())
    assert once(folder, second.address).returncode == 0
    missing = [f"other{i}.txt" for i in range(40) if not (folder / f"other{i}.txt").exists()]
    assert (saved, missing) == (5, [])


def bytes_file(folder: Path, i: int) -> str:
    path = folder / f"src-{i}"
    path.write_bytes(b"theirs")
    return str(path)


def test_a_download_records_what_it_fetched_not_what_the_news_said(server, tmp_path):
    """The news says a.txt is v1, but the server holds v2 by the time it is fetched (v2's
    notification is on its way). The base must say v2's digest: b.txt, a copy of v1, would
    otherwise be copied from a.txt (holding v2) and be recorded as v1, never corrected."""
    folder = tmp_path / "B"
    folder.mkdir()

    async def main() -> None:
        async with await Client.connect(server.address) as other:
            v1 = await other.put_bytes(b"version 1", "a.txt")
            await other.put_bytes(b"version 1", "b.txt")
            await other.put_bytes(b"version 2", "a.txt")
        db = StateDB(folder, create=True)
        actions = Actions(folder, db, Scanner(folder, IgnoreRules.load(folder)), "b")
        news = RemoteState(v1.version, False, v1.size, v1.mtime_ns, v1.mode, v1.digest)
        async with await Client.connect(server.address) as client:
            actions.client = client
            assert await actions.download("a.txt", news, None) is Outcome.DONE
            assert await actions.download("b.txt", news, None) is Outcome.DONE
        for name in ("a.txt", "b.txt"):
            base = db.get(name)
            assert base is not None and base.digest == digest_of((folder / name).read_bytes())
        db.close()

    run(main())
    assert (folder / "a.txt").read_bytes() == b"version 2"
    assert (folder / "b.txt").read_bytes() == b"version 1"


def test_the_news_heap_does_not_grow_behind_one_stuck_path():
    news = ServerNews()
    news.add("stuck.bin", RemoteState(1, False))  # a download that keeps failing
    for version in range(2, 20_002):
        state = RemoteState(version, False)
        news.add(f"f{version % 100}", state)
        assert news.mark_applied(f"f{version % 100}", state)
    assert news.position() == 0  # nothing past the stuck change counts as applied
    assert len(news._heap) < 1_000
    assert news.mark_applied("stuck.bin", news.latest["stuck.bin"])
    assert news.position() == 20_001


def test_a_live_start_with_nothing_left_to_settle_saves_its_position(server, tmp_path):
    """The first pass applied everything: the position (and the end of a first sync's start
    over) is saved then, not at the first live change. Else a client stopped before any
    change read the whole history again at every start, as a start-over."""
    folder = tmp_path / "B"
    folder.mkdir()

    async def seed() -> None:
        async with await Client.connect(server.address) as client:
            for i in range(3):
                await client.put_bytes(f"file {i}".encode(), f"f{i}.txt")

    run(seed())
    engine = make_engine(folder, server.address)

    async def saved(settled: Settled) -> None:
        assert settled.paths == []  # nothing was settled live
        assert (engine.db.meta("reseed"), engine.db.meta("last_seq")) == ("0", "3")

    run(live(engine, saved))
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == ["f0.txt", "f1.txt", "f2.txt"]
