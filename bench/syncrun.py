"""The sync suite (``python -m bench --suite sync``): ``fsclient sync`` against ``rsync -a``.

One ``rsync --daemon`` for the whole run and a new empty ``fsserver`` for each round of 1-2
(plus one for 3-4), all on loopback, serve four measurements:

1. initial sync of a tree of small files into an empty share / emptied rsync destination;
2. the same command again on the now-synced tree (nothing to do);
3. save-to-complete latency between two live clients (``--debounce 0``) on one share;
4. the memory and idle CPU of a live client watching a large tree;
5. a tree of 100,000 small files in 1,000 folders: initial sync, no-change re-run, and a
   re-run after 100 of them changed (``bench.synclarge``).

Rounds of 1-2 use a new tree of fresh random content each and a new server started for the
round (a first sync meets an empty store, not one warmed by earlier rounds); the two
contenders take turns in an order that alternates every round. Every tree, the FS client's
folders and the rsync daemon's module (its destination) live in a per-run folder on tmpfs
(``bench.ramdir``), so both sides write to RAM, as the fsserver's store does. Every child
process and that folder are registered on an ``ExitStack`` as soon as they exist (see
``bench.run``).
"""

from __future__ import annotations

import compileall
import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from bench import syncbench as sb
from bench.data import empty_dir
from bench.fsbench import BenchCheckFailed
from bench.procs import ROOT, FsServer, RsyncDaemon
from bench.ramdir import ram_workdir
from bench.run import interruptible, say
from bench.synclarge import LargeOutcome, large_round
from bench.synctree import copy_tree, make_tree, remove
from fsserver.config import parse_size
from fsserver.store.staging import arena_size

T = TypeVar("T")
STATE_ROOM = 1024  # bytes per file for the client's state folder (.fsync), with room to spare
SPARE = 64 << 20


@dataclass
class SyncSettings:
    files: int = 10_000
    file_size: int = 4096
    folders: int = 20
    rounds: int = 5
    changes: int = 100
    watch_files: int = 100_000
    watch_size: int = 64
    watch_folders: int = 1000
    large_files: int = 100_000
    large_folders: int = 1000
    large_rounds: int = 3
    large_changed: int = 100
    settle: float = 5.0
    idle_seconds: float = 60.0
    workers: int = 2
    hash_workers: int = 1
    store_size: str = "1GiB"

    @classmethod
    def quick(cls) -> SyncSettings:
        return cls(files=2000, rounds=1, changes=20, watch_files=10_000, watch_folders=100,
                   settle=2.0, idle_seconds=10.0, large_files=5000, large_folders=50,
                   large_rounds=1, large_changed=20)  # fmt: skip

    def server_args(self) -> list[str]:
        return ["--workers", str(self.workers), "--hash-workers", str(self.hash_workers),
                "--store-size", self.store_size]  # fmt: skip

    def ram_need(self) -> tuple[int, int]:
        """(bytes, inodes) the run needs in /dev/shm at its peak: one fsserver's arena, plus
        a round's tree, FS copy and rsync destination, or the watched tree (tmpfs gives every
        file whole pages)."""
        page = os.sysconf("SC_PAGE_SIZE")

        def tree(count: int, size: int) -> int:
            return count * (-(-size // page) * page + STATE_ROOM)

        files = max(3 * tree(self.files, self.file_size), tree(self.watch_files, self.watch_size),
                    3 * tree(self.large_files, self.file_size))  # fmt: skip
        inodes = max(3 * (self.files + self.folders), self.watch_files + self.watch_folders,
                     3 * (self.large_files + self.large_folders))  # fmt: skip
        return arena_size(parse_size(self.store_size), self.workers) + files + SPARE, inodes + 100


@dataclass
class SyncOutcome:
    fs_initial: list[float] = field(default_factory=list)
    rsync_initial: list[float] = field(default_factory=list)
    fs_nochange: list[float] = field(default_factory=list)
    rsync_nochange: list[float] = field(default_factory=list)
    latency: sb.Latency | None = None
    watch_once: float = 0.0
    watch_start: float = 0.0
    idle: sb.Idle | None = None
    large: LargeOutcome = field(default_factory=LargeOutcome)
    cpu: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    """Per command kind: (command CPU s, server-side CPU s) for every round."""
    load: tuple[float, ...] = ()
    """The 1/5/15-minute load average when the suite started."""


@dataclass
class Bench:
    s: SyncSettings
    work: Path
    daemon: RsyncDaemon
    module_root: Path
    out: SyncOutcome

    def initial_round(self, r: int) -> None:
        """Fresh tree and a new empty fsserver, alive for the whole round (both contenders
        run next to its arena); rsync and FS each sync the tree into an empty destination,
        then again. Odd rounds rsync first, even rounds FS first."""
        s = self.s
        tree, fs_dir = self.work / f"tree-{r}", self.work / f"fs-{r}"
        digests = make_tree(tree, s.files, s.file_size, s.folders)
        copy_tree(tree, fs_dir)
        server = FsServer(s.server_args())
        try:
            steps = [lambda: self.rsync_pair(tree), lambda: self.fs_pair(server, fs_dir, digests)]
            for step in steps if r % 2 else steps[::-1]:
                step()
        finally:
            server.stop()
        remove(tree)
        remove(fs_dir)

    def with_cpu(self, key: str, call: Callable[[], T], server: FsServer | None) -> T:
        """Run *call* (one timed command); record its CPU time and the server side's (the
        fsserver *server*, or the rsync daemon if None)."""
        pid, transient = (server.proc.pid, False) if server else (self.daemon.proc.pid, True)
        client, before = sb.children_cpu(), sb.tree_cpu(pid, transient=transient)
        result = call()
        server_s = sb.tree_cpu(pid, transient=transient) - before
        self.out.cpu.setdefault(key, []).append((sb.children_cpu() - client, server_s))
        return result

    def rsync_pair(self, tree: Path) -> None:
        """The destination is emptied right before the timed run, and the copy left there
        until then: rsync writes into page cache just freed, as FS writes into its arena
        (on this VM, memory freed more than ~2 s earlier is handed back to the host and
        3-4x slower to touch again). Round 1 first fills it with an untimed run."""
        dest, url = self.module_root / "sub", f"{self.daemon.url}/sub"
        if not dest.exists():
            sb.rsync_once(tree, url)
        empty_dir(self.module_root)
        for key, series in (("rsync_initial", self.out.rsync_initial),
                            ("rsync_nochange", self.out.rsync_nochange)):  # fmt: skip
            series.append(self.with_cpu(key, lambda: sb.rsync_once(tree, url), None))
            sb.check_rsync(dest, self.s.files)

    def fs_pair(self, server: FsServer, fs_dir: Path, digests: dict[str, bytes]) -> None:
        addr, share = server.address, "default"

        def once() -> tuple[float, sb.Tally | None]:
            return sb.fs_once(fs_dir, addr, share)

        seconds, tally = self.with_cpu("fs_initial", once, server)
        self.out.fs_initial.append(seconds)
        sb.check_tally(tally, self.s.files, f"initial sync {share}")
        sb.check_share(addr, share, digests, self.s.file_size)
        saved = server.metric("fs_store_dedup_saved_bytes")
        if saved:
            raise BenchCheckFailed(f"the server deduplicated {saved:.0f} bytes: data skipped")
        seconds, tally = self.with_cpu("fs_nochange", once, server)
        self.out.fs_nochange.append(seconds)
        sb.check_tally(tally, 0, f"no-change re-run {share}")

    def latency(self, stack: contextlib.ExitStack, addr: str) -> None:
        a, b = self.work / "live-a", self.work / "live-b"
        a.mkdir()
        b.mkdir()
        clients = []
        for folder in (a, b):
            client = sb.LiveClient(folder, addr, "live", debounce=0, create=True)
            stack.callback(client.stop)
            clients.append(client)
        say(f"bench: sync: two live clients watching; {self.s.changes} changes from A to B")
        self.out.latency = sb.save_to_complete(a, b, self.s.changes)
        for client in clients:
            client.stop()
        remove(a)
        remove(b)

    def watching(self, stack: contextlib.ExitStack, addr: str) -> None:
        s, share = self.s, "watch"
        folder = self.work / "watch"
        say(f"bench: sync: writing {s.watch_files:,} files of {s.watch_size} B "
            f"in {s.watch_folders} folders")  # fmt: skip
        digests = make_tree(folder, s.watch_files, s.watch_size, s.watch_folders)
        self.out.watch_once, tally = sb.fs_once(folder, addr, share, create=True)
        sb.check_tally(tally, s.watch_files, "initial sync of the watched folder")
        sb.check_share(addr, share, digests, s.watch_size)
        say(f"bench: sync: --once took {self.out.watch_once:.1f} s; starting the live client")
        start = time.perf_counter()
        client = sb.LiveClient(folder, addr, share)
        stack.callback(client.stop)
        self.out.watch_start = time.perf_counter() - start
        time.sleep(s.settle)
        say(f"bench: sync: measuring the idle client for {s.idle_seconds:g} s")
        self.out.idle = sb.idle_usage(client, s.idle_seconds)
        client.stop()
        remove(folder)


def byte_compile() -> None:
    """Byte-compile the client's packages, as ``pip install`` does: with
    PYTHONDONTWRITEBYTECODE set (or a read-only tree) every timed command would otherwise
    compile them from source again, about 30 ms of CPU per command here."""
    for package in ("common", "fsclient"):
        compileall.compile_dir(ROOT / package, quiet=1)


def run_sync_suite(s: SyncSettings) -> SyncOutcome:
    out = SyncOutcome(load=os.getloadavg())
    byte_compile()
    with interruptible(), contextlib.ExitStack() as stack:
        work = ram_workdir(stack, *s.ram_need())
        module_root = work / "rsync-module"
        module_root.mkdir()
        daemon = RsyncDaemon(work, module_root)
        stack.callback(daemon.stop)
        say(f"bench: sync: a new fsserver {' '.join(s.server_args())} each round, rsync "
            f"daemon on port {daemon.port}; trees and destinations on tmpfs in {work}")  # fmt: skip
        bench = Bench(s, work, daemon, module_root, out)
        for r in range(1, s.rounds + 1):
            bench.initial_round(r)
            say(f"bench: sync: round {r}/{s.rounds}: initial FS {out.fs_initial[-1]:.2f} s, "
                f"rsync {out.rsync_initial[-1]:.2f} s; no-change FS "
                f"{out.fs_nochange[-1]:.3f} s, rsync {out.rsync_nochange[-1]:.3f} s")  # fmt: skip
        large = out.large
        for r in range(1, s.large_rounds + 1):
            large_round(bench, r)
            say(f"bench: sync: large round {r}/{s.large_rounds} ({s.large_files:,} files): "
                f"initial FS {large.fs_initial[-1]:.2f} s, rsync "
                f"{large.rsync_initial[-1]:.2f} s; no-change FS {large.fs_nochange[-1]:.3f} s, "
                f"rsync {large.rsync_nochange[-1]:.3f} s; {s.large_changed} changed FS "
                f"{large.fs_changed[-1]:.3f} s, rsync {large.rsync_changed[-1]:.3f} s")  # fmt: skip
        empty_dir(module_root)  # room in /dev/shm for the watched tree
        server = FsServer(s.server_args())  # (3) and (4): one more new server
        stack.callback(server.stop)
        bench.latency(stack, server.address)
        bench.watching(stack, server.address)
    return out
