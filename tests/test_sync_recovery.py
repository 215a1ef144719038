"""A live sync folder never stays out of sync after an action that did not apply: a download
cut by a real worker kill, a file edited here while its new version downloads. The saved sync
position never moves past a version the folder has not applied, and what did not apply is
decided again from a fresh look at both sides."""

from __future__ import annotations

import os
import signal

import xxhash

from fsclient import Client
from tests.conftest import run
from tests.serverproc import ServerProcess, wait_for
from tests.syncproc import SyncProcess, digests, files, status

ROUNDS = 3
"""A round whose cut came too late (the download had finished) is tried again."""


def holds(folder, name: str, data: bytes) -> bool:
    """*folder* has *data* under *name* (the size is looked at first: a poll is cheap)."""
    path = folder / name
    try:
        return path.stat().st_size == len(data) and path.read_bytes() == data
    except FileNotFoundError:
        return False


def temp_files(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if ".fs-tmp-" in p.name]


def server_digests(server: ServerProcess) -> dict[str, bytes]:
    async def listing() -> dict[str, bytes]:
        async with await Client.connect(server.address) as client:
            return {e.path: e.digest for e in await client.ls()}

    return run(listing())


def put(server: ServerProcess, data: bytes, path: str) -> None:
    async def upload() -> None:
        async with await Client.connect(server.address) as client:
            await client.put_bytes(data, path)

    run(upload())


def cut_a_download(server: ServerProcess, b: SyncProcess, size: int, freeze: bool = False
                   ) -> tuple[str, bytes]:  # fmt: skip
    """Upload a new file and kill the only worker (SIGKILL) while B downloads it; tried again
    with another file if the download finished first. *freeze*: B is stopped (SIGSTOP) over
    the kill, and left so. The file's name and content."""
    for attempt in range(ROUNDS):
        name = f"cut{attempt}.bin"
        data = os.urandom(size)
        victim = server.child("worker-0")
        put(server, data, name)
        wait_for(lambda: temp_files(b.folder) or (b.folder / name).exists(), 30,  # noqa: B023
                 "B's download to start")  # fmt: skip
        if freeze:
            b.proc.send_signal(signal.SIGSTOP)  # it can neither finish nor reconnect
        victim.kill()
        if not (b.folder / name).exists():
            return name, data  # the kill cut the download
        if freeze:
            b.proc.send_signal(signal.SIGCONT)
    raise AssertionError("every download finished before the worker kill landed")


def test_a_download_cut_by_a_worker_kill_is_fetched_after_reconnecting(server_factory, tmp_path):
    server = server_factory("--workers", "1", "--store-size", "600MiB")
    b = SyncProcess(tmp_path / "B", server.address, debounce=0.5)
    b.folder.mkdir()
    b.start()
    try:
        name, data = cut_a_download(server, b, 256 * 1024 * 1024)
        wait_for(lambda: "reconnecting" in b.log.text(), 30, "B to notice the lost connection")
        wait_for(lambda: holds(b.folder, name, data), 60, "B to fetch the file after reconnecting")
        wait_for(lambda: not temp_files(b.folder), 10, "no temp file left")
        assert "pending changes: 0" in status(b.folder)
        log = b.log.text()
        assert "Traceback" not in log and "never retrieved" not in log, log
        assert f"{name}: connection" not in log, log  # one line for the session, none per file
    finally:
        assert b.stop() == 0


def test_an_edit_during_a_download_keeps_both_versions_everywhere(server_factory, tmp_path):
    server = server_factory("--workers", "2", "--store-size", "600MiB")
    a = SyncProcess(tmp_path / "A", server.address, debounce=0.3)
    b = SyncProcess(tmp_path / "B", server.address, debounce=0.3)
    a.folder.mkdir()
    b.folder.mkdir()
    a.start()
    b.start()
    try:
        for attempt in range(ROUNDS):
            name = f"P{attempt}.txt"
            (a.folder / name).write_text("the first version")
            wait_for(lambda: (b.folder / name).exists(), 10, "the first version on B")  # noqa: B023
            big = os.urandom(96 * 1024 * 1024)
            (a.folder / name).write_bytes(big)
            wait_for(lambda: temp_files(b.folder), 30, "B's download to start")
            mine = f"B's edit, round {attempt}".encode()
            (b.folder / name).write_bytes(mine)
            edited_during_download = bool(temp_files(b.folder))
            wait_for(lambda: "changed locally" in b.log.text() or not temp_files(b.folder), 30,
                     "B's download to end")  # fmt: skip
            if edited_during_download and "changed locally" in b.log.text():
                break
        else:
            raise AssertionError("B's edit never landed while its download ran")
        want = {xxhash.xxh3_128_digest(big), xxhash.xxh3_128_digest(mine)}

        def both_versions_everywhere() -> bool:
            seen = [digests(p.folder) for p in (a, b)] + [server_digests(server)]
            if any(s != seen[0] for s in seen[1:]):
                return False
            copies = [p for p in seen[0] if p.startswith(f"P{attempt}.sync-conflict-")]
            return (len(copies) == 1 and seen[0].get(name) in want
                    and {seen[0][name], seen[0][copies[0]]} == want)  # fmt: skip

        wait_for(both_versions_everywhere, 30, "A, B and the server to hold both versions")
        assert (a.folder / name).read_bytes() == big  # the server's version keeps the name
        for proc in (a, b):
            assert "pending changes: 0" in status(proc.folder)
    finally:
        a.stop()
        b.stop()


def test_a_restart_after_a_cut_download_fetches_the_file(server_factory, tmp_path):
    """The saved position: a client stopped right after a cut download reads the change again
    when it starts (it must not have saved a position past it)."""
    server = server_factory("--workers", "1", "--store-size", "600MiB")
    b = SyncProcess(tmp_path / "B", server.address, debounce=0.5)
    b.folder.mkdir()
    b.start()
    try:
        name, data = cut_a_download(server, b, 200 * 1024 * 1024, freeze=True)
        b.proc.send_signal(signal.SIGTERM)  # it stops as soon as it runs again
        b.proc.send_signal(signal.SIGCONT)
        assert b.proc.wait(10) == 0
        assert files(b.folder).get(name) is None
        b.start()
        wait_for(lambda: holds(b.folder, name, data), 60, "the restarted client to fetch the file")
    finally:
        b.stop()


def test_an_upload_cut_by_a_worker_kill_is_sent_again(server_factory, tmp_path):
    """The other direction: a live upload cut by a worker kill is one warning and a
    reconnect, and the file is sent again (no traceback of a task nobody awaited)."""
    server = server_factory("--workers", "1", "--store-size", "600MiB")
    a = SyncProcess(tmp_path / "A", server.address, debounce=0.3)
    a.folder.mkdir()
    a.start()
    try:
        for attempt in range(ROUNDS):
            name = f"up{attempt}.bin"
            data = os.urandom(256 * 1024 * 1024)
            used = server.metric("fs_store_used_bytes")
            (a.folder / name).write_bytes(data)
            wait_for(lambda: server.metric("fs_store_used_bytes") > used, 30,  # noqa: B023
                     "A's upload to start")  # fmt: skip
            server.kill_child("worker-0")
            wait_for(lambda: server.http_get("/readyz")[0] == 200, 30, "a new worker")
            if name not in server_digests(server):
                break  # the kill cut the upload
        else:
            raise AssertionError("every upload finished before the worker kill landed")
        expected = xxhash.xxh3_128_digest(data)
        wait_for(lambda: server_digests(server).get(name) == expected, 60,
                 "A to send the file again after reconnecting")  # fmt: skip
        assert "pending changes: 0" in status(a.folder)
        log = a.log.text()
        assert "reconnecting" in log and "Traceback" not in log, log
        assert "never retrieved" not in log and f"{name}: connection" not in log, log
    finally:
        assert a.stop() == 0
