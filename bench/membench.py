"""``--suite memory``: what a file costs the server in RAM beyond its bytes (issue 13).

A fresh server takes 1,000,000 files of 1 KiB, each distinct (so each has its own blob),
through full small-file batches on two raw connections (``tests.bulkfill``, the fastest real
protocol path). Then every server process's USS (its own memory: the shared arena is left out)
is summed, the arena's overhead is added (used bytes beyond the stored ones: alignment, parked
uploads), and the total is divided by the files: the target is at most 512 bytes a file. The
server's fixed cost (its processes before any file, about 100 MB) is part of the figure, as
an operator pays it; the index's own share is shown apart.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psutil

from bench.procs import ROOT, FsServer
from bench.report import commit, machine, now
from bench.run import MiB

SECTION = "memory"
TARGET_BYTES = 512


@dataclass
class MemSettings:
    files: int = 1_000_000
    size: int = 1024

    @classmethod
    def quick(cls) -> MemSettings:
        return cls(files=100_000)

    @property
    def store_mib(self) -> int:
        return self.files * max(self.size, 64) // MiB + 64


@dataclass
class MemOutcome:
    files: int
    seconds: float
    uss_before: int
    uss_after: int
    supervisor_growth: int
    overhead: int
    """Arena bytes in use beyond the stored bytes."""
    pss_after: int = 0
    """Sum of every process's PSS outside the arena: pages shared between processes (the
    fork server's imports, libraries) are counted once, split among them, where a sum of USS
    leaves them out."""

    @property
    def per_file(self) -> float:
        return (self.uss_after + self.overhead) / self.files


def server_processes(server: FsServer) -> list[psutil.Process]:
    """The supervisor and every process below it (the fork server's children too)."""
    root = psutil.Process(server.proc.pid)
    return [root, *root.children(recursive=True)]


def uss_by_process(server: FsServer) -> dict[int, int]:
    return {p.pid: p.memory_full_info().uss for p in server_processes(server)}


def pss_beside_the_arena(server: FsServer) -> int:
    """The server's memory with shared pages counted once: PSS of every mapping but the
    arena's (``/dev/shm``), summed over its processes."""
    return sum(m.pss for p in server_processes(server)
               for m in p.memory_maps() if not m.path.startswith("/dev/shm/"))  # fmt: skip


def run_memory_suite(s: MemSettings) -> MemOutcome:
    from tests.bulkfill import fill

    args = ["--workers", "2", "--hash-workers", "1", "--store-size", f"{s.store_mib}MiB"]
    server = FsServer(args)
    try:
        time.sleep(1.0)  # the processes settle (imports done, arena mapped) before the baseline
        before = uss_by_process(server)
        start = time.monotonic()
        stored = fill(server.address, s.files, s.size)
        seconds = time.monotonic() - start
        if stored != s.files:
            raise RuntimeError(f"the server stored {stored} of {s.files} files")
        after = uss_by_process(server)
        pss = pss_beside_the_arena(server)
        used = int(server.metric("fs_store_used_bytes"))
    finally:
        server.stop()
    root = server.proc.pid
    return MemOutcome(s.files, seconds, sum(before.values()), sum(after.values()),
                      after[root] - before[root], used - s.files * s.size, pss)  # fmt: skip


def report(s: MemSettings, out: MemOutcome) -> tuple[list[str], bool]:
    ok = out.per_file <= TARGET_BYTES
    verdict = "met" if ok else f"missed by {out.per_file - TARGET_BYTES:.0f} B"
    lines = [
        "| measure | value |",
        "|---|---:|",
        f"| files stored ({s.size} B each, distinct) | {out.files:,} |",
        f"| time to store them (2 raw connections, full batches) | {out.seconds:.1f} s |",
        f"| sum of every server process's USS, before any file | {out.uss_before / MiB:.0f} MiB |",
        f"| sum of every server process's USS, after | {out.uss_after / MiB:.0f} MiB |",
        f"| of which the index (the supervisor's growth) | "
        f"{out.supervisor_growth / out.files:.0f} B/file |",
        f"| arena overhead (used beyond the stored bytes) | "
        f"{out.overhead / out.files:.0f} B/file |",
        f"| **server memory above the stored bytes** | **{out.per_file:.0f} B/file** |",
        f"| target: at most {TARGET_BYTES} B/file | {verdict} |",
        f"| cross-check: sum of PSS outside the arena, after (shared pages counted once) | "
        f"{out.pss_after / MiB:.0f} MiB, {(out.pss_after + out.overhead) / out.files:.0f} "
        "B/file |",
    ]
    return lines, ok


def document(s: MemSettings, tables: list[str], quick: bool, client: str) -> str:
    info = machine()
    return "\n".join([
        "## Memory per file",
        "",
        f"Run {now()} on commit {commit(ROOT)}"
        + (" — **quick smoke run, not representative**." if quick else "."),
        "",
        *(f"- {k}: {v}" for k, v in info.items()),
        "",
        f"Method (`python -m bench --suite memory`): `fsserver --workers 2 --hash-workers 1 "
        f"--store-size {s.store_mib}MiB` takes {s.files:,} distinct files of {s.size} bytes "
        "(mtimes of today's size: a packed index must pay for them) through full small-file "
        "batches on two raw connections. Memory is psutil's USS of every server process "
        "(supervisor, fork server, workers, hashers, the resource tracker), which leaves the "
        "shared arena "
        "out, plus the arena's bytes in use beyond the stored ones. See the sizing table in "
        "`docs/OPERATIONS.md`.",
        "",
        client,
        "",
        *tables,
    ])  # fmt: skip
