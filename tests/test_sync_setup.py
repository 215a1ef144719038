"""How a folder is bound to a server, locked while synced, and let go: a server is saved only
once a connection with it succeeded, another server needs ``--rebind``, one ``fsclient sync``
per folder (the second names the first's pid), and ``fsclient unsync``. Real servers, real
``fsclient`` processes; messages and exit codes asserted exactly."""

from __future__ import annotations

import signal

import pytest

from tests.cli import fsclient
from tests.served import listing
from tests.serverproc import free_port, wait_for
from tests.syncproc import SyncProcess, once, status

NEVER = "fsclient: error: never connected to {address} (cannot connect to {address}: "


def closed_address() -> str:
    return f"127.0.0.1:{free_port()}"  # nothing listens there


def synced(tmp_path, server, name: str = "f"):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    first = once(folder, server.address)
    assert first.returncode == 0, first.stderr
    return folder


def test_a_failed_first_connection_saves_no_server(server, tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    typo = closed_address()
    failed = once(folder, typo)
    assert (failed.returncode, failed.stdout) == (1, "")
    assert failed.stderr.startswith(NEVER.format(address=typo)), failed.stderr
    assert failed.stderr.endswith("): nothing was synced\n")
    assert not (folder / ".fsync").exists()  # the folder is as it was: not bound to the typo
    # a plain sync now goes to the server of the environment, with no --rebind
    fixed = fsclient("sync", str(folder), "--once", env={"FS_SERVER": server.address})
    assert fixed.returncode == 0, fixed.stderr
    assert listing(server) == ["a.txt"]
    assert f"server:          {server.address}\n" in status(folder)


def test_a_live_sync_that_never_connected_says_so_and_exits_1(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    typo = closed_address()
    sync = SyncProcess(folder, typo).start(wait=False)
    try:
        wait_for(lambda: f"cannot reach {typo}" in sync.log.text(), 20, "a failed attempt")
        assert (folder / ".fsync" / "lock").exists()  # held while it tries
        assert sync.stop(signal.SIGTERM) == 1
    finally:
        sync.stop()
    wait_for(lambda: "nothing was synced" in sync.log.text(), 10, "the last line (by a pipe)")
    assert NEVER.format(address=typo) in sync.log.text()
    assert "synced " not in sync.log.text()  # no summary of a sync that never was
    assert not (folder / ".fsync").exists()


def test_a_failed_rebind_keeps_the_server_the_folder_had(server, tmp_path):
    folder = synced(tmp_path, server)
    typo = closed_address()
    failed = once(folder, typo, "--rebind")
    assert failed.returncode == 1
    moving, never = failed.stderr.splitlines()
    assert moving == f"fsclient: moving {folder} from {server.address} to {typo}"
    assert never.startswith(NEVER.format(address=typo)), failed.stderr
    assert f"server:          {server.address}\n" in status(folder)
    (folder / "b.txt").write_text("b")
    again = fsclient("sync", str(folder), "--once")  # no --server: the folder's own
    assert again.returncode == 0, again.stderr
    assert listing(server) == ["a.txt", "b.txt"]


@pytest.mark.parametrize("how", ["option", "environment"])
def test_another_server_needs_rebind(server_factory, tmp_path, how):
    first = server_factory()
    second = server_factory()
    folder = synced(tmp_path, first)
    refusal = (f"fsclient: error: {folder} is synced with server {first.address}, not "
               f"{second.address}; to move it to {second.address}, add --rebind\n")  # fmt: skip
    if how == "option":
        refused = once(folder, second.address)
    else:
        refused = fsclient("sync", str(folder), "--once", env={"FS_SERVER": second.address})
    assert (refused.returncode, refused.stdout, refused.stderr) == (2, "", refusal)
    assert listing(second) == []
    moved = once(folder, second.address, "--rebind")
    assert moved.returncode == 0, moved.stderr
    assert f"fsclient: moving {folder} from {first.address} to {second.address}\n" in moved.stderr
    assert listing(second) == ["a.txt"]  # a new server: everything is sent to it
    assert f"server:          {second.address}\n" in status(folder)


def test_rebind_without_a_server_is_a_usage_error(server, tmp_path):
    folder = synced(tmp_path, server)
    result = fsclient("sync", str(folder), "--once", "--rebind")
    assert (result.returncode, result.stdout) == (2, "")
    assert (
        result.stderr
        == "fsclient: error: --rebind needs --server: the server to move the folder to\n"
    )


def busy(folder, pid: int) -> str:
    return f"{folder} is being synced by process {pid} (fsclient sync); stop that one first\n"


def test_a_second_sync_of_a_folder_exits_at_once_naming_the_first(server, tmp_path):
    folder = synced(tmp_path, server)
    first = SyncProcess(folder, server.address).start()
    try:
        assert first.proc is not None
        second = once(folder, server.address)
        assert (second.returncode, second.stdout) == (1, "")
        assert second.stderr == "fsclient: error: " + busy(folder, first.proc.pid)
        live = fsclient("sync", str(folder), server=server)  # a live one too, not only --once
        assert (live.returncode, live.stderr) == (
            1,
            "fsclient: error: " + busy(folder, first.proc.pid),
        )
        assert first.proc.poll() is None  # the first one goes on
        first.stop(signal.SIGKILL)  # a holder killed outright lets go too
    finally:
        first.stop()
    (folder / "b.txt").write_text("b")
    after = once(folder, server.address)
    assert after.returncode == 0, after.stderr
    assert listing(server) == ["a.txt", "b.txt"]


def test_unsync_removes_the_state_and_keeps_the_files(server, tmp_path):
    folder = synced(tmp_path, server)
    result = fsclient("unsync", str(folder))
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (f"{folder} is no longer synced with {server.address}/default: "
                             f"its state is removed, its files are kept\n")  # fmt: skip
    assert not (folder / ".fsync").exists()
    assert (folder / "a.txt").read_text() == "a"
    assert listing(server) == ["a.txt"]  # nothing was deleted on the server either
    again = fsclient("unsync", str(folder))
    expected = f"fsclient: error: {folder} is not a synced folder (no {folder}/.fsync)\n"
    assert (again.returncode, again.stdout, again.stderr) == (1, "", expected)


def test_unsync_refuses_while_a_sync_holds_the_folder(server, tmp_path):
    folder = synced(tmp_path, server)
    sync = SyncProcess(folder, server.address).start()
    try:
        assert sync.proc is not None
        result = fsclient("unsync", str(folder))
        expected = "fsclient: error: cannot unsync: " + busy(folder, sync.proc.pid)
        assert (result.returncode, result.stdout, result.stderr) == (1, "", expected)
        assert (folder / ".fsync" / "state.sqlite").exists()
        assert sync.proc.poll() is None
    finally:
        sync.stop()


def test_an_address_that_is_no_address_saves_nothing_either(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    result = once(folder, "127.0.0.1:port")  # (a host alone means the default port)
    expected = ("fsclient: error: invalid server address '127.0.0.1:port': "
                "expected HOST or HOST:PORT\n")  # fmt: skip
    assert (result.returncode, result.stdout, result.stderr) == (1, "", expected)
    assert not (folder / ".fsync").exists()


def test_verbose_and_quiet_together_are_a_usage_error(tmp_path):
    result = fsclient("sync", str(tmp_path), "--once", "-v", "-q")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.endswith(
        "fsclient sync: error: argument -q/--quiet: not allowed with argument -v/--verbose\n"
    )
    assert not (tmp_path / ".fsync").exists()
