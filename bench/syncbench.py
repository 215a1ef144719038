"""Sync measurements: whole ``fsclient sync`` / ``rsync -a`` commands, live-client latency, and
a live client's memory and idle CPU.

Commands run in their own process group and are killed with it on any error or Ctrl-C. Every
timed run is checked outside the clock (exit code, the client's tally line, the share's
listing or the rsync destination), and a mismatch aborts the benchmark.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
import uvloop

from bench.fsbench import BenchCheckFailed
from bench.procs import Child
from bench.synctree import count_files
from fsclient.client import Client

TALLY = re.compile(r"(\d+) uploaded, (\d+) downloaded, (\d+) deleted, (\d+) conflicts?, "
                   r"(\d+) failed")  # fmt: skip
WATCHING = re.compile(r"watching ")
COMMAND_TIMEOUT = 600.0


def fsclient_cmd() -> list[str]:
    """The installed ``fsclient`` script next to this interpreter (else ``-m fsclient``)."""
    script = Path(sys.executable).with_name("fsclient")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "fsclient"]


def run_timed(cmd: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> tuple[float, str]:
    """Run *cmd* to completion in its own process group; (wall seconds, stdout + stderr).
    The clock covers process start-up and exit. A failure raises ``BenchCheckFailed``."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        list(cmd),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
        elapsed = time.perf_counter() - start
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if proc.returncode != 0:
        raise BenchCheckFailed(f"{' '.join(cmd)} failed ({proc.returncode}):\n{out[-3000:]}")
    return elapsed, out


@dataclass
class Tally:
    uploaded: int
    downloaded: int
    deleted: int
    conflicts: int
    failed: int


def fs_once(folder: Path, server: str, share: str, *, create: bool = False) -> tuple[
    float, Tally | None
]:  # fmt: skip
    """``fsclient sync FOLDER --once``, timed whole; its tally line if it printed one.
    *create* adds ``--create-share`` (a share other than ``default`` must exist otherwise)."""
    cmd = [*fsclient_cmd(), "sync", str(folder), "--once", "--server", server, "--share", share]
    cmd += ["--create-share"] if create else []
    elapsed, out = run_timed(cmd)
    found = TALLY.search(out)
    return elapsed, Tally(*map(int, found.groups())) if found else None


def check_tally(tally: Tally | None, uploaded: int, what: str) -> None:
    if tally is None:  # the line's format may change: the listing check still applies
        return
    if (tally.uploaded, tally.downloaded, tally.deleted, tally.failed) != (uploaded, 0, 0, 0):
        raise BenchCheckFailed(f"{what}: expected {uploaded} uploads and nothing else: {tally}")


async def _listing(server: str, share: str) -> dict[str, tuple[int, bytes]]:
    async with await Client.connect(server, share) as client:
        return {e.path: (e.size, e.digest) for e in await client.ls("")}


def check_share(server: str, share: str, digests: dict[str, bytes], size: int) -> None:
    """The share holds exactly *digests* (path -> digest), every file *size* bytes."""
    listed = uvloop.run(_listing(server, share))
    wrong = [p for p, d in digests.items() if listed.get(p) != (size, d)]
    if wrong or len(listed) != len(digests):
        raise BenchCheckFailed(
            f"share {share}: {len(listed)} files listed for {len(digests)} sent, "
            f"{len(wrong)} missing or wrong (e.g. {wrong[:3]})"
        )


def rsync_once(src: Path, url: str) -> float:
    """The whole ``rsync -a SRC/ URL/`` command, timed."""
    return run_timed(["rsync", "-a", f"{src}/", f"{url}/"])[0]


def check_rsync(dest: Path, count: int) -> None:
    got = count_files(dest) if dest.is_dir() else 0
    if got != count:
        raise BenchCheckFailed(f"rsync: {got} of {count} files arrived in {dest}")


def children_cpu() -> float:
    """User + system CPU seconds of this process's reaped children (the timed commands)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tree_cpu(pid: int, *, transient: bool = False, settle: float = 2.0) -> float:
    """User + system CPU seconds of process *pid*, its live descendants and its reaped
    children. With *transient* (an rsync daemon: one short-lived process per connection),
    wait up to *settle* s for its children to exit first, so their time is counted."""
    proc = psutil.Process(pid)
    deadline = time.monotonic() + settle
    while transient and proc.children() and time.monotonic() < deadline:
        time.sleep(0.01)
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


class LiveClient(Child):
    """A live ``fsclient sync DIR`` (no ``--once``), started and waited for until it prints
    ``watching`` (its initial reconcile is done and the folder watcher is running)."""

    def __init__(self, folder: Path, server: str, share: str, *, debounce: float | None = None,
                 create: bool = False, ready_timeout: float = 300.0) -> None:  # fmt: skip
        cmd = [*fsclient_cmd(), "sync", str(folder), "--server", server, "--share", share]
        cmd += ["--create-share"] if create else []
        if debounce is not None:
            cmd += ["--debounce", str(debounce)]
        super().__init__(f"fsclient sync {folder.name}", cmd)
        try:
            self.wait_until(lambda: self.search(WATCHING), ready_timeout, "'watching' line")
        except BaseException:
            self.stop(timeout=2.0)
            raise


@dataclass
class Latency:
    samples: list[float]
    """Seconds from the write in A until B has the content, one per change that arrived."""
    timeouts: int
    created: int
    rewritten: int


def save_to_complete(a: Path, b: Path, changes: int, *, names: int = 20, poll: float = 0.001,
                     timeout: float = 10.0, gap: float = 0.05) -> Latency:  # fmt: skip
    """*changes* times: write distinct content to a file in A (the first *names* changes
    create new files, later ones rewrite them), then poll B's copy every *poll* seconds until
    it has that content. The clock starts just before the write."""
    samples: list[float] = []
    timeouts = 0
    for i in range(changes):
        name = f"lat-{i % names:03d}.txt"
        data = f"change {i:05d} {os.urandom(12).hex()}\n".encode()
        target = b / name
        start = time.perf_counter()
        with open(a / name, "wb") as f:
            f.write(data)
        deadline = start + timeout
        while True:
            with contextlib.suppress(OSError):
                if target.read_bytes() == data:
                    samples.append(time.perf_counter() - start)
                    break
            if time.perf_counter() > deadline:
                timeouts += 1
                break
            time.sleep(poll)
        time.sleep(gap)  # let both clients finish their bookkeeping (B sees its own write)
    created = min(changes, names)
    return Latency(samples, timeouts, created, changes - created)


def nearest_rank(values: list[float], q: float) -> float:
    """The q-quantile by nearest rank (p99 of 100 samples: the 99th smallest)."""
    ordered = sorted(values)
    rank = math.ceil(q * len(ordered) - 1e-9)
    return ordered[min(max(rank, 1), len(ordered)) - 1]


@dataclass
class Idle:
    rss: int
    hwm: int
    cpu_percent: float
    seconds: float
    threads: int


def vm_hwm(pid: int) -> int:
    """Peak resident set size (``VmHWM``) from /proc, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def idle_usage(child: Child, seconds: float) -> Idle:
    """CPU time (user + system, the process and any children) used over *seconds* of wall
    time, as a percentage of one core, then its RSS and peak RSS."""
    proc = psutil.Process(child.proc.pid)

    def cpu() -> float:
        total = 0.0
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                total += t.user + t.system
        return total

    before, start = cpu(), time.monotonic()
    time.sleep(seconds)
    used, wall = cpu() - before, time.monotonic() - start
    if child.proc.poll() is not None:
        raise BenchCheckFailed(f"{child.name} exited while idle:\n{child.output()}")
    rss = proc.memory_info().rss
    return Idle(rss, vm_hwm(proc.pid), 100.0 * used / wall, wall, proc.num_threads())
