"""Baseline B: a real ``rsync --daemon`` on loopback, driven by the ``rsync`` command.

Each timed run is the whole ``rsync -a ...`` command, into an emptied destination (so rsync
sends every byte: there is no basis file to delta against).
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from bench.data import Workload, empty_dir, file_digest
from bench.fsbench import BenchCheckFailed
from bench.procs import RsyncDaemon
from bench.syncbench import run_timed

RSYNC = "rsync"


def _timed_rsync(args: Sequence[str]) -> float:
    return run_timed([RSYNC, "-a", *args])[0]


def big_round(daemon: RsyncDaemon, module_root: Path, work: Workload, scratch: Path) -> tuple[
    float, float
]:  # fmt: skip
    """Upload the big file into the emptied module, then download it into an emptied folder."""
    digest = file_digest(work.big)
    empty_dir(module_root)
    upload_s = _timed_rsync([str(work.big), f"{daemon.url}/big.bin"])
    stored = module_root / "big.bin"
    if not stored.is_file() or file_digest(stored) != digest:
        raise BenchCheckFailed("rsync upload: the daemon's copy differs from the source")
    dest = scratch / "rsync-download"
    empty_dir(dest)
    download_s = _timed_rsync([f"{daemon.url}/big.bin", f"{dest}/"])
    if file_digest(dest / "big.bin") != digest:
        raise BenchCheckFailed("rsync download: the copy differs from the source")
    empty_dir(dest)
    empty_dir(module_root)
    return upload_s, download_s


def small_round(daemon: RsyncDaemon, module_root: Path, work: Workload) -> float:
    """``rsync -a SMALL_DIR/ rsync://.../mod/dir/`` into an empty module; returns seconds."""
    empty_dir(module_root)
    elapsed = _timed_rsync([f"{work.small_dir}/", f"{daemon.url}/dir/"])
    stored = list((module_root / "dir").iterdir())
    if len(stored) != work.small_count:
        raise BenchCheckFailed(f"rsync small files: {len(stored)} of {work.small_count} arrived")
    empty_dir(module_root)
    return elapsed


def version() -> str:
    done = subprocess.run([RSYNC, "--version"], capture_output=True, text=True, check=False)
    return done.stdout.splitlines()[0].strip() if done.stdout else "unknown"
