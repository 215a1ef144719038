"""The link suite (``python -m bench --suite link``): FS and rsync over a shaped link.

For each link rate (100 Mbit/s and 1 Gbit/s, ``bench.shapedlink``) the fsserver and an rsync
daemon listen inside the server namespace, and whole installed commands run inside the client
namespace: ``fsclient put`` / ``fsclient sync --once`` with ``FS_COMPRESS=off`` and
``FS_COMPRESS=auto``, ``rsync -a`` and ``rsync -az``. Three data sets (``bench.linkdata``): a
log-like text file, the standard library's source tree, random bytes. Contenders take turns in
an order rotated every round; each FS run gets a new empty server, each rsync run an emptied
destination. Every run is checked (size and XXH3-128 of every file at the destination) outside
the clock, and the client veth's byte counters give the bytes on the wire for both.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import linkdata
from bench.data import empty_dir
from bench.fsbench import BenchCheckFailed
from bench.procs import FS_READY, Child
from bench.ramdir import ram_workdir
from bench.run import interruptible, say
from bench.shapedlink import ShapedLink, measure
from bench.syncbench import TALLY, Tally, check_tally, run_timed
from bench.syncrun import byte_compile
from fsserver.config import parse_size
from fsserver.store.staging import arena_size

MiB = 1 << 20
FS_PORT = 7878
RSYNC_PORT = 873
CONTENDERS = ("fs-off", "fs-auto", "rsync", "rsync-z")
LABELS = {"fs-off": "FS, FS_COMPRESS=off", "fs-auto": "FS, FS_COMPRESS=auto",
          "rsync": "rsync -a", "rsync-z": "rsync -az"}  # fmt: skip


@dataclass
class LinkSettings:
    rates: tuple[int, ...] = (100_000_000, 1_000_000_000)
    rounds: int = 3
    log_size: int = 256 * MiB
    random_size: int = 64 * MiB
    workers: int = 2
    hash_workers: int = 1

    @classmethod
    def quick(cls) -> LinkSettings:
        return cls(rounds=1, log_size=32 * MiB, random_size=8 * MiB)

    def store_size(self) -> str:
        """Room for the largest data set, with spare for the store's bookkeeping."""
        return f"{max(self.log_size, self.random_size, 64 * MiB) // MiB + 128}MiB"

    def server_args(self) -> list[str]:
        return ["--workers", str(self.workers), "--hash-workers", str(self.hash_workers),
                "--store-size", self.store_size()]  # fmt: skip


@dataclass
class DataSet:
    name: str
    label: str
    path: Path
    """A file (sent with ``put`` / ``rsync FILE``) or a folder (``sync`` / ``rsync DIR/``)."""
    expected: dict[str, tuple[int, str]]
    """Relative path -> (size, XXH3-128 hex) the destination must hold."""
    is_tree: bool = False

    @property
    def size(self) -> int:
        return sum(size for size, _ in self.expected.values())

    @property
    def files(self) -> int:
        return len(self.expected)


@dataclass
class Run:
    seconds: float
    tx: int
    """Bytes the client's veth sent (frames: payload, TCP/IP and Ethernet headers)."""
    rx: int


@dataclass
class LinkOutcome:
    runs: dict[tuple[int, str, str], list[Run]] = field(default_factory=dict)
    """(rate, data set name, contender) -> one Run per round."""
    probes: dict[int, tuple[float, float]] = field(default_factory=dict)
    """rate -> measured TCP goodput (up, down) in bit/s, before the runs."""
    datasets: list[DataSet] = field(default_factory=list)
    link_text: dict[int, str] = field(default_factory=dict)
    client_compresses: bool = False


def installed(name: str) -> str:
    """The installed console script next to this interpreter (``.venv/bin/NAME``)."""
    script = Path(sys.executable).with_name(name)
    if not script.is_file():
        raise BenchCheckFailed(f"{script} is missing: install the project (make setup)")
    return str(script)


def client_compresses() -> bool:
    """Whether this fsclient knows ``--compress`` (else FS_COMPRESS is ignored)."""
    done = subprocess.run([installed("fsclient"), "put", "--help"], capture_output=True,
                          text=True, check=False)  # fmt: skip
    return "--compress" in done.stdout


def make_data(s: LinkSettings, work: Path) -> list[DataSet]:
    log, tree, rand = work / "app.log", work / "stdlib", work / "random.bin"
    say(f"bench: link: writing {s.log_size // MiB} MiB of log lines, copying the stdlib's "
        f"source, {s.random_size // MiB} MiB of random bytes")  # fmt: skip
    linkdata.write_log(log, s.log_size)
    linkdata.copy_stdlib(tree)
    linkdata.write_random(rand, s.random_size)
    sets = [
        DataSet("log", f"log text, {s.log_size // MiB} MiB", log, linkdata.digests(log)),
        DataSet("tree", "", tree, linkdata.digests(tree), is_tree=True),
        DataSet("random", f"random, {s.random_size // MiB} MiB", rand, linkdata.digests(rand)),
    ]
    t = sets[1]
    t.label = f"stdlib .py tree, {t.files:,} files, {t.size / 1e6:.1f} MB"
    return sets


class NsRsyncDaemon(Child):
    """``rsync --daemon`` (module ``mod``, read-write) listening inside the server namespace;
    the same configuration as ``bench.procs.RsyncDaemon`` on loopback."""

    def __init__(self, link: ShapedLink, workdir: Path, root: Path) -> None:
        conf = workdir / "rsyncd.conf"
        owner = "uid = root\ngid = root\n" if os.geteuid() == 0 else ""
        conf.write_text(f"{owner}use chroot = no\nmax connections = 8\n"
                        f"[mod]\n  path = {root}\n  read only = no\n  list = yes\n")  # fmt: skip
        cmd = [*link.server.prefix(), "rsync", "--daemon", "--no-detach", f"--config={conf}",
               f"--port={RSYNC_PORT}", f"--address={link.server.addr}",
               f"--log-file={workdir / 'rsyncd.log'}"]  # fmt: skip
        super().__init__("rsync daemon", cmd)
        try:
            link.server.wait_listening(RSYNC_PORT)
        except BaseException:
            self.stop(timeout=2.0)
            raise
        self.url = f"rsync://{link.server.addr}:{RSYNC_PORT}/mod"


class NsFsServer(Child):
    """A new, empty fsserver listening on the server side's address inside its namespace."""

    def __init__(self, link: ShapedLink, args: list[str]) -> None:
        cmd = [*link.server.prefix(), installed("fsserver"), "--host", link.server.addr,
               "--port", str(FS_PORT), "--metrics-port", "0", "--metrics-host", "127.0.0.1",
               "--insecure-no-auth", "--log-level", "info", *args]  # fmt: skip
        super().__init__("fsserver", cmd)
        try:
            self.wait_until(lambda: self.search(FS_READY), 60.0, "ready line")
        except BaseException:
            self.stop(timeout=2.0)
            raise
        self.address = f"{link.server.addr}:{FS_PORT}"


@dataclass
class Bench:
    s: LinkSettings
    link: ShapedLink
    work: Path
    daemon: NsRsyncDaemon
    module: Path
    out: LinkOutcome

    def wire(self, call: Callable[[], float]) -> Run:
        """Run one timed command; the client veth's byte counters around it."""
        tx0, rx0 = self.link.client.counters()
        seconds = call()
        tx1, rx1 = self.link.client.counters()
        return Run(seconds, tx1 - tx0, rx1 - rx0)

    def fs(self, data: DataSet, mode: str) -> Run:
        server = NsFsServer(self.link, self.s.server_args())
        copy = self.work / "fs-copy"
        try:
            client = [*self.link.client.prefix(), "env", f"FS_COMPRESS={mode}",
                      installed("fsclient")]  # fmt: skip
            where = ["--server", server.address, "--share", "default"]
            if data.is_tree:
                shutil.copytree(data.path, copy)
                cmd = [*client, "sync", str(copy), "--once", *where]
            else:
                cmd = [*client, "put", str(data.path), data.path.name, *where]
            out: list[str] = []

            def timed() -> float:
                seconds, text = run_timed(cmd)
                out.append(text)
                return seconds

            run = self.wire(timed)
            if data.is_tree:
                found = TALLY.search(out[0])
                check_tally(Tally(*map(int, found.groups())) if found else None, data.files,
                            f"fsclient sync of {data.name}")  # fmt: skip
            self.check_fs(server.address, data)
            return run
        finally:
            server.stop()
            shutil.rmtree(copy, ignore_errors=True)

    def check_fs(self, address: str, data: DataSet) -> None:
        cmd = [*self.link.client.prefix(), installed("fsclient"), "ls", "--json", "--server",
               address, "--share", "default"]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise BenchCheckFailed(f"fsclient ls failed ({done.returncode}): {done.stderr}")
        listed = {}
        for line in done.stdout.splitlines():
            entry = json.loads(line)
            listed[entry["path"]] = (entry["size"], entry["digest"])
        if listed != data.expected:
            wrong = [p for p, v in data.expected.items() if listed.get(p) != v]
            raise BenchCheckFailed(
                f"FS {data.name}: {len(listed)} files listed for {data.files}, "
                f"{len(wrong)} wrong (e.g. {wrong[:3]})"
            )

    def rsync(self, data: DataSet, compress: bool) -> Run:
        flags = ["-az"] if compress else ["-a"]
        if compress and not data.is_tree:
            flags.append("--compress-choice=zstd")
        dest = self.module / data.name
        empty_dir(self.module)  # right before the clock: see bench.syncrun's rsync_pair
        if data.is_tree:
            args = [f"{data.path}/", f"{self.daemon.url}/{data.name}/"]
        else:
            dest.mkdir()
            args = [str(data.path), f"{self.daemon.url}/{data.name}/"]
        cmd = [*self.link.client.prefix(), "rsync", *flags, *args]
        run = self.wire(lambda: run_timed(cmd)[0])
        got = linkdata.digests(dest)
        if got != data.expected:
            raise BenchCheckFailed(f"rsync {data.name}: {len(got)} of {data.files} files "
                                   "arrived or some differ")  # fmt: skip
        empty_dir(self.module)
        return run

    def one(self, data: DataSet, contender: str) -> Run:
        if contender.startswith("fs-"):
            return self.fs(data, contender.removeprefix("fs-"))
        return self.rsync(data, contender == "rsync-z")


def ram_need(s: LinkSettings) -> tuple[int, int]:
    """(bytes, inodes) in /dev/shm at the peak: the data, a copy of the tree, an rsync
    destination as large as the largest set, and one fsserver's arena."""
    tree = 64 * MiB  # the stdlib's .py files are ~30 MB; tmpfs rounds each to a page
    data = s.log_size + s.random_size + 2 * tree + max(s.log_size, s.random_size, tree)
    arena = arena_size(parse_size(s.store_size()), s.workers)
    return data + arena + 64 * MiB, 20_000


def run_link_suite(s: LinkSettings) -> LinkOutcome:
    out = LinkOutcome(client_compresses=client_compresses())
    byte_compile()
    with interruptible(), contextlib.ExitStack() as stack:
        work = ram_workdir(stack, *ram_need(s))
        out.datasets = make_data(s, work)
        for rate in s.rates:
            link = stack.enter_context(ShapedLink(rate))
            out.link_text[rate] = link.describe()
            up, down = measure(link, "up").bits_per_s, measure(link, "down").bits_per_s
            out.probes[rate] = (up, down)
            say(f"bench: link: {link.describe()}; TCP goodput up {up / 1e6:.1f}, down "
                f"{down / 1e6:.1f} Mbit/s")  # fmt: skip
            module = work / "rsync-module"
            module.mkdir(exist_ok=True)
            daemon = NsRsyncDaemon(link, work, module)
            stack.callback(daemon.stop)
            bench = Bench(s, link, work, daemon, module, out)
            for r in range(s.rounds):
                for data in out.datasets:
                    order = CONTENDERS[r % 4 :] + CONTENDERS[: r % 4]
                    for contender in order:
                        run = bench.one(data, contender)
                        out.runs.setdefault((rate, data.name, contender), []).append(run)
                        say(f"bench: link {rate / 1e6:g} Mbit/s round {r + 1}/{s.rounds} "
                            f"{data.name} {LABELS[contender]}: {run.seconds:.2f} s, "
                            f"{run.tx / 1e6:.1f} MB up, {run.rx / 1e6:.1f} MB down")  # fmt: skip
            daemon.stop()
            link.close()  # idempotent: the stack's close later does nothing more
    return out
