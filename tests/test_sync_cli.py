"""``fsclient sync`` and ``fsclient status`` as a user runs them: the guard against syncing a
folder with another share than its own, ``status`` on a folder that was never synced, the exit
code 2 of a live sync whose folder vanishes, and a clean stop on SIGTERM. Real server, real
``fsclient`` processes; messages and exit codes asserted exactly."""

from __future__ import annotations

import re
import shutil
import signal

import pytest

from tests.cli import fsclient
from tests.served import listing
from tests.serverproc import wait_for
from tests.syncproc import SyncProcess

GONE = ("fsclient: error: {} or its .fsync marker is gone (moved, deleted or unmounted?); "
        "stopping so that nothing is deleted on the server")  # fmt: skip


def test_a_folder_synced_with_one_share_refuses_another(server, tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    first = fsclient("sync", str(folder), "--once", "--server", server.address)
    assert first.returncode == 0, first.stderr
    (folder / "b.txt").write_text("b")
    refusal = f"fsclient: error: {folder} is synced with share 'default', not 'other'\n"
    for extra, env in ((["--share", "other"], None), ([], {"FS_SHARE": "other"})):
        other = fsclient("sync", str(folder), "--once", "--server", server.address, *extra,
                         env=env)  # fmt: skip
        assert (other.returncode, other.stdout, other.stderr) == (1, "", refusal)
    assert listing(server, "other") == []
    assert listing(server) == ["a.txt"]  # b.txt waits for a sync with the right share
    status = fsclient("status", str(folder))
    assert status.returncode == 0
    assert "share:           default\n" in status.stdout


@pytest.mark.parametrize("exists", [True, False], ids=["unsynced-folder", "no-folder"])
def test_status_of_a_folder_that_was_never_synced(tmp_path, exists):
    folder = tmp_path / "plain"
    if exists:
        folder.mkdir()
        (folder / "x.txt").write_text("x")
    result = fsclient("status", str(folder))
    assert (result.returncode, result.stdout) == (1, "")
    expected = f"fsclient: error: {folder} is not a synced folder (no {folder}/.fsync)\n"
    assert result.stderr == expected
    assert not (folder / ".fsync").exists()  # looking did not make it one


def move_away(sync: SyncProcess) -> None:
    sync.folder.rename(sync.folder.with_name("moved"))


def delete_marker(sync: SyncProcess) -> None:
    shutil.rmtree(sync.folder / ".fsync")


@pytest.mark.parametrize(
    "vanish", [move_away, delete_marker], ids=["folder-moved", "marker-deleted"]
)
def test_a_live_sync_whose_folder_vanishes_exits_2(server, tmp_path, vanish):
    folder = tmp_path / "live"
    folder.mkdir()
    (folder / "kept.txt").write_text("kept")
    sync = SyncProcess(folder, server.address).start()
    try:
        wait_for(lambda: listing(server) == ["kept.txt"], 10, "the first sync")
        vanish(sync)
        assert sync.proc is not None
        assert sync.proc.wait(10) == 2
    finally:
        sync.stop()
    wait_for(lambda: GONE.format(folder) in sync.log.text(), 10, "the error line (by a pipe)")
    assert "Traceback" not in sync.log.text()
    assert listing(server) == ["kept.txt"]  # nothing was deleted on the server


def test_sigterm_stops_a_live_sync_cleanly_with_its_summary(server, tmp_path):
    folder = tmp_path / "live"
    folder.mkdir()
    (folder / "one.txt").write_text("1")
    (folder / "two.txt").write_text("22")
    sync = SyncProcess(folder, server.address).start()
    wait_for(lambda: listing(server) == ["one.txt", "two.txt"], 10, "the first sync")
    assert sync.stop(signal.SIGTERM) == 0
    summary = re.compile(
        rf"^synced {re.escape(str(folder))} with {re.escape(server.address)}/default: 2 "
        r"uploaded, 0 downloaded, 0 deleted, 0 conflicts, 0 failed \(3 bytes\) in \d+\.\d s$",
        re.MULTILINE,
    )
    wait_for(lambda: summary.search(sync.log.text()), 10, "the summary line (by a pipe)")
    assert "Traceback" not in sync.log.text()
    assert "error" not in sync.log.text().lower()
