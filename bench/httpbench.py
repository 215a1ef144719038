"""The HTTP suite (``python -m bench --suite http``): FS's HTTP API against nginx, both driven
by the same ``curl`` commands, with the FS protocol's own figures (``fsclient``) alongside.

One 512 MiB file and 10,000 x 4 KiB files, each downloaded and uploaded: FS from its arena and
into a new empty server each round, nginx (``sendfile``, WebDAV ``PUT``) from and into tmpfs;
the small files with one ``curl -s -K LIST`` each way, so both servers see the same request
stream. The six contenders take turns in an order rotated every round; best of the rounds.
Every transfer is checked outside the clock (``bench.httpreport.document`` says how).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import uvloop

from bench import syncbench as sb
from bench.data import Workload, file_digest
from bench.fsbench import BenchCheckFailed
from bench.procs import Child, ChildError, FsServer, free_port, port_open
from bench.ramdir import ram_workdir
from bench.report import Series
from bench.run import interruptible, say
from bench.syncrun import byte_compile
from fsserver.config import parse_size
from fsserver.store.staging import arena_size

MiB = 1 << 20
API = "/api/v1/shares/default/files/"
FS_HTTP = re.compile(r"fsserver http on (\S+):(\d+)")
WRITE_OUT = r"%{http_code} %{size_download} %{num_connects}\n"


class Unavailable(RuntimeError):
    """curl or nginx is missing: said before anything starts."""


@dataclass
class HttpSettings:
    big: int = 512 * MiB
    small_count: int = 10_000
    small_size: int = 4096
    rounds: int = 5
    workers: int = 2
    hash_workers: int = 1

    @classmethod
    def quick(cls) -> HttpSettings:
        return cls(big=32 * MiB, small_count=1000, rounds=1)

    @property
    def store(self) -> str:
        """Room for the big file and the small ones, with some to spare."""
        need = -(-(self.big + self.small_count * self.small_size) // MiB) + 64
        return f"{max(need, 256)}MiB"

    def server_args(self) -> list[str]:
        return ["--workers", str(self.workers), "--hash-workers", str(self.hash_workers),
                "--store-size", self.store, "--http-port", "0"]  # fmt: skip

    def ram_need(self) -> tuple[int, int]:
        """(bytes, inodes) in /dev/shm at the peak: two servers' arenas (downloads, one upload
        round), the data, and one copy of it (nginx's upload or fsclient's download)."""
        page = os.sysconf("SC_PAGE_SIZE")
        data = self.big + self.small_count * -(-self.small_size // page) * page
        arenas = 2 * arena_size(parse_size(self.store), self.workers)
        return arenas + 2 * data + 64 * MiB, 2 * self.small_count + 100


@dataclass
class HttpOutcome:
    results: dict[str, Series]
    connections: dict[str, int] = field(default_factory=dict)
    """TCP connections curl opened for the small files, per series (the last round's)."""
    dav: bool = True
    versions: dict[str, str] = field(default_factory=dict)


WHO = {"fs": "FS HTTP API (curl)", "nginx": "nginx (curl)", "proto": "FS protocol (fsclient)"}


def kinds(s: HttpSettings) -> list[tuple[str, str, str, float]]:
    """(key, what, unit, amount) of the four transfers."""
    mib, small = s.big // MiB, f"{s.small_count:,} x {s.small_size // 1024} KiB"
    return [("down", f"download 1 x {mib} MiB", "MB/s", s.big),
            ("up", f"upload 1 x {mib} MiB", "MB/s", s.big),
            ("small_down", f"download {small}", "files/s", s.small_count),
            ("small_up", f"upload {small}", "files/s", s.small_count)]  # fmt: skip


def new_series(s: HttpSettings) -> dict[str, Series]:
    return {f"{who}_{key}": Series(f"{name}: {what}", unit, float(amount))
            for who, name in WHO.items() for key, what, unit, amount in kinds(s)}  # fmt: skip


# -- the servers -----------------------------------------------------------------------------


class Nginx(Child):
    """``nginx`` in the foreground (one worker), serving *root* on a free loopback port, with
    WebDAV ``PUT`` into it if *dav*. Its pid, logs and temp folders live in *work* (the
    uploads' temp files must be on *root*'s file system: nginx renames them into place)."""

    STOP_SIGNAL = signal.SIGQUIT  # a graceful stop: the master waits for its worker

    def __init__(self, work: Path, root: Path, dav: bool) -> None:
        self.port = free_port()
        work.mkdir()
        user = "user root;\n" if os.geteuid() == 0 else ""
        mime = "include /etc/nginx/mime.types;" if Path("/etc/nginx/mime.types").is_file() else ""
        put = "dav_methods PUT; create_full_put_path on; client_max_body_size 0;" if dav else ""
        kinds = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        temps = " ".join(f"{kind}_temp_path {work / kind};" for kind in kinds)
        conf = work / "nginx.conf"
        conf.write_text(
            f"daemon off; master_process on; worker_processes 1; pid {work / 'nginx.pid'};\n"
            f"error_log {work / 'error.log'};\n{user}events {{ worker_connections 1024; }}\n"
            f"http {{ access_log off; {mime} default_type application/octet-stream;\n"
            "  sendfile on; tcp_nopush on; keepalive_timeout 30; keepalive_requests 100000;\n"
            f"  {temps}\n  server {{ listen 127.0.0.1:{self.port}; root {root};\n"
            f"    location / {{ {put} }} }} }}\n"
        )
        super().__init__("nginx", ["nginx", "-p", str(work), "-e", str(work / "error.log"),
                                   "-c", str(conf)])  # fmt: skip
        try:
            self.wait_until(lambda: port_open("127.0.0.1", self.port), 15.0, "listening port")
        except BaseException:
            self.stop(timeout=2.0)
            raise
        self.url = f"http://127.0.0.1:{self.port}/"


def http_url(server: FsServer) -> str:
    found = server.search(FS_HTTP)
    if found is None:
        raise ChildError(f"fsserver printed no 'fsserver http on' line:\n{server.output()}")
    return f"http://{found.group(1)}:{found.group(2)}{API}"


def tools() -> tuple[bool, dict[str, str]]:
    """Whether nginx has WebDAV (``PUT``), and the versions of curl and nginx."""
    for tool in ("curl", "nginx"):
        if shutil.which(tool) is None:
            raise Unavailable(f"the http suite needs {tool} (make bench installs nginx)")
    curl = subprocess.run(["curl", "--version"], capture_output=True, text=True, check=False)
    nginx = subprocess.run(["nginx", "-V"], capture_output=True, text=True, check=False)
    versions = {"curl": curl.stdout.split(" (")[0],
                "nginx": nginx.stderr.splitlines()[0].rpartition(" ")[2]}  # fmt: skip
    return "with-http_dav_module" in nginx.stderr, versions


# -- curl ------------------------------------------------------------------------------------


def curl_list(path: Path, urls: list[str], uploads: list[Path] | None = None) -> Path:
    """A curl config file: one transfer per URL (with its file to upload, if any)."""
    lines = [f'write-out = "{WRITE_OUT}"']  # (curl as users run it: Expect: 100-continue too)
    for i, url in enumerate(urls):
        lines += [f'upload-file = "{uploads[i]}"'] if uploads else []
        lines += [f'url = "{url}"', 'output = "/dev/null"']
    path.write_text("\n".join(lines) + "\n")
    return path


def curl(args: list[str], count: int, codes: tuple[str, ...], size: int | None) -> tuple[
    float, int
]:  # fmt: skip
    """Run one whole curl command of *count* transfers (timed), then check that each was
    answered one of *codes* (with *size* bytes, for a download); (seconds, connections)."""
    seconds, out = sb.run_timed(["curl", "-s", *args])
    rows = [line.split() for line in out.splitlines() if line.strip()]
    wrong = [r for r in rows if r[0] not in codes or (size is not None and int(r[1]) != size)]
    if len(rows) != count or wrong:
        raise BenchCheckFailed(f"curl {' '.join(args[:3])}: {len(rows)} of {count} transfers "
                               f"reported, {len(wrong)} wrong (e.g. {wrong[:2]})")  # fmt: skip
    return seconds, sum(int(r[2]) for r in rows)


def fsclient(server: FsServer, *args: str) -> float:
    """The whole ``fsclient ARGS --server ADDRESS`` command, timed."""
    return sb.run_timed([*sb.fsclient_cmd(), *args, "--server", server.address])[0]


# -- one round ---------------------------------------------------------------------------------


@dataclass
class Contenders:
    s: HttpSettings
    work: Workload
    scratch: Path
    big_digest: bytes
    small_digests: dict[str, bytes]
    server: FsServer
    nginx: Nginx
    out: HttpOutcome

    def steps(self, r: int) -> list[Callable[[], dict[str, float]]]:
        """One round: each step returns {series key: seconds}."""
        steps = [lambda: self.curl_down("fs", http_url(self.server)),
                 lambda: self.curl_down("nginx", self.nginx.url), self.proto_down,
                 lambda: self.fs_up(r, lambda srv, to: self.curl_up("fs", http_url(srv) + to)),
                 lambda: self.fs_up(r, self.proto_up)]  # fmt: skip
        return steps + ([lambda: self.nginx_up(r)] if self.out.dav else [])

    def curl_down(self, who: str, base: str) -> dict[str, float]:
        """The big file, then the small ones: two whole curl commands, to /dev/null."""
        args = ["-o", "/dev/null", "-w", WRITE_OUT, f"{base}big.bin"]
        big, _ = curl(args, 1, ("200",), self.s.big)
        names = self.work.small_names()
        cfg = curl_list(self.scratch / f"{who}-down.cfg", [f"{base}small/{n}" for n in names])
        small, conns = curl(["-K", str(cfg)], len(names), ("200",), self.s.small_size)
        self.out.connections[f"{who}_small_down"] = conns
        return {f"{who}_down": big, f"{who}_small_down": small}

    def curl_up(self, who: str, base: str) -> dict[str, float]:
        """``curl -T`` of the big file, then every small file in one command."""
        ok = ("201", "204")
        args = ["-T", str(self.work.big), "-o", "/dev/null", "-w", WRITE_OUT]
        big, _ = curl([*args, f"{base}big.bin"], 1, ok, None)
        names = self.work.small_names()
        cfg = curl_list(self.scratch / f"{who}-up.cfg", [f"{base}small/{n}" for n in names],
                        [self.work.small_dir / n for n in names])  # fmt: skip
        small, conns = curl(["-K", str(cfg)], len(names), ok, None)
        self.out.connections[f"{who}_small_up"] = conns
        return {f"{who}_up": big, f"{who}_small_up": small}

    def proto_down(self) -> dict[str, float]:
        """``fsclient get`` of the big file and ``get -r`` of the small ones, into tmpfs."""
        dest = self.scratch / "get"
        dest.mkdir()
        big = fsclient(self.server, "get", "big.bin", str(dest / "big.bin"))
        small = fsclient(self.server, "get", "-r", "small", str(dest / "small"))
        if file_digest(dest / "big.bin") != self.big_digest:
            raise BenchCheckFailed("fsclient get: the big file differs from the source")
        if (got := len(list((dest / "small").iterdir()))) != self.s.small_count:
            raise BenchCheckFailed(f"fsclient get -r: {got} of {self.s.small_count} files")
        shutil.rmtree(dest)
        return {"proto_down": big, "proto_small_down": small}

    def fs_up(self, r: int, upload: Callable[[FsServer, str], dict[str, float]]) -> dict[
        str, float
    ]:  # fmt: skip
        """A new empty server, the uploads into folder ``rN/``, their checks; then it stops."""
        server = FsServer(self.s.server_args())
        try:
            times = upload(server, f"r{r}/")
            self.check_share(server, f"r{r}/")
        finally:
            server.stop()
        return times

    def proto_up(self, server: FsServer, folder: str) -> dict[str, float]:
        big = fsclient(server, "put", str(self.work.big), f"{folder}big.bin")
        small = fsclient(server, "put", "-r", str(self.work.small_dir), f"{folder}small/")
        return {"proto_up": big, "proto_small_up": small}

    def check_share(self, server: FsServer, folder: str) -> None:
        """The server holds exactly what was sent, none of it deduplicated."""
        want = {f"{folder}big.bin": (self.s.big, self.big_digest)}
        want |= {f"{folder}small/{n}": (self.s.small_size, d)
                 for n, d in self.small_digests.items()}  # fmt: skip
        listed = uvloop.run(sb._listing(server.address, "default"))
        if listed != want:
            wrong = [p for p in want if listed.get(p) != want[p]]
            raise BenchCheckFailed(f"FS holds {len(listed)} files for {len(want)} sent, "
                                   f"{len(wrong)} missing or wrong (e.g. {wrong[:3]})")  # fmt: skip
        if saved := server.metric("fs_store_dedup_saved_bytes"):
            raise BenchCheckFailed(f"the server deduplicated {saved:.0f} bytes: data skipped")

    def nginx_up(self, r: int) -> dict[str, float]:
        """WebDAV ``PUT`` into ``up-N/`` under nginx's root (tmpfs); checked, then removed."""
        times = self.curl_up("nginx", f"{self.nginx.url}up-{r}/")
        dest = self.work.big.parent / f"up-{r}"
        if file_digest(dest / "big.bin") != self.big_digest:
            raise BenchCheckFailed("nginx PUT: the big file differs from the source")
        sizes = [p.stat().st_size for p in (dest / "small").iterdir()]
        if sizes != [self.s.small_size] * self.s.small_count:
            raise BenchCheckFailed(f"nginx PUT: {len(sizes)} small files, not all of the size")
        shutil.rmtree(dest)
        return times


def run_http_suite(s: HttpSettings) -> HttpOutcome:
    dav, versions = tools()
    out = HttpOutcome(new_series(s), dav=dav, versions=versions)
    byte_compile()
    with interruptible(), contextlib.ExitStack() as stack:
        ram = ram_workdir(stack, *s.ram_need())
        www, scratch = ram / "www", ram / "scratch"
        scratch.mkdir()
        say(f"bench: http: writing {s.big // MiB} MiB + {s.small_count:,} small files in {www}")
        www.mkdir()
        work = Workload.create(www, s.big, s.small_count, s.small_size)
        small_digests = work.refresh_small()
        nginx = Nginx(ram / "nginx", www, dav)
        stack.callback(nginx.stop)
        server = FsServer(s.server_args())
        stack.callback(server.stop)
        fsclient(server, "put", str(work.big), "big.bin")  # the data (not counted)
        fsclient(server, "put", "-r", str(work.small_dir), "small/")
        say(f"bench: http: fsserver {' '.join(s.server_args())} ({http_url(server)}), nginx "
            f"on port {nginx.port} (WebDAV PUT {'on' if dav else 'not built in'})")  # fmt: skip
        c = Contenders(s, work, scratch, file_digest(work.big), small_digests, server, nginx,
                       out)  # fmt: skip
        c.check_share(server, "")
        for r in range(1, s.rounds + 1):
            steps = c.steps(r)
            shift = r % len(steps)  # rotate the order: no contender always follows another
            for step in steps[shift:] + steps[:shift]:
                for key, seconds in step().items():
                    out.results[key].seconds.append(seconds)
            done = ", ".join(f"{k} {v.rates()[-1]:,.0f}" for k, v in out.results.items()
                             if v.seconds)  # fmt: skip
            say(f"bench: http: round {r}/{s.rounds}: {done}")
    return out
