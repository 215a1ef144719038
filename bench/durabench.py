"""The durability suite (``python -m bench --suite durable``): what ``--data-dir`` costs.

1. Initial sync of 10,000 x 4 KiB (``fsclient sync DIR --once``, the whole command) into a new
   empty server with ``--data-dir`` and ``--fsync always``, against the same into a new
   memory-only server; the two take turns, a fresh server each round.
2. One 512 MiB upload (``fsclient put``, the whole command) to a server with ``--fsync always``,
   against the disk's own sequential write rate: ``dd bs=1M conv=fsync`` of the same bytes to
   the same disk.
3. A restart with 1 GiB in 100,000 files: from starting ``fsserver`` to its ready line, against
   ``cat`` of every file of the data dir; both with the page cache dropped first (a restart after
   a reboot reads from the disk), and both warm as well.

Data dirs live on the disk under ``bench/.work`` (not tmpfs, where fsync is free).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import syncbench as sb
from bench.procs import ROOT, FsServer
from bench.run import say
from bench.synctree import copy_tree, make_tree, remove

MiB = 1 << 20


@dataclass
class DurableSettings:
    files: int = 10_000
    file_size: int = 4096
    folders: int = 20
    rounds: int = 5
    big: int = 512 * MiB
    restart_files: int = 100_000
    restart_bytes: int = 1 << 30
    restart_rounds: int = 3

    @classmethod
    def quick(cls) -> DurableSettings:
        return cls(files=2000, rounds=1, big=64 * MiB, restart_files=10_000,
                   restart_bytes=64 * MiB, restart_rounds=1)  # fmt: skip


@dataclass
class DurableOutcome:
    memory: list[float] = field(default_factory=list)
    durable: list[float] = field(default_factory=list)
    upload: list[float] = field(default_factory=list)
    dd: list[float] = field(default_factory=list)
    ready_cold: list[float] = field(default_factory=list)
    cat_cold: list[float] = field(default_factory=list)
    ready_warm: list[float] = field(default_factory=list)
    cat_warm: list[float] = field(default_factory=list)
    loaded: str = ""


def server_args(data_dir: Path | None, store: str = "512MiB") -> list[str]:
    args = ["--workers", "2", "--hash-workers", "1", "--store-size", store]
    return args + (["--data-dir", str(data_dir), "--fsync", "always"] if data_dir else [])


def initial_syncs(s: DurableSettings, work: Path, out: DurableOutcome) -> None:
    for r in range(s.rounds):
        tree = work / f"tree-{r}"
        make_tree(tree, s.files, s.file_size, s.folders)
        for durable in (False, True) if r % 2 else (True, False):
            folder, data = work / "fs", work / "data"
            copy_tree(tree, folder)
            server = FsServer(server_args(data if durable else None))
            try:
                elapsed, tally = sb.fs_once(folder, server.address, "default")
                sb.check_tally(tally, s.files, "initial sync")
            finally:
                server.stop()
                remove(folder)
                remove(data)
            (out.durable if durable else out.memory).append(elapsed)
        remove(tree)
        say(f"durable: initial sync round {r + 1}: memory {out.memory[-1]:.2f} s, "
            f"data dir {out.durable[-1]:.2f} s")  # fmt: skip


def big_uploads(s: DurableSettings, work: Path, out: DurableOutcome) -> None:
    source = work / "big.bin"
    with open(source, "wb") as f:
        for _ in range(s.big // MiB):
            f.write(os.urandom(MiB))
    for r in range(s.rounds):
        data = work / "data"
        server = FsServer(server_args(data, f"{s.big // MiB + 64}MiB"))
        try:
            cmd = [*sb.fsclient_cmd(), "put", str(source), f"big-{r}.bin", "--server",
                   server.address]  # fmt: skip
            out.upload.append(sb.run_timed(cmd)[0])
        finally:
            server.stop()
            remove(data)
        target = work / "dd.bin"
        cmd = ["dd", f"if={source}", f"of={target}", "bs=1M", "conv=fsync", "status=none"]
        out.dd.append(sb.run_timed(cmd)[0])
        target.unlink()
        say(f"durable: 512 MiB round {r + 1}: put {out.upload[-1]:.2f} s, dd {out.dd[-1]:.2f} s")
    source.unlink()


def restarts(s: DurableSettings, work: Path, out: DurableOutcome) -> None:
    import asyncio

    from fsclient import Client

    data, files = work / "data", work / "many"
    size = s.restart_bytes // s.restart_files
    make_tree(files, s.restart_files, size, 1000)
    store = f"{s.restart_bytes // MiB + 256}MiB"
    server = FsServer(server_args(data, store))
    try:
        pairs = [(str(p), str(p.relative_to(files))) for p in files.rglob("*") if p.is_file()]

        async def fill() -> None:
            async with await Client.connect(server.address) as client:
                results = await client.put_many(pairs)
                if any(not hasattr(r, "version") for r in results):
                    raise RuntimeError("the restart data did not all upload")

        asyncio.run(fill())
    finally:
        server.stop()
        remove(files)
    every = [str(p) for p in data.rglob("*") if p.is_file()]
    for r in range(s.restart_rounds):
        for cold in (True, False):
            if cold:
                drop_caches()
            (out.cat_cold if cold else out.cat_warm).append(timed(["cat", *every]))
            if cold:
                drop_caches()
            started = time.perf_counter()
            server = FsServer(server_args(data, store))
            ready = time.perf_counter() - started
            out.loaded = next((line.split(": ", 1)[1].strip() for line in server.lines
                               if "loaded" in line), "")  # fmt: skip
            server.stop()
            (out.ready_cold if cold else out.ready_warm).append(ready)
        say(f"durable: restart round {r + 1}: cold {out.ready_cold[-1]:.2f} s "
            f"(cat {out.cat_cold[-1]:.2f} s), warm {out.ready_warm[-1]:.2f} s "
            f"(cat {out.cat_warm[-1]:.2f} s)")  # fmt: skip
    remove(data)


def drop_caches() -> None:
    """Empty the page cache (root only; without it the cold figures are warm ones)."""
    os.sync()
    with contextlib.suppress(OSError):
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def run_durable_suite(s: DurableSettings) -> DurableOutcome:
    work = ROOT / "bench" / ".work" / "durable"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out = DurableOutcome()
    try:
        initial_syncs(s, work, out)
        big_uploads(s, work, out)
        restarts(s, work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


# -- report ----------------------------------------------------------------------------------

SECTION = "durable"
TARGET_SYNC = 0.8
TARGET_UPLOAD = 0.8
TARGET_RESTART = 2.0


def report(s: DurableSettings, out: DurableOutcome) -> tuple[list[str], bool]:
    """The results and targets tables, and whether every target is met."""

    def row(what: str, series: list[float], unit: str, scale: float = 1.0) -> str:
        rates = sorted((scale / t if scale != 1.0 else t) for t in series)
        best = rates[-1] if scale != 1.0 else rates[0]
        runs = ", ".join(f"{t:.3f}" for t in series)
        return f"| {what} | {best:,.2f} | {median(rates):,.2f} | {unit} | {runs} |"

    mb = s.big / 1e6
    lines = [
        "| Measurement | Best | Median | Unit | Runs (s) |",
        "|---|---:|---:|---|---|",
        row(f"`fsclient sync --once`, {s.files:,} x {s.file_size} B, memory-only server",
            out.memory, "files/s", s.files),
        row(f"`fsclient sync --once`, {s.files:,} x {s.file_size} B, `--data-dir --fsync always`",
            out.durable, "files/s", s.files),
        row(f"`fsclient put` {s.big // MiB} MiB, `--fsync always`", out.upload, "MB/s", mb),
        row(f"`dd bs=1M conv=fsync` {s.big // MiB} MiB to the same disk", out.dd, "MB/s", mb),
        row(f"restart, {s.restart_files:,} files / {s.restart_bytes // MiB} MiB, cold cache: "
            "start to ready", out.ready_cold, "s"),
        row("`cat` of every file of that data dir, cold cache", out.cat_cold, "s"),
        row("restart, warm cache: start to ready", out.ready_warm, "s"),
        row("`cat` of every file, warm cache", out.cat_warm, "s"),
    ]  # fmt: skip
    sync = min(out.durable) and min(out.memory) / min(out.durable)
    upload = min(out.dd) / min(out.upload)
    restart = min(out.ready_cold) / min(out.cat_cold)
    verdicts = [
        ("(1) initial sync with --fsync always / memory-only (files/s)", sync,
         f">= {TARGET_SYNC}x", sync >= TARGET_SYNC),
        ("(2) 512 MiB upload with --fsync always / dd conv=fsync (MB/s)", upload,
         f">= {TARGET_UPLOAD}x", upload >= TARGET_UPLOAD),
        ("(3) restart to ready / cat of the data dir, cold (time)", restart,
         f"<= {TARGET_RESTART}x", restart <= TARGET_RESTART),
    ]  # fmt: skip
    lines += ["", "| Target | Result (best) | Needed | Verdict |", "|---|---:|---:|---|"]
    lines += [f"| {what} | {value:.2f}x | {need} | {'PASS' if ok else 'MISS'} |"
              for what, value, need, ok in verdicts]  # fmt: skip
    if out.loaded:
        lines += ["", f"The restarted server logged: `{out.loaded}`."]
    return lines, all(ok for *_, ok in verdicts)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def document(s: DurableSettings, tables: list[str], quick: bool) -> str:
    from bench.report import commit, machine, now

    return "\n".join([
        "## Durability benchmark",
        "",
        f"Run {now()} on commit {commit(ROOT)}"
        + (" — **quick smoke run, not representative**." if quick else "."),
        "",
        *(f"- {k}: {v}" for k, v in machine().items()),
        "",
        "Method (`python -m bench --suite durable`, see `bench/durabench.py`): whole commands "
        "of the installed client; data dirs on the disk under `bench/.work` (ext4 here, where "
        f"an fsync costs real time); {s.rounds} rounds of (1) and (2), a new empty server for "
        "each, the contenders taking turns; (3) with the page cache dropped before each cold "
        f"run ({s.restart_rounds} rounds). Best of the rounds; median alongside.",
        "",
        *tables,
    ])  # fmt: skip
