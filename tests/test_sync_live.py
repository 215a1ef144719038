"""Acceptance of ``fsclient sync``: a real server and two or three real sync processes on
separate folders. Every wait is for a condition, with the deadline the issue sets."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import pytest
import xxhash

from common.messages import PacketType
from fsclient import Client
from tests.cli import cli_env, fsclient, fsclient_command
from tests.conftest import run
from tests.relay import Relay
from tests.serverproc import ROOT, start_server, wait_for
from tests.syncproc import DEBOUNCE, SyncProcess, digests, files, once, started, status

DEADLINE = DEBOUNCE + 2.0 + 5.0
"""The acceptance says the debounce plus 2 s; the 5 s more are for a loaded 2-core machine,
where a stalled second must not fail a test. The latency itself is measured by ``make bench``
(save-to-complete, p99)."""


@pytest.fixture
def clients(server_factory, tmp_path):
    server = server_factory("--workers", "2", "--store-size", "512MiB")
    started: list[SyncProcess] = []

    def start(name: str) -> SyncProcess:
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        proc = SyncProcess(folder, server.address).start()
        started.append(proc)
        return proc

    start.server = server  # type: ignore[attr-defined]
    yield start
    for proc in started:
        proc.stop()


def same_everywhere(*procs: SyncProcess) -> bool:
    first = digests(procs[0].folder)
    return all(digests(p.folder) == first for p in procs[1:])


def test_create_modify_delete_rename_reach_every_client(clients):
    a, b, c = clients("A"), clients("B"), clients("C")
    steps = [
        ("create", lambda: (a.folder / "hello.txt").write_text("hello")),
        ("nested", lambda: (a.folder / "x/y/z").mkdir(parents=True)
         or (a.folder / "x/y/z/deep.txt").write_text("deep")),
        ("modify", lambda: (a.folder / "hello.txt").write_text("hello again")),
        ("rename file", lambda: (a.folder / "hello.txt").rename(a.folder / "renamed.txt")),
        ("rename folder", lambda: (a.folder / "x").rename(a.folder / "w")),
        ("delete", lambda: (a.folder / "renamed.txt").unlink()),
        ("big", lambda: (a.folder / "big.bin").write_bytes(os.urandom(100 * 1024 * 1024))),
    ]  # fmt: skip
    for what, step in steps:
        step()
        wait_for(lambda: same_everywhere(a, b, c), DEADLINE + (5 if what == "big" else 0),
                 f"{what} to reach B and C")  # fmt: skip
    assert sorted(files(c.folder)) == ["big.bin", "w/y/z/deep.txt"]
    assert not (b.folder / "x").exists()


def test_edits_on_both_sides_while_one_is_offline_keep_both(clients):
    a, b, c = clients("A"), clients("B"), clients("C")
    (a.folder / "notes.txt").write_text("original")
    wait_for(lambda: same_everywhere(a, b, c), DEADLINE, "the original everywhere")
    b.stop()
    (b.folder / "notes.txt").write_text("edited on B while offline")
    (a.folder / "notes.txt").write_text("edited on A")
    wait_for(lambda: (c.folder / "notes.txt").read_text() == "edited on A", DEADLINE, "A's edit")
    b.start()

    def both_versions_everywhere() -> bool:
        for proc in (a, b, c):
            contents = files(proc.folder)
            copies = [p for p in contents if ".sync-conflict-" in p]
            if len(copies) != 1 or len(contents) != 2:
                return False
            versions = {contents["notes.txt"], contents[copies[0]]}
            if versions != {b"edited on A", b"edited on B while offline"}:
                return False
        return True

    wait_for(both_versions_everywhere, 10, "both versions on A, B and C")
    copy = next(p for p in files(a.folder) if ".sync-conflict-" in p)
    assert copy.startswith("notes.sync-conflict-") and copy.endswith(".txt")


def test_editor_atomic_save_is_one_change(clients):
    a, b = clients("A"), clients("B")
    (a.folder / "doc.md").write_text("v1")
    wait_for(lambda: same_everywhere(a, b), DEADLINE, "v1 on B")

    async def version_of(path: str) -> int:
        async with await Client.connect(clients.server.address) as client:
            return (await client.stat(path)).version

    before = run(version_of("doc.md"))
    temp = a.folder / ".doc.md.swp"  # an editor's save: write a temp file, rename it over
    temp.write_text("v2")
    temp.rename(a.folder / "doc.md")
    wait_for(lambda: (b.folder / "doc.md").read_text() == "v2", DEADLINE, "v2 on B")
    # A later change in A: its debounce ends after the temp file's, and A settles paths in
    # the order they are due, so once it is on the server a stray upload of the temp file
    # would have happened (it must not). Exactly one change for the save: the sentinel's
    # version is before + 2.
    (a.folder / "sentinel.txt").write_text("after the save")
    wait_for(lambda: (b.folder / "sentinel.txt").exists(), DEADLINE, "the sentinel on B")
    assert (b.folder / "doc.md").read_text() == "v2"
    assert run(version_of("doc.md")) == before + 1
    assert run(version_of("sentinel.txt")) == before + 2
    assert sorted(files(b.folder)) == ["doc.md", "sentinel.txt"]


def test_fsignore_applies_both_ways(clients, tmp_path):
    (tmp_path / "A").mkdir()
    (tmp_path / "A" / ".fsignore").write_text("*.log\nbuild/\n/only-top.txt\n")
    a = clients("A")
    b_folder = tmp_path / "B"
    b_folder.mkdir()
    (b_folder / ".fsignore").write_text("*.log\nbuild/\n/only-top.txt\n")
    b = clients("B")
    (a.folder / "app.log").write_text("noise")
    (a.folder / "build").mkdir()
    (a.folder / "build" / "out.o").write_text("object")
    (a.folder / "only-top.txt").write_text("top")
    (a.folder / "sub").mkdir()
    (a.folder / "sub" / "only-top.txt").write_text("not at the top: synced")
    (a.folder / "kept.txt").write_text("kept")
    wait_for(lambda: (b.folder / "kept.txt").exists() and (b.folder / "sub/only-top.txt").exists(),
             DEADLINE, "the files that are not ignored")  # fmt: skip

    async def server_paths() -> list[str]:
        async with await Client.connect(clients.server.address) as client:
            await client.put_bytes(b"from elsewhere", "remote.log")  # ignored when it comes in
            return [e.path for e in await client.ls()]

    assert sorted(run(server_paths())) == [".fsignore", "kept.txt", "remote.log",
                                           "sub/only-top.txt"]  # fmt: skip
    (b.folder / "note.txt").write_text("after the .log arrived")
    wait_for(lambda: (a.folder / "note.txt").exists(), DEADLINE, "a later file")
    assert not (b.folder / "remote.log").exists()
    assert not (b.folder / "app.log").exists() and not (b.folder / "build").exists()


def test_killed_mid_download_leaves_no_partial_file_and_finishes(clients):
    a = clients("A")
    b = clients("B")
    data = os.urandom(300 * 1024 * 1024)
    (a.folder / "huge.bin").write_bytes(data)
    wait_for(lambda: any(".fs-tmp-" in p.name for p in b.folder.iterdir()), 30,
             "B's download to start")  # fmt: skip
    b.stop(signal.SIGKILL)
    assert not (b.folder / "huge.bin").exists()
    b.start()
    wait_for(lambda: (b.folder / "huge.bin").exists(), 30, "B to finish the download")
    assert xxhash.xxh3_128_digest((b.folder / "huge.bin").read_bytes()) == (
        xxhash.xxh3_128_digest(data)
    )
    assert not [p for p in b.folder.iterdir() if ".fs-tmp-" in p.name]


def test_server_restarted_empty_is_seeded_again_and_nothing_is_deleted(tmp_path):
    server = start_server("--store-size", "64MiB")
    port = str(server.port)
    a = SyncProcess(tmp_path / "A", server.address)
    b = SyncProcess(tmp_path / "B", server.address)
    try:
        a.folder.mkdir()
        b.folder.mkdir()
        a.start()
        b.start()
        for n in range(5):
            (a.folder / f"f{n}.txt").write_text(f"file {n}")
        wait_for(lambda: len(files(b.folder)) == 5, DEADLINE + 2, "the files on B")
        before = files(a.folder)
        server.stop()
        server = start_server("--store-size", "64MiB", "--port", port)

        async def on_server() -> dict[str, int]:
            async with await Client.connect(server.address) as client:
                return {e.path: e.size for e in await client.ls()}

        wait_for(lambda: len(run(on_server())) == 5, 15, "the files back on the new server")
        # B may still be fetching what it had not finished before the restart
        wait_for(lambda: files(b.folder) == before, DEADLINE, "B to hold every file")
        assert files(a.folder) == before
    finally:
        a.stop()
        b.stop()
        server.stop()
        server.kill_group()


def test_folder_moved_away_stops_the_client_and_nothing_is_lost(clients, tmp_path):
    a, b = clients("A"), clients("B")
    for n in range(3):
        (a.folder / f"f{n}.txt").write_text(str(n))
    wait_for(lambda: same_everywhere(a, b), DEADLINE, "the files on B")
    a.folder.rename(tmp_path / "A-moved")
    wait_for(lambda: a.proc.poll() is not None, 10, "A's client to stop")
    assert a.proc.returncode != 0
    wait_for(lambda: "marker is gone" in a.log.text(), 10, "A's error line")  # (by a pipe)

    async def on_server() -> list[str]:
        async with await Client.connect(clients.server.address) as client:
            return sorted(e.path for e in await client.ls())

    assert run(on_server()) == ["f0.txt", "f1.txt", "f2.txt"]
    assert sorted(files(b.folder)) == ["f0.txt", "f1.txt", "f2.txt"]


def test_once_over_2000_small_files(server, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for n in range(2000):
        (folder / f"{n // 100:02d}").mkdir(exist_ok=True)
        (folder / f"{n // 100:02d}" / f"{n}.txt").write_bytes(os.urandom(4096))
    result = once(folder, server.address)
    assert result.returncode == 0, result.stderr
    assert "2000 uploaded, 0 downloaded, 0 deleted, 0 conflicts, 0 failed" in result.stdout
    again = once(folder, server.address)
    assert again.returncode == 0
    assert "0 uploaded, 0 downloaded, 0 deleted, 0 conflicts, 0 failed" in again.stdout
    report = status(folder)
    assert "files in sync:   2000" in report
    assert "pending changes: 0" in report


def test_symlinks_are_skipped_with_a_warning_and_never_followed(server, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not to be synced")
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "real.txt").write_text("synced")
    (folder / "link.txt").symlink_to(outside / "secret.txt")
    (folder / "linkdir").symlink_to(outside, target_is_directory=True)
    result = once(folder, server.address)
    assert result.returncode == 0, result.stderr
    assert "1 uploaded" in result.stdout
    for name in ("link.txt", "linkdir"):
        assert f"{name}: symbolic link skipped (links are not followed)" in result.stderr

    async def listing() -> list[str]:
        async with await Client.connect(server.address) as client:
            return [e.path for e in await client.ls()]

    assert run(listing()) == ["real.txt"]
    assert (folder / "link.txt").is_symlink() and (outside / "secret.txt").exists()


def test_a_connection_the_server_ends_is_one_error_not_one_per_file(server_factory, tmp_path):
    """A server that goes away (its worker killed) while a hundred uploads are open: the
    client says so once, not once per file, and exits 1. A relay holds back the server's
    answers from the first upload on, so every upload is still open when the worker dies."""
    server = server_factory("--workers", "1", "--store-size", "128MiB")
    folder = tmp_path / "f"
    folder.mkdir()
    for n in range(300):  # over the batch size limit: one file session each
        (folder / f"{n:03d}.bin").write_bytes(os.urandom(100 * 1024))
    inits = PacketType.FILE_SYNC_INIT
    with Relay(server.address, hold_from=inits) as relay, open(tmp_path / "err", "w+") as err:
        proc = subprocess.Popen(
            fsclient_command("sync", str(folder), "--once", server=relay.address), cwd=ROOT,
            env=cli_env(), stdout=subprocess.DEVNULL, stderr=err, text=True,
        )  # fmt: skip
        try:
            wait_for(lambda: relay.count(inits) >= 100 or proc.poll() is not None, 60,
                     "a hundred uploads open")  # fmt: skip
            server.kill_child("worker-0")
            assert proc.wait(60) == 1
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err.seek(0)
        stderr = err.read()
    errors = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert errors == ["fsclient: error: connection to server lost"], stderr


def test_once_reports_failure_with_a_non_zero_exit(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    result = once(folder, "127.0.0.1:1")
    assert result.returncode == 1
    assert result.stderr.startswith(
        "fsclient: error: never connected to 127.0.0.1:1 (cannot connect"
    )
    missing = fsclient("sync", str(tmp_path / "nope"), "--once")
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr


def test_a_renamed_big_file_is_not_sent_again(server_factory, tmp_path):
    """150 MiB of store, a 100 MiB file: sending it again under a new name would need room
    for a second copy. A copy (the original stays) and then a rename of the copy can only
    arrive if no content travels."""
    server = server_factory("--store-size", "150MiB")
    a, b = started(tmp_path, server.address, "A", "B")
    try:
        data = os.urandom(100 * 1024 * 1024)
        (a.folder / "video.bin").write_bytes(data)
        wait_for(lambda: (b.folder / "video.bin").exists(), DEADLINE + 5, "the file on B")
        shutil.copyfile(a.folder / "video.bin", a.folder / "copy.bin")
        wait_for(lambda: sorted(files(b.folder)) == ["copy.bin", "video.bin"], DEADLINE + 2,
                 "the copy on B")  # fmt: skip
        (a.folder / "copy.bin").rename(a.folder / "renamed.bin")
        wait_for(lambda: sorted(files(b.folder)) == ["renamed.bin", "video.bin"], DEADLINE + 2,
                 "the rename on B")  # fmt: skip
        assert (b.folder / "renamed.bin").read_bytes() == data
        assert "failed" not in a.log.text() + b.log.text()
        assert server.metric("fs_store_used_bytes") == 100 * 1024 * 1024
    finally:
        a.stop()
        b.stop()
