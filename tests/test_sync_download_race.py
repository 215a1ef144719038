"""A local delete that lands between a download's rename and the write of its base: the
delete must reach the server, in the first pass (no watcher runs yet) and live. The delete is
made by a hook on the folder flush the download awaits after its rename, so the race is hit
every time; the engine runs in this process against a real server."""

from __future__ import annotations

from pathlib import Path

from fsclient import Client
from fsclient.sync.engine import SyncEngine
from tests.conftest import run
from tests.serverproc import eventually
from tests.test_sync_engine import DEADLINE, Settled, live, make_engine, server_paths, until_listed


def delete_after_rename(engine: SyncEngine, name: str) -> list[str]:
    """Delete *name* at the first folder flush that finds it in place (a download's, after its
    rename, before its base is written); the list says when that happened."""
    deleted: list[str] = []
    real = engine.actions.folders.sync_all

    async def sync_all(folders) -> None:  # type: ignore[no-untyped-def]
        await real(folders)
        target = engine.folder / name
        if not deleted and target.exists():
            target.unlink()
            deleted.append(name)

    engine.actions.folders.sync_all = sync_all  # type: ignore[method-assign]
    return deleted


async def put(address: str, name: str, data: bytes) -> None:
    async with await Client.connect(address) as client:
        await client.put_bytes(data, name)


def test_a_delete_right_after_a_first_pass_download_reaches_the_server(server, tmp_path: Path):
    folder = tmp_path / "B"
    folder.mkdir()
    run(put(server.address, "a.txt", b"from elsewhere"))
    engine = make_engine(folder, server.address)
    engine.once = True
    deleted = delete_after_rename(engine, "a.txt")
    try:
        assert run(engine.run()) == 0
        assert deleted == ["a.txt"]  # the race was hit
        assert engine.db.get("a.txt") is None  # the delete was synced, then its base went
    finally:
        engine.db.close()
    assert not (folder / "a.txt").exists()
    assert "a.txt" not in server_paths(server.address)


def test_a_delete_right_after_a_live_download_reaches_the_server(server, tmp_path: Path):
    folder = tmp_path / "B"
    folder.mkdir()
    engine = make_engine(folder, server.address)
    deleted = delete_after_rename(engine, "b.txt")

    async def downloaded_then_deleted(settled: Settled) -> None:
        await put(server.address, "b.txt", b"made live elsewhere")
        await eventually(lambda: deleted, DEADLINE, "the download and the delete after it")
        await until_listed(server.address, lambda paths: "b.txt" not in paths, "the delete sent")
        await eventually(lambda: not engine.news, DEADLINE, "the server's news applied")

    run(live(engine, downloaded_then_deleted))
    assert deleted == ["b.txt"]
    assert not (folder / "b.txt").exists()
    assert "b.txt" not in server_paths(server.address)
