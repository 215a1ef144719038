"""Start real ``fsserver`` processes for integration tests, and clean up after them."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

READY = re.compile(r"fsserver ready on (\S+):(\d+)")
METRICS = re.compile(r"fsserver metrics on (\S+):(\d+)")
HTTP = re.compile(r"fsserver http on (\S+):(\d+)")
PR_SET_PDEATHSIG = 1
ROOT = Path(__file__).resolve().parent.parent


async def eventually(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """``wait_for`` inside a running event loop: the loop goes on while it waits."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for programs that cannot take
    port 0 and say which port they got)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_children(pid: int) -> list[psutil.Process]:
    """Every process a server started: the fork server, the workers, hashers and persister it
    forked, and multiprocessing's resource tracker."""
    return psutil.Process(pid).children(recursive=True)


def worker_pids(pid: int) -> set[int]:
    """The pids of a server's workers."""
    return {p.pid for p in server_children(pid) if p.name().startswith("fs-worker-")}


def wait_for(predicate, timeout: float, what: str, interval: float = 0.01):
    """Poll *predicate* until it returns something truthy, or fail after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@dataclass
class ServerLog:
    lines: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def text(self) -> str:
        with self.lock:
            return "".join(self.lines)

    def find(self, pattern: re.Pattern[str]) -> re.Match[str] | None:
        with self.lock:
            for line in self.lines:
                match = pattern.search(line)
                if match:
                    return match
        return None


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    log: ServerLog
    host: str = ""
    port: int = 0
    metrics_port: int = 0
    metrics_host: str = ""
    http_port: int = 0
    """The HTTP API's port (``--http-port``), 0 if it is not served."""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def http_get(self, path: str, timeout: float = 5.0,
                 headers: dict[str, str] | None = None) -> tuple[int, str]:  # fmt: skip
        url = f"http://{self.metrics_host or self.host}:{self.metrics_port}{path}"
        request = urllib.request.Request(url, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metric(self, name: str, default: float | None = None) -> float:
        """The first sample of *name* (a bare name or ``name{labels}``); *default* if it has
        none yet, or KeyError without one."""
        _, body = self.http_get("/metrics")
        for line in body.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        if default is None:
            raise KeyError(name)
        return default

    def metric_total(self, name: str) -> float:
        """*name* summed over its labels (0 before its first sample)."""
        _, body = self.http_get("/metrics")
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in body.splitlines()
            if line.startswith((name + " ", name + "{"))
        )

    def shm_segments(self) -> list[str]:
        return sorted(p.name for p in Path("/dev/shm").glob(f"fs-{self.pid}-*"))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> float:
        """Signal the server and wait for it; returns how long it took to exit."""
        start = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill_group()
                raise
        return time.monotonic() - start

    def child(self, name: str) -> psutil.Process:
        """The server's child process *name* (``worker-0``, ``hasher-1``...)."""
        found = [p for p in server_children(self.pid) if p.name() == f"fs-{name}"]
        assert len(found) == 1, f"{len(found)} children named fs-{name}"
        return found[0]

    def kill_child(self, name: str, timeout: float = 10.0) -> psutil.Process:
        """SIGKILL the child *name* and wait until the supervisor has seen it die; returns
        the dead process (its pid tells the replacement apart)."""
        victim = self.child(name)
        victim.kill()
        exited = f"{name} (pid {victim.pid}) exited"
        wait_for(lambda: exited in self.log.text(), timeout, f"the supervisor to log {exited!r}")
        return victim

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)


def die_with_parent() -> None:
    """In the child before exec: SIGTERM when the test process dies, even by SIGKILL (a killed
    pytest must not leave servers and their shared memory behind)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start_server(*args: str, env: dict[str, str] | None = None,
                 timeout: float = 60.0) -> ServerProcess:  # fmt: skip
    cmd = [sys.executable, "-m", "fsserver", "--host", "127.0.0.1", "--port", "0",
           "--metrics-port", "0", *args]  # fmt: skip
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True, preexec_fn=die_with_parent,
    )  # fmt: skip
    log = ServerLog()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with log.lock:
                log.lines.append(line)

    threading.Thread(target=pump, daemon=True).start()
    server = ServerProcess(proc, log)

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"fsserver exited with {proc.returncode}:\n{log.text()}")
        return log.find(READY) is not None

    try:
        wait_for(ready, timeout, "fsserver ready line")
    except BaseException:
        server.kill_group()
        raise
    ready_match = log.find(READY)
    metrics_match = log.find(METRICS)
    assert ready_match and metrics_match
    server.host, server.port = ready_match.group(1), int(ready_match.group(2))
    server.metrics_host, server.metrics_port = metrics_match.group(1), int(metrics_match.group(2))
    http_match = log.find(HTTP)
    server.http_port = int(http_match.group(2)) if http_match else 0
    return server
