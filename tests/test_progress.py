"""Long transfers show progress on a terminal, and only there."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import termios

from fsclient import Client
from tests.cli import cli_env, fsclient, fsclient_command
from tests.conftest import run
from tests.serverproc import ROOT


def test_api_reports_progress_up_to_the_size(server, tmp_path):
    local = tmp_path / "f.bin"
    local.write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    seen: list[tuple[int, int]] = []

    async def main():
        async with await Client.connect(server.address) as client:
            await client.put(
                local, "f.bin", progress=lambda done, total: seen.append(("up", done, total))
            )
            await client.get(
                "f.bin",
                tmp_path / "g.bin",
                progress=lambda done, total: seen.append(("down", done, total)),
            )

    run(main())
    size = local.stat().st_size
    for way in ("up", "down"):
        points = [(done, total) for w, done, total in seen if w == way]
        assert points, way
        assert [done for done, _ in points] == sorted(done for done, _ in points)
        assert points[-1] == (size, size)


def cli_output(server, args: list[str], on_tty: bool) -> str:
    """Run fsclient with stderr on a pseudo-terminal (or a pipe); return what stderr got."""
    if not on_tty:
        return fsclient(*args, server=server).stderr
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 100 columns
    proc = subprocess.Popen(fsclient_command(*args, server=server), cwd=ROOT, env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=slave)  # fmt: skip
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(60) == 0
    return b"".join(chunks).decode(errors="replace")


def test_cli_shows_a_bar_on_a_terminal_only(server, tmp_path):
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(24 * 1024 * 1024))
    shown = cli_output(server, ["put", str(local), "big.bin"], on_tty=True)
    assert "put big.bin" in shown
    assert "%|" in shown
    assert cli_output(server, ["get", "big.bin", str(tmp_path / "b.bin")], on_tty=False) == ""
    shown = cli_output(server, ["get", "big.bin", str(tmp_path / "c.bin")], on_tty=True)
    assert "get big.bin" in shown


def test_initial_sync_shows_files_and_bytes_on_a_terminal(server, tmp_path):
    folder = tmp_path / "folder"
    folder.mkdir()
    for n in range(300):
        (folder / f"{n}.bin").write_bytes(os.urandom(4096))
    shown = cli_output(server, ["sync", str(folder), "--once"], on_tty=True)
    assert "sync:" in shown and "/300" in shown
    (folder / "one-more.bin").write_bytes(b"x")
    quiet = cli_output(server, ["sync", str(folder), "--once"], on_tty=False)
    assert "%|" not in quiet
