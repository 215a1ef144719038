"""Child processes of a benchmark run: the fsserver, the rsync daemon, the raw-TCP receiver.

Each one runs in its own process group (``start_new_session``) so that stopping it also stops
whatever it spawned, and so a Ctrl-C at the terminal reaches only the benchmark, which then stops
them in order. ``Child.stop`` is idempotent: the run registers every child on an ``ExitStack``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FS_READY = re.compile(r"fsserver ready on (\S+):(\d+)")
FS_METRICS = re.compile(r"fsserver metrics on (\S+):(\d+)")


class ChildError(RuntimeError):
    """A child process failed to start or misbehaved; the message carries its output."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
        return True
    return False


class Child:
    """A subprocess whose merged stdout/stderr is collected line by line by a thread."""

    STOP_SIGNAL = signal.SIGTERM
    """What ``stop`` sends the leader first (it may clean up)."""

    def __init__(self, name: str, cmd: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        self.name = name
        self.lines: list[str] = []
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(
            list(cmd),
            cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._pump, name=f"{name}-log", daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.lock:
                self.lines.append(line)

    def output(self) -> str:
        with self.lock:
            return "".join(self.lines[-60:])

    def search(self, pattern: re.Pattern[str]) -> re.Match[str] | None:
        with self.lock:
            for line in self.lines:
                if match := pattern.search(line):
                    return match
        return None

    def wait_until(self, ready: Callable[[], object], timeout: float, what: str) -> object:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise ChildError(
                    f"{self.name} exited with {self.proc.returncode} before {what}:\n"
                    + self.output()
                )
            value = ready()
            if value:
                return value
            if time.monotonic() > deadline:
                raise ChildError(f"{self.name}: no {what} after {timeout} s:\n{self.output()}")
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0) -> None:
        """``STOP_SIGNAL`` to the leader (it may clean up), then SIGKILL the whole group."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(self.STOP_SIGNAL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


class FsServer(Child):
    """``python -m fsserver`` on a free loopback port, metrics endpoint included."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        cmd = [sys.executable, "-m", "fsserver", "--host", "127.0.0.1", "--port", "0",
               "--metrics-port", "0", "--log-level", "info", *args]  # fmt: skip
        super().__init__("fsserver", cmd, env)
        try:
            self.wait_until(lambda: self.search(FS_READY), 60.0, "ready line")
            ready, metrics = self.search(FS_READY), self.search(FS_METRICS)
            assert ready is not None and metrics is not None
        except BaseException:
            self.stop(timeout=2.0)
            raise
        self.address = f"{ready.group(1)}:{ready.group(2)}"
        self.metrics_url = f"http://{metrics.group(1)}:{metrics.group(2)}/metrics"

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(self.metrics_url, timeout=5.0) as resp:
            body = resp.read().decode()
        for line in body.splitlines():
            if line.startswith((name + " ", name + "{")):
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)


class RsyncDaemon(Child):
    """``rsync --daemon --no-detach`` serving module ``mod`` (read-write) from *root*."""

    def __init__(self, workdir: Path, root: Path) -> None:
        self.port = free_port()
        conf = workdir / "rsyncd.conf"
        owner = "uid = root\ngid = root\n" if os.geteuid() == 0 else ""
        conf.write_text(
            f"{owner}use chroot = no\nmax connections = 8\n"
            f"[mod]\n  path = {root}\n  read only = no\n  list = yes\n"
        )
        cmd = ["rsync", "--daemon", "--no-detach", f"--config={conf}", f"--port={self.port}",
               "--address=127.0.0.1", f"--log-file={workdir / 'rsyncd.log'}"]  # fmt: skip
        super().__init__("rsync daemon", cmd)
        try:
            self.wait_until(lambda: port_open("127.0.0.1", self.port), 15.0, "listening port")
        except BaseException:
            self.stop(timeout=2.0)
            raise
        self.url = f"rsync://127.0.0.1:{self.port}/mod"


class RawReceiver(Child):
    """``python -m bench.rawtcp``: a uvloop sink that acknowledges each complete transfer."""

    READY = re.compile(r"rawtcp ready on (\d+)")

    def __init__(self) -> None:
        super().__init__("raw receiver", [sys.executable, "-m", "bench.rawtcp"])
        try:
            match = self.wait_until(lambda: self.search(self.READY), 15.0, "ready line")
        except BaseException:
            self.stop(timeout=2.0)
            raise
        assert isinstance(match, re.Match)
        self.port = int(match.group(1))
