"""The client's defaults, exercised for real: with no ``--server`` and no ``FS_SERVER`` it
talks to 127.0.0.1:7878, and ``FS_SHARE`` (like ``FS_SERVER``) stands in for its option,
which wins over it.

No test may use a fixed port on the host's loopback (a ``make run`` server may hold 7878), so
the default-server test runs the server and the clients in a private network namespace with a
loopback of its own. Network namespaces belong to threads: one thread enters a new one, and
every process it starts (the server, ``ip``, the clients) lives there; the test's other
threads, and every other test, stay on the host's network.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cli import fsclient
from tests.served import listing, stop_cleanly
from tests.serverproc import start_server

CLONE_NEWNET = 0x40000000


def in_own_network(scenario: Callable[[], Any]) -> Any:
    """Run *scenario* in a new thread that has entered a new network namespace whose
    loopback is up; return what it returns (or raise what it raised). Skip the test if the
    namespace cannot be made here (not root, or a sandbox that forbids it)."""
    outcome: dict[str, Any] = {}

    def body() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(CLONE_NEWNET) != 0:
            outcome["skip"] = f"unshare(CLONE_NEWNET): {os.strerror(ctypes.get_errno())}"
            return
        try:
            up = subprocess.run(["ip", "link", "set", "lo", "up"], capture_output=True,
                                text=True, timeout=30)  # fmt: skip
        except FileNotFoundError:
            outcome["skip"] = "the ip command is missing"
            return
        if up.returncode != 0:
            outcome["skip"] = f"cannot bring the namespace's loopback up: {up.stderr.strip()}"
            return
        try:
            outcome["result"] = scenario()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=body, name="private-network")
    thread.start()  # a thread of its own: its namespace must not outlive it in a pool
    thread.join()
    if "skip" in outcome:
        pytest.skip(f"no private network namespace: {outcome['skip']}")
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")


def test_the_default_server_is_127_0_0_1_port_7878(tmp_path):
    local = tmp_path / "hello.txt"
    local.write_text("hello")
    folder = tmp_path / "synced"
    folder.mkdir()
    (folder / "from-sync.txt").write_text("sync")

    def scenario() -> tuple[list[subprocess.CompletedProcess[str]], float]:
        server = start_server("--port", "7878", "--workers", "1", "--store-size", "8MiB")
        try:
            assert server.address == "127.0.0.1:7878"
            results = [  # no --server and no FS_* variable: the defaults
                fsclient("put", str(local), "hello.txt"),
                fsclient("ls"),
                fsclient("sync", str(folder), "--once"),
                fsclient("status", str(folder)),
            ]
            return results, server.metric("fs_store_files")
        finally:
            stop_cleanly(server)

    (put, ls, sync, status), files = in_own_network(scenario)
    assert (put.returncode, put.stderr) == (0, "")
    assert put.stdout.startswith("uploaded hello.txt (5 bytes, version 1)")
    assert (ls.returncode, ls.stdout.count("\n"), ls.stdout[:13]) == (0, 1, "hello.txt\t5\t1")
    assert sync.returncode == 0, sync.stderr
    assert "1 uploaded, 1 downloaded" in sync.stdout
    assert "server:          127.0.0.1:7878\n" in status.stdout
    assert "share:           default\n" in status.stdout
    assert files == 2  # both reached the server in the namespace
    assert (folder / "hello.txt").read_text() == "hello"


def test_fs_share_and_fs_server_stand_in_for_their_options(server, tmp_path):
    local = tmp_path / "a.txt"
    local.write_text("a")
    to_alpha = fsclient("put", str(local), "a.txt", "--server", server.address,
                        "--create-share", env={"FS_SHARE": "alpha"})  # fmt: skip
    assert to_alpha.returncode == 0, to_alpha.stderr
    to_beta = fsclient("put", str(local), "b.txt", "--server", server.address,
                       "--share", "beta", "--create-share", env={"FS_SHARE": "alpha"})  # fmt: skip
    assert to_beta.returncode == 0, to_beta.stderr
    assert (listing(server, "alpha"), listing(server, "beta"), listing(server, "default")) == (
        ["a.txt"], ["b.txt"], []
    )  # fmt: skip
    from_env = fsclient("ls", env={"FS_SERVER": server.address, "FS_SHARE": "alpha"})
    assert (from_env.returncode, from_env.stdout.split("\t")[0]) == (0, "a.txt")
    option_wins = fsclient("ls", "--server", server.address, env={"FS_SERVER": "127.0.0.1:1"})
    assert (option_wins.returncode, option_wins.stdout) == (0, "")  # the default share
    bad = fsclient("ls", "--server", server.address, env={"FS_SHARE": "no good"})
    assert bad.returncode == 1
    assert bad.stderr == ("fsclient: error: share name 'no good' may only use letters, "
                          "digits, '.', '_' and '-'\n")  # fmt: skip

    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "s.txt").write_text("s")
    synced = fsclient("sync", str(folder), "--once", "--server", server.address,
                      env={"FS_SHARE": "alpha"})  # fmt: skip
    assert synced.returncode == 0, synced.stderr
    assert f"with {server.address}/alpha:" in synced.stdout
    assert listing(server, "alpha") == ["a.txt", "s.txt"]
    again = fsclient("sync", str(folder), "--once", "--server", server.address)
    assert again.returncode == 0, again.stderr  # the folder remembers its share
    assert f"with {server.address}/alpha:" in again.stdout
    assert "share:           alpha\n" in fsclient("status", str(folder)).stdout
    assert Path(folder / "a.txt").read_text() == "a"
