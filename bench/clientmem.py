"""``--suite memory``, the client's part (issue 13): ``fsclient sync`` of a folder of a million
files.

A new tree of 1,000,000 files of 1 KiB in 1,000 folders on tmpfs, and a new empty server:

1. ``fsclient sync DIR --once`` (the initial sync): the RSS of the client's processes summed
   (the folder survey's children too), sampled every 0.1 s; the peak.
2. ``fsclient sync DIR --debounce 0`` (live) until it prints ``watching``: its RSS then and
   after 5 s more, and its peak (``VmHWM``).
3. A second live client, on an empty folder whose ``.fsignore`` leaves out everything but the
   files this part writes (else it would first fetch the million files), subscribed to the
   same share: it reads every one of the share's changes like any client. Then 100 saves in
   the first folder, each timed from the write until the second folder holds the bytes
   (``syncbench.save_to_complete``): p50 and p99.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench import syncbench as sb
from bench.procs import FsServer
from bench.ramdir import ram_workdir
from bench.run import MiB
from bench.synctree import make_tree

IGNORE_ALL_BUT_SAVES = "/*\n!/lat-*.txt\n"
RSS_INITIAL_TARGET = 300 * 10**6
RSS_WATCHING_TARGET = 150 * 10**6
SAVE_P99_TARGET = 0.5


@dataclass
class ClientSettings:
    files: int = 1_000_000
    size: int = 1024
    folders: int = 1000
    changes: int = 100

    @classmethod
    def quick(cls) -> ClientSettings:
        return cls(files=100_000, folders=100, changes=20)


@dataclass
class ClientOutcome:
    initial_seconds: float = 0.0
    initial_peak: int = 0
    """Bytes: the peak of the client's processes' RSS, summed."""
    start_seconds: float = 0.0
    watching_rss: int = 0
    watching_later: int = 0
    watching_hwm: int = 0
    latency: sb.Latency = field(default_factory=lambda: sb.Latency([], 0, 0, 0))


class PeakRss:
    """Samples the summed RSS of a process and its children every 0.1 s, in a thread."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self) -> None:
        while not self.done.wait(0.1):
            with contextlib.suppress(psutil.Error):
                procs = [self.proc, *self.proc.children(recursive=True)]
                total = 0
                for p in procs:
                    with contextlib.suppress(psutil.Error):
                        total += p.memory_info().rss
                self.peak = max(self.peak, total)

    def stop(self) -> int:
        self.done.set()
        self.thread.join()
        return self.peak


def initial_sync(folder: Path, server: FsServer, out: ClientOutcome) -> None:
    cmd = [*sb.fsclient_cmd(), "sync", str(folder), "--once", "--server", server.address,
           "--share", "default", "-q"]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    peak = PeakRss(proc.pid)
    output, _ = proc.communicate(timeout=1800)
    out.initial_peak = peak.stop()
    out.initial_seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise RuntimeError(f"initial sync failed: {output.decode(errors='replace')[-2000:]}")


def run_client_part(s: ClientSettings, stack: contextlib.ExitStack) -> ClientOutcome:
    work = ram_workdir(stack, need=s.files * 4096 * 2 + 512 * MiB, inodes=s.files + 10_000)
    folder, other = work / "a", work / "b"
    make_tree(folder, s.files, s.size, s.folders)
    other.mkdir()
    (other / ".fsignore").write_text(IGNORE_ALL_BUT_SAVES)
    store = s.files * s.size // MiB * 2 + 256
    server = FsServer(["--workers", "2", "--hash-workers", "1", "--store-size", f"{store}MiB"])
    stack.callback(server.stop)
    out = ClientOutcome()
    initial_sync(folder, server, out)
    start = time.monotonic()
    a = sb.LiveClient(folder, server.address, "default", debounce=0, ready_timeout=600)
    stack.callback(a.stop)
    out.start_seconds = time.monotonic() - start
    live = psutil.Process(a.proc.pid)
    out.watching_rss = live.memory_info().rss
    b = sb.LiveClient(other, server.address, "default", debounce=0, ready_timeout=600)
    stack.callback(b.stop)
    out.latency = sb.save_to_complete(folder, other, s.changes)
    out.watching_later = live.memory_info().rss
    out.watching_hwm = sb.vm_hwm(a.proc.pid)
    return out


def method(s: ClientSettings) -> str:
    return (
        f"The client's part (`bench/clientmem.py`): a new tree of {s.files:,} files of "
        f"{s.size} bytes in {s.folders:,} folders on tmpfs and a new empty server. (1) "
        "`fsclient sync DIR --once`: the RSS of the client's processes summed (the folder "
        "survey's children too), sampled every 0.1 s, the peak. (2) `fsclient sync DIR "
        "--debounce 0` until it prints `watching`: its RSS then and after the saves below. "
        "(3) A second live client, on an empty folder whose `.fsignore` leaves out all but "
        "the files written here (it reads every change of the share, as any client does, "
        f"but does not fetch the million files), then {s.changes} saves in the first folder, "
        "each timed from the write until the second folder holds the bytes. MB = 10^6 bytes."
    )


def report(s: ClientSettings, out: ClientOutcome) -> tuple[list[str], bool]:
    lat = out.latency
    p50 = sb.nearest_rank(lat.samples, 0.5) if lat.samples else float("nan")
    p99 = sb.nearest_rank(lat.samples, 0.99) if lat.samples else float("nan")
    checks = [
        ("client RSS during the initial sync (processes summed, peak)", out.initial_peak,
         RSS_INITIAL_TARGET),
        ("live client RSS, watching (the higher of at start and after the saves)",
         max(out.watching_rss, out.watching_later), RSS_WATCHING_TARGET),
    ]  # fmt: skip
    ok = all(value <= target for _, value, target in checks) and not lat.timeouts
    ok = ok and p99 <= SAVE_P99_TARGET
    lines = [
        "| measure | value | target | verdict |",
        "|---|---:|---:|---|",
        f"| initial `fsclient sync --once` of {s.files:,} x {s.size} B | "
        f"{out.initial_seconds:.1f} s | | |",
    ]
    for what, value, target in checks:
        verdict = "PASS" if value <= target else "MISS"
        lines.append(f"| {what} | {value / 1e6:.0f} MB | <= {target / 1e6:.0f} MB | {verdict} |")
    lines += [
        f"| live client: start until `watching` | {out.start_seconds:.1f} s | | |",
        f"| live client peak RSS (`VmHWM`) | {out.watching_hwm / 1e6:.0f} MB | | |",
        f"| save in one client until another holds it, p50 ({len(lat.samples)} saves, "
        f"{lat.timeouts} timed out) | {p50 * 1000:.0f} ms | | |",
        f"| same, p99 | {p99 * 1000:.0f} ms | <= {SAVE_P99_TARGET * 1000:.0f} ms | "
        f"{'PASS' if p99 <= SAVE_P99_TARGET and not lat.timeouts else 'MISS'} |",
    ]
    return lines, ok
