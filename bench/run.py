"""One benchmark run: start everything, measure in interleaved rounds, stop everything.

Rounds interleave the measurements (raw TCP, rsync, FS 4096-byte packets, FS negotiated
packets, small files) so slow drift on a noisy machine hits every series alike. Every child
process and the work folder are registered on an ``ExitStack`` as soon as they exist, so an
error or Ctrl-C (SIGTERM and SIGHUP are turned into KeyboardInterrupt) still cleans up.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
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
    repeats: int = 3
    workers: int = 2
    hash_workers: int = 1

    @property
    def store_size(self) -> int:
        """Room for one big file in flight plus every round's small files, at least 1 GiB."""
        need = 2 * self.big_size + self.repeats * self.small_count * self.small_size
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


def run_suite(s: Settings) -> Outcome:
    results = new_series(s)
    negotiated = 0
    with interruptible(), contextlib.ExitStack() as stack:
        work_dir = workdir(stack)
        say(f"bench: writing {s.big_size // MiB} MiB + {s.small_count} small files in {work_dir}")
        work = Workload.create(work_dir, s.big_size, s.small_count, s.small_size)
        scratch, module_root = work_dir / "scratch", work_dir / "rsync-module"
        scratch.mkdir()
        module_root.mkdir()
        payload = work.read_big()

        server = FsServer(s.server_args())
        stack.callback(server.stop)
        receiver = RawReceiver()
        stack.callback(receiver.stop)
        daemon = RsyncDaemon(work_dir, module_root)
        stack.callback(daemon.stop)
        say(f"bench: fsserver {' '.join(s.server_args())} on {server.address}, rsync daemon "
            f"on port {daemon.port}, raw receiver on port {receiver.port}")  # fmt: skip

        for r in range(1, s.repeats + 1):
            tag = f"round {r}/{s.repeats}"
            results["raw"].seconds.append(rawtcp.send(receiver.port, payload))
            up, down = rsyncbench.big_round(daemon, module_root, work, scratch)
            results["rsync_up"].seconds.append(up)
            results["rsync_down"].seconds.append(down)
            for key, packet in (("4k", 4096), ("max", None)):
                big = uvloop.run(
                    fsbench.big_round(server, work, scratch, packet, f"big-{key}-{r}.bin")
                )
                results[f"fs_up_{key}"].seconds.append(big.upload_s)
                results[f"fs_down_{key}"].seconds.append(big.download_s)
                if packet is None:
                    negotiated = big.packet
            digests = work.refresh_small()
            small_s = uvloop.run(fsbench.small_round(server, work, digests, f"small-{r}"))
            results["fs_small"].seconds.append(small_s)
            results["rsync_small"].seconds.append(rsyncbench.small_round(daemon, module_root, work))
            say(f"bench: {tag}: " + ", ".join(
                f"{k} {v.rates()[-1]:,.0f}" for k, v in results.items()))  # fmt: skip
    return Outcome(results, negotiated)
