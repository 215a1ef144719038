"""Run real ``fsclient sync`` processes on temp folders for the sync tests."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from fsclient.localfiles import TEMP_MARK
from tests.cli import cli_env, fsclient, fsclient_command
from tests.serverproc import ROOT, ServerLog, wait_for

DEBOUNCE = 0.3


@dataclass
class SyncProcess:
    folder: Path
    address: str
    debounce: float = DEBOUNCE
    proc: subprocess.Popen[str] | None = None
    log: ServerLog = field(default_factory=ServerLog)
    extra: tuple[str, ...] = ()
    """More options for ``fsclient sync``."""

    def rebind(self, address: str) -> None:
        """The server moved (restarted on another port): the next start moves the folder to
        it (a folder bound to one server is refused another without ``--rebind``)."""
        self.address = address
        self.extra = ("--rebind",)

    def start(self, wait: bool = True) -> SyncProcess:
        """Start the client; *wait*: until it is live (its first pass over the folder done)."""
        self.log = ServerLog()
        self.proc = subprocess.Popen(
            fsclient_command("sync", str(self.folder), "--debounce", str(self.debounce),
                             *self.extra, server=self.address),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=cli_env({"PYTHONUNBUFFERED": "1"}),
        )  # fmt: skip
        threading.Thread(target=self._pump, daemon=True).start()
        if not wait:
            return self
        wait_for(lambda: "watching" in self.log.text() or self.proc.poll() is not None, 30,
                 f"sync of {self.folder} to start")  # fmt: skip
        assert self.proc.poll() is None, self.log.text()
        return self

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.log.lock:
                self.log.lines.append(line)

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)


def files(folder: Path) -> dict[str, bytes]:
    """Every synced file under *folder* (not the state folder, not the temp file of a
    download in progress), path -> content. A live client may rename or delete files while
    this looks: what vanishes is left out (os.walk skips a vanished folder), so a caller
    polling for a condition just looks again."""
    found = {}
    for parent, _dirs, names in os.walk(folder):
        base = Path(parent)
        for name in names:
            path = base / name
            rel = path.relative_to(folder).as_posix()
            if rel.startswith(".fsync/") or TEMP_MARK in name or path.is_symlink():
                continue
            try:
                found[rel] = path.read_bytes()
            except (FileNotFoundError, IsADirectoryError):
                continue
    return found


def digests(folder: Path) -> dict[str, bytes]:
    return {path: xxhash.xxh3_128_digest(data) for path, data in files(folder).items()}


def once(folder: Path, address: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return fsclient("sync", str(folder), "--once", *extra, server=address)


def status(folder: Path) -> str:
    """``fsclient status DIR``'s report (it must succeed)."""
    result = fsclient("status", str(folder))
    assert result.returncode == 0, result.stderr
    return result.stdout


def started(parent: Path, address: str, *names: str, debounce: float = DEBOUNCE
            ) -> list[SyncProcess]:  # fmt: skip
    """Live clients on new folders ``parent/NAME``, started (stop each when done)."""
    procs = []
    for name in names:
        (parent / name).mkdir()
        procs.append(SyncProcess(parent / name, address, debounce))
    try:
        for proc in procs:
            proc.start()
    except BaseException:
        for proc in procs:
            proc.stop()
        raise
    return procs
