"""The latency suite (``python -m bench --suite latency``): fan-out and CLI start-up.

1. Fan-out (``bench.fanout``): 200 subscribed connections on one share, in 2 processes,
   each fetching every new file as a sync client does; one writer uploads 4 KiB files of new
   bytes one at a time. Per change: from the writer's reply (hash OK, version) to the last
   subscriber holding the file. Target: p99 at most 100 ms.
2. CLI start-up (``bench.startup``): whole ``fsclient --help`` (target 0.05 s) and
   ``fsclient ls`` of an empty share (target 0.12 s), best of 15 each, taking turns.

One new server (``--workers 2 --hash-workers 1``) serves both; the subscribers' folders are on
tmpfs (``bench.ramdir``), as a client's disk costs nothing here that it would not cost anyway.
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
from dataclasses import dataclass, field

import psutil
import uvloop

from bench import fanout, startup
from bench.procs import ROOT, FsServer
from bench.ramdir import ram_workdir
from bench.run import interruptible, say

SECTION = "latency"
SHARE = "fan"
FANOUT_P99_MAX_MS = 100.0
HELP_MAX_S = 0.05
LS_MAX_S = 0.12


@dataclass
class LatencySettings:
    subscribers: int = 200
    processes: int = 2
    changes: int = 200
    file_size: int = 4096
    cli_runs: int = 15
    workers: int = 2
    hash_workers: int = 1

    @classmethod
    def quick(cls) -> LatencySettings:
        return cls(changes=30, cli_runs=3)

    def server_args(self) -> list[str]:
        return ["--workers", str(self.workers), "--hash-workers", str(self.hash_workers),
                "--store-size", "256MiB"]  # fmt: skip


@dataclass
class LatencyOutcome:
    fanout: fanout.FanoutResult
    help: startup.Timings
    ls: startup.Timings
    cpu: dict[str, float] = field(default_factory=dict)
    """Fan-out: CPU seconds per change, by role (server processes, subscriber processes)."""
    load: tuple[float, ...] = ()


def _cpu_by_role(server: FsServer, groups: list[fanout.Subscribers]) -> dict[str, float]:
    roles: dict[str, float] = {}
    family = psutil.Process(server.proc.pid)
    procs = [(p.name(), p) for p in [family, *family.children(recursive=True)]]
    procs += [("subscribers", psutil.Process(g.proc.pid)) for g in groups]
    for name, proc in procs:
        if name == "python":  # multiprocessing's resource tracker
            continue
        role = "fsserver supervisor" if name == "fsserver" else name.rstrip("0123456789-")
        with contextlib.suppress(psutil.NoSuchProcess):
            t = proc.cpu_times()
            roles[role] = roles.get(role, 0.0) + t.user + t.system
    return roles


def run_latency_suite(s: LatencySettings) -> LatencyOutcome:
    load = os.getloadavg()
    with interruptible(), contextlib.ExitStack() as stack:
        work = ram_workdir(stack, 64 << 20, 4 * s.subscribers + 100)
        server = FsServer(s.server_args())
        stack.callback(server.stop)
        say(f"bench: latency: fsserver {' '.join(s.server_args())} on {server.address}; "
            f"{s.cli_runs} runs of fsclient --help and ls")  # fmt: skip
        help_, ls = startup.measure(server.address, s.cli_runs)
        say(f"bench: latency: {s.subscribers} subscribers in {s.processes} processes")
        groups = []
        for p in range(s.processes):
            count = s.subscribers // s.processes + (p < s.subscribers % s.processes)
            group = fanout.Subscribers(server.address, SHARE, count, work / f"p{p}")
            stack.callback(group.stop)
            groups.append(group)
        result = fanout.FanoutResult(s.subscribers, s.processes, s.file_size, 0)
        before = _cpu_by_role(server, groups)
        uvloop.run(fanout.measure(server.address, SHARE, groups, result, s.changes))
        after = _cpu_by_role(server, groups)
        cpu = {role: (after[role] - before.get(role, 0.0)) / s.changes for role in after}
    return LatencyOutcome(result, help_, ls, cpu, load)


def nearest_rank(values: list[float], q: float) -> float:
    """The *q* quantile by the nearest-rank method: p99 of 200 samples is the 198th."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered) - 1e-9) - 1)]


def report(s: LatencySettings, o: LatencyOutcome) -> tuple[list[str], bool]:
    f = o.fanout
    last = [v * 1000 for v in f.last]
    each = [v * 1000 for v in f.each]
    p99 = nearest_rank(last, 0.99)
    lines = [
        "| Measurement | Best | Median | p99 | Max | Unit |",
        "|---|---:|---:|---:|---:|---|",
        f"| fan-out: writer's reply -> all {f.subscribers} subscribers hold the "
        f"{f.file_size // 1024} KiB file, {len(last)} changes | {min(last):.1f} | "
        f"{statistics.median(last):.1f} | {p99:.1f} | {max(last):.1f} | ms |",
        f"| fan-out: writer's reply -> one subscriber holds it ({len(each)} samples) | "
        f"{min(each):.1f} | {statistics.median(each):.1f} | {nearest_rank(each, 0.99):.1f} | "
        f"{max(each):.1f} | ms |",
    ]
    for t in (o.help, o.ls):
        lines.append(f"| {t.label}, {len(t.wall)} runs: wall | {min(t.wall):.3f} | "
                     f"{statistics.median(t.wall):.3f} | | {max(t.wall):.3f} | s |")  # fmt: skip
        lines.append(f"| {t.label}: CPU (user + system) | {min(t.cpu):.3f} | "
                     f"{statistics.median(t.cpu):.3f} | | {max(t.cpu):.3f} | s |")  # fmt: skip
    cpu = ", ".join(f"{role} {sec * 1000:.1f}" for role, sec in sorted(o.cpu.items()))
    total = sum(o.cpu.values()) * 1000
    lines += ["", f"Fan-out CPU per change (ms): {cpu}; {total:.1f} in all, on "
              f"{os.cpu_count()} cores. Load average when the suite began: "
              f"{', '.join(f'{v:.2f}' for v in o.load)}.", ""]  # fmt: skip
    verdicts = [
        ("fan-out p99, writer's reply -> all subscribers hold the file", p99 / 1000,
         FANOUT_P99_MAX_MS / 1000),
        ("`fsclient --help` (best)", min(o.help.wall), HELP_MAX_S),
        ("`fsclient ls`, empty share (best)", min(o.ls.wall), LS_MAX_S),
    ]  # fmt: skip
    lines += ["| Target | Measured | Needed | Verdict |", "|---|---:|---:|---|"]
    all_pass = True
    for label, value, limit in verdicts:
        ok = value <= limit
        all_pass &= ok
        miss = "" if ok else f" by {(value / limit - 1) * 100:.0f}%"
        lines.append(f"| {label} | {value * 1000:.1f} ms | <= {limit * 1000:g} ms | "
                     f"{'PASS' if ok else 'MISS' + miss} |")  # fmt: skip
    return lines, all_pass


def document(s: LatencySettings, tables: list[str], quick: bool) -> str:
    from bench.report import commit, machine, now

    return "\n".join([
        "## Latency benchmark: fan-out and CLI start-up",
        "",
        f"Run {now()} on commit {commit(ROOT)}"
        + (" — **quick smoke run, not representative**." if quick else "."),
        "",
        *(f"- {k}: {v}" for k, v in machine().items()),
        "",
        "Method (`python -m bench --suite latency`, see `bench/latency.py`, `bench/fanout.py`, "
        "`bench/startup.py`): one new `fsserver "
        f"{' '.join(s.server_args())}` on loopback. Fan-out: {s.subscribers} connections "
        f"subscribed to one share, in {s.processes} processes (`fsclient.Client` on uvloop), "
        "each fetching every new file as a sync client does (`Client.get`: temp file, digest, "
        "fsync, rename, folder fsync; folders on tmpfs); one writer uploads "
        f"{s.file_size} random bytes at a time ({s.changes} changes, the next once every "
        "subscriber holds the last, after 20 ms). Per change: from the writer's `put` "
        "returning (the server's hash OK and the version) to the last subscriber's download "
        "returning, on the one monotonic clock of the machine (notification and reply leave "
        "the server together, so a subscriber may hold the file before the writer hears of "
        f"it). CLI: the installed `fsclient` script, {s.cli_runs} runs each of `--help` and "
        "`ls --server ADDR` (the empty share `default`) taking turns, timed whole; CPU is "
        "the command's user + system time. The machine has 2 cores shared with other work: "
        "wall times include waiting for a core, CPU times do not.",
        "",
        *tables,
    ])  # fmt: skip
