"""One benchmark run: start everything, measure in interleaved rounds, stop everything.

Rounds interleave the measurements (raw TCP, rsync, FS 4096-byte packets, FS negotiated
packets, small files), in an order rotated every round, so slow drift on a noisy machine hits
every series alike; an untimed warm-up round comes first. Every child
process and the work folder are registered on an ``ExitStack`` as soon as they exist, so an
error or Ctrl-C (SIGTERM and SIGHUP are turned into KeyboardInterrupt) still cleans up.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import uvloop

from bench import fsbench, rawtcp, rsyncbench
from bench.data import Workload
from bench.procs import ROOT, FsServer, RawReceiver, RsyncDaemon
from bench.report import Series

WORK_ROOT = ROOT / "bench" / ".work"
MiB = 1 << 20


@dataclass
class Settings:
    big_size: int = 256 * MiB
    small_count: int = 2000
    small_size: int = 4096
    repeats: int = 7
    warmup: bool = True
    workers: int = 2
    hash_workers: int = 1

    @property
    def store_size(self) -> int:
        """Room for one big file in flight plus every round's small files, at least 1 GiB."""
        need = 2 * self.big_size + (self.repeats + 1) * self.small_count * self.small_size
        return max(1024 * MiB, -(-need // MiB) * MiB + 64 * MiB)

    def server_args(self) -> list[str]:
        return ["--workers", str(self.workers), "--hash-workers", str(self.hash_workers),
                "--store-size", f"{self.store_size // MiB}MiB"]  # fmt: skip


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT/SIGTERM/SIGHUP unwind like Ctrl-C, so ``finally`` blocks stop the children
    (SIGINT too: a background job may have inherited it ignored)."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {sig: signal.signal(sig, _interrupt) for sig in sigs}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def workdir(stack: contextlib.ExitStack) -> Path:
    WORK_ROOT.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="run-", dir=WORK_ROOT))
    stack.callback(shutil.rmtree, path, ignore_errors=True)
    return path


def new_series(s: Settings) -> dict[str, Series]:
    big, files = float(s.big_size), float(s.small_count)
    mib = s.big_size // MiB
    small = f"{s.small_count} x {s.small_size // 1024} KiB files"
    return {
        "fs_up_4k": Series(f"FS upload {mib} MiB, 4096-B packets", "MB/s", big),
        "fs_down_4k": Series(f"FS download {mib} MiB, 4096-B packets", "MB/s", big),
        "fs_up_max": Series(f"FS upload {mib} MiB, negotiated packets", "MB/s", big),
        "fs_down_max": Series(f"FS download {mib} MiB, negotiated packets", "MB/s", big),
        "raw": Series(f"raw TCP (uvloop) {mib} MiB, one way", "MB/s", big),
        "rsync_up": Series(f"rsync daemon upload {mib} MiB", "MB/s", big),
        "rsync_down": Series(f"rsync daemon download {mib} MiB", "MB/s", big),
        "fs_small": Series(f"FS put_many {small}, one connection", "files/s", files),
        "rsync_small": Series(f"rsync -a {small}", "files/s", files),
    }


@dataclass
class Outcome:
    results: dict[str, Series]
    negotiated_packet: int


@dataclass
class Contenders:
    settings: Settings
    work: Workload
    scratch: Path
    module_root: Path
    payload: bytes
    server: FsServer
    receiver: RawReceiver
    daemon: RsyncDaemon
    negotiated: int = 0

    def steps(self, r: int) -> list[Callable[[], dict[str, float]]]:
        """One round: each step returns {series key: seconds}."""
        return [
            lambda: {"raw": rawtcp.send(self.receiver.port, self.payload)},
            self.rsync_big,
            lambda: self.fs_big(r, "4k", 4096),
            lambda: self.fs_big(r, "max", None),
            lambda: self.small(r),
        ]

    def rsync_big(self) -> dict[str, float]:
        up, down = rsyncbench.big_round(self.daemon, self.module_root, self.work, self.scratch)
        return {"rsync_up": up, "rsync_down": down}

    def fs_big(self, r: int, key: str, packet: int | None) -> dict[str, float]:
        name = f"big-{key}-{r}.bin"
        big = uvloop.run(fsbench.big_round(self.server, self.work, self.scratch, packet, name))
        if packet is None:
            self.negotiated = big.packet
        return {f"fs_up_{key}": big.upload_s, f"fs_down_{key}": big.download_s}

    def small(self, r: int) -> dict[str, float]:
        digests = self.work.refresh_small()
        fs_s = uvloop.run(fsbench.small_round(self.server, self.work, digests, f"small-{r}"))
        rsync_s = rsyncbench.small_round(self.daemon, self.module_root, self.work)
        return {"fs_small": fs_s, "rsync_small": rsync_s}


def run_suite(s: Settings) -> Outcome:
    results = new_series(s)
    with interruptible(), contextlib.ExitStack() as stack:
        work_dir = workdir(stack)
        say(f"bench: writing {s.big_size // MiB} MiB + {s.small_count} small files in {work_dir}")
        work = Workload.create(work_dir, s.big_size, s.small_count, s.small_size)
        scratch, module_root = work_dir / "scratch", work_dir / "rsync-module"
        scratch.mkdir()
        module_root.mkdir()
        server = FsServer(s.server_args())
        stack.callback(server.stop)
        receiver = RawReceiver()
        stack.callback(receiver.stop)
        daemon = RsyncDaemon(work_dir, module_root)
        stack.callback(daemon.stop)
        say(f"bench: fsserver {' '.join(s.server_args())} on {server.address}, rsync daemon "
            f"on port {daemon.port}, raw receiver on port {receiver.port}")  # fmt: skip
        c = Contenders(s, work, scratch, module_root, work.read_big(), server, receiver, daemon)
        for r in range(0 if s.warmup else 1, s.repeats + 1):
            steps = c.steps(r)
            shift = r % len(steps)  # rotate the order: no contender always follows another
            samples: dict[str, float] = {}
            for step in steps[shift:] + steps[:shift]:
                samples.update(step())
            if r == 0:
                say("bench: warm-up round done (not counted)")
                continue
            for key, seconds in samples.items():
                results[key].seconds.append(seconds)
            say(f"bench: round {r}/{s.repeats}: " + ", ".join(
                f"{k} {v.rates()[-1]:,.0f}" for k, v in results.items()))  # fmt: skip
    return Outcome(results, c.negotiated)
