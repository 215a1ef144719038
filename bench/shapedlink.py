"""A rate-limited link between two network namespaces, and a TCP goodput probe across it.

Loopback moves bytes at memory speed, so it cannot show what compression or protocol overhead
cost on a real network. ``ShapedLink`` makes two throw-away network namespaces (server side and
client side) joined by a veth pair with a ``tbf`` qdisc on both ends, so each direction is held
to the given rate. Everything lives inside the two namespaces (their own ``lo``, addresses in a
random 10.x.y.0/30): the host's interfaces, routes and addresses are never touched, and deleting
the namespaces (on exit, error or Ctrl-C) removes the veth pair with them.

Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2's ``ip``, ``tc`` and ``ss``.

``python -m bench.shapedlink RATE_MBIT`` makes a link and measures it both ways.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from bench.procs import ROOT

IP_TIMEOUT = 15.0
# tbf's burst is how many bytes may leave at once after an idle spell. It must cover the bytes
# the rate earns while the qdisc's timer wakes up late (the watchdog is an hrtimer, but on a VM
# a wake-up is often a few ms late; a smaller bucket then runs the link below its rate), so
# 4 ms of the rate (rate / 250, as with HZ=250 jiffies); and at least 64 KiB, one full GSO
# packet from veth, which tbf would otherwise cut into MTU-sized pieces on the CPU.
# 100 Mbit/s -> 64 KiB (5 ms of rate), 1 Gbit/s -> 500,000 B.
BURST_TIME = 0.004
BURST_MIN = 64 * 1024
# How long a packet may wait in tbf's queue before it is dropped (tbf's queue limit is
# rate x latency + burst): a bottleneck router's buffer; 25 ms keeps one TCP flow at the rate
# without the bufferbloat of a deep queue.
LATENCY_MS = 25.0


class LinkError(RuntimeError):
    """Setting up or using the shaped link failed; the message says which command and why."""


class LinkToolMissing(LinkError):
    """``ip``, ``tc`` or ``ss`` (Debian package iproute2) is not installed."""


class LinkPermission(LinkError):
    """No permission to make network namespaces (root, or CAP_NET_ADMIN + CAP_SYS_ADMIN)."""


def burst_for(rate_bits_per_s: int) -> int:
    """tbf bucket size in bytes for *rate_bits_per_s* (see ``BURST_TIME``)."""
    return max(int(rate_bits_per_s / 8 * BURST_TIME), BURST_MIN)


def _denied(text: str) -> bool:
    return any(s in text for s in ("Operation not permitted", "Permission denied"))


def run_tool(cmd: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run an iproute2 command; a missing program or permission becomes a typed ``LinkError``."""
    try:
        done = subprocess.run(
            list(cmd), capture_output=True, text=True, timeout=IP_TIMEOUT, check=False
        )
    except FileNotFoundError as e:
        raise LinkToolMissing(
            f"{cmd[0]} not found: install iproute2 (apt-get install iproute2)"
        ) from e
    except subprocess.TimeoutExpired as e:
        raise LinkError(f"{' '.join(cmd)}: no answer in {IP_TIMEOUT:g} s") from e
    if check and done.returncode != 0:
        err = (done.stderr or done.stdout).strip()
        if _denied(err):
            raise LinkPermission(
                f"{' '.join(cmd)}: {err}: network namespaces need root (CAP_NET_ADMIN and "
                "CAP_SYS_ADMIN)"
            )
        raise LinkError(f"{' '.join(cmd)} failed ({done.returncode}): {err}")
    return done


def namespaces() -> set[str]:
    """Names of the network namespaces ``ip netns list`` shows."""
    out = run_tool(["ip", "netns", "list"]).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def preflight() -> None:
    """Raise ``LinkToolMissing`` / ``LinkPermission`` early, before anything is made."""
    for tool in ("ip", "tc", "ss"):
        if shutil.which(tool) is None:
            raise LinkToolMissing(f"{tool} not found: install iproute2 (apt-get install iproute2)")
    caps = -1  # unknown (no /proc): let the first ip command say
    with contextlib.suppress(OSError, StopIteration, ValueError):
        status = Path("/proc/self/status").read_text().splitlines()
        caps = int(next(s for s in status if s.startswith("CapEff:")).split()[1], 16)
    if caps >= 0 and not ((caps >> 12) & 1 and (caps >> 21) & 1):  # NET_ADMIN, SYS_ADMIN
        raise LinkPermission(
            "network namespaces need root (CAP_NET_ADMIN and CAP_SYS_ADMIN); running as "
            f"uid {os.geteuid()} with effective capabilities {caps:#x}"
        )


@dataclass(frozen=True)
class Side:
    """One end of the link: its namespace, veth name and address."""

    ns: str
    dev: str
    addr: str

    def prefix(self) -> list[str]:
        """``ip netns exec NS``: put it before a command to run that command on this side."""
        return ["ip", "netns", "exec", self.ns]

    def counters(self) -> tuple[int, int]:
        """(tx bytes, rx bytes) of this side's veth, as the kernel counts them (L2 frames)."""
        out = run_tool(["ip", "-n", self.ns, "-s", "-j", "link", "show", "dev", self.dev]).stdout
        stats = json.loads(out)[0]["stats64"]
        return int(stats["tx"]["bytes"]), int(stats["rx"]["bytes"])

    def listening(self, port: int) -> bool:
        """Whether something listens on TCP *port* in this namespace."""
        out = run_tool(["ss", "-N", self.ns, "-Hltn", f"sport = :{port}"]).stdout
        return bool(out.strip())

    def wait_listening(self, port: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.listening(port):
            if time.monotonic() > deadline:
                raise LinkError(f"nothing listens on port {port} in {self.ns} after {timeout} s")
            time.sleep(0.02)


class ShapedLink:
    """Two network namespaces joined by a veth pair, each direction shaped to a rate by tbf.

    ``with ShapedLink(100_000_000) as link:`` then run a server with ``link.server.prefix()``
    and reach it at ``link.server.addr`` from a command run with ``link.client.prefix()``.
    On exit every process still inside either namespace is killed and both are deleted.
    """

    def __init__(self, rate_bits_per_s: int, *, burst: int | None = None,
                 latency_ms: float = LATENCY_MS, tag: str = "fsl") -> None:  # fmt: skip
        if rate_bits_per_s <= 0:
            raise ValueError(f"rate must be positive, got {rate_bits_per_s}")
        self.rate = int(rate_bits_per_s)
        self.burst = burst if burst is not None else burst_for(self.rate)
        self.latency_ms = latency_ms
        base = f"{tag}-{os.getpid()}-{secrets.token_hex(3)}"  # unique across concurrent runs
        x, y = secrets.randbelow(256), secrets.randbelow(64) * 4
        self.server = Side(f"{base}-s", "fsl-s", f"10.{x}.{y}.1")
        self.client = Side(f"{base}-c", "fsl-c", f"10.{x}.{y}.2")
        self._made: list[str] = []

    def __enter__(self) -> ShapedLink:
        preflight()
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.close()

    def _setup(self) -> None:
        s, c = self.server, self.client
        for side in (s, c):
            run_tool(["ip", "netns", "add", side.ns])
            self._made.append(side.ns)
        # made inside the namespaces: the pair never appears among the host's interfaces
        run_tool(["ip", "-n", s.ns, "link", "add", s.dev, "type", "veth",
                  "peer", "name", c.dev, "netns", c.ns])  # fmt: skip
        for side in (s, c):
            run_tool(["ip", "-n", side.ns, "addr", "add", f"{side.addr}/30", "dev", side.dev])
            run_tool(["ip", "-n", side.ns, "link", "set", "lo", "up"])
            run_tool(["ip", "-n", side.ns, "link", "set", side.dev, "up"])
            run_tool(["tc", "-n", side.ns, "qdisc", "add", "dev", side.dev, "root", "tbf",
                      "rate", f"{self.rate}bit", "burst", str(self.burst),
                      "latency", f"{self.latency_ms:g}ms"])  # fmt: skip

    def describe(self) -> str:
        return (f"tbf rate {self.rate / 1e6:g} Mbit/s burst {self.burst} B latency "
                f"{self.latency_ms:g} ms on both ends of a veth pair")  # fmt: skip

    def close(self) -> None:
        """Kill what still runs in the namespaces, then delete them (idempotent)."""
        errors = []
        for ns in self._made:
            self._kill_inside(ns)
            done = run_tool(["ip", "netns", "delete", ns], check=False)
            if done.returncode != 0 and ns in namespaces():
                errors.append(f"{ns}: {done.stderr.strip()}")
        self._made = []
        if errors:
            raise LinkError("could not delete network namespace(s): " + "; ".join(errors))

    @staticmethod
    def _kill_inside(ns: str) -> None:
        """SIGKILL every process in *ns* (all started by the user of this link: the name is
        ours alone), so none keeps the namespace alive after its name is gone."""
        for _ in range(50):
            out = run_tool(["ip", "netns", "pids", ns], check=False).stdout.split()
            pids = [int(p) for p in out if p.isdigit() and int(p) != os.getpid()]
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)


# -- goodput probe: a receiver in one namespace, a sender in the other -----------------------

READY = re.compile(r"linkrate ready on (\d+)")
RESULT = re.compile(r"linkrate result (\{.*\})")
CHUNK = 1 << 20


@dataclass(frozen=True)
class Goodput:
    """TCP payload bytes per second over the steady part of a stream (after *warmup*)."""

    bits_per_s: float
    steady_bytes: int
    steady_s: float
    total_bytes: int


def measure(link: ShapedLink, direction: str, seconds: float = 1.5, warmup: float = 0.3,
            timeout: float = 30.0) -> Goodput:  # fmt: skip
    """Stream for *seconds* from one side to the other ("up": client to server, "down": server
    to client) and return the receiver's goodput after the first *warmup* seconds (slow start
    and tbf's initial burst are left out)."""
    if direction not in ("up", "down"):
        raise ValueError(f"direction is 'up' or 'down', not {direction!r}")
    rx, tx = (link.server, link.client) if direction == "up" else (link.client, link.server)
    me = [sys.executable, "-m", "bench.shapedlink"]
    receiver = subprocess.Popen([*rx.prefix(), *me, "recv", rx.addr, str(warmup)], cwd=ROOT,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        port = _ready_port(receiver, time.monotonic() + timeout)
        send = [*tx.prefix(), *me, "send", rx.addr, str(port), str(seconds)]
        done = subprocess.run(send, cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout, check=False)  # fmt: skip
        if done.returncode != 0:
            raise LinkError(f"linkrate sender failed ({done.returncode}): {done.stderr[-2000:]}")
        out = receiver.communicate(timeout=timeout)[0].decode(errors="replace")
    finally:
        if receiver.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(receiver.pid, signal.SIGKILL)
        receiver.wait()
    result = RESULT.search(out)
    if result is None:
        raise LinkError(f"linkrate receiver ({receiver.returncode}) gave no result: {out[-2000:]}")
    r = json.loads(result.group(1))
    return Goodput(8 * r["steady_bytes"] / r["steady_s"], r["steady_bytes"], r["steady_s"],
                   r["total_bytes"])  # fmt: skip


def _ready_port(proc: subprocess.Popen[bytes], deadline: float) -> int:
    """The port from the receiver's first line, read without blocking past *deadline*."""
    assert proc.stdout is not None
    fd, seen = proc.stdout.fileno(), b""
    while b"\n" not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise LinkError(f"linkrate receiver: no ready line in time: {seen!r}")
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise LinkError(f"linkrate receiver exited ({proc.wait()}): {seen!r}")
            seen += chunk
    found = READY.search(seen.decode(errors="replace"))
    if found is None:
        raise LinkError(f"linkrate receiver: unexpected output {seen!r}")
    return int(found.group(1))


def _receive(host: str, warmup: float) -> None:
    with socket.create_server((host, 0)) as server:
        print(f"linkrate ready on {server.getsockname()[1]}", flush=True)
        conn, _ = server.accept()
    buf = bytearray(CHUNK)
    total, first, mark = 0, 0.0, None
    last = 0.0
    with conn:
        while n := conn.recv_into(buf):
            now = time.perf_counter()
            if not total:
                first = now
            total += n
            if mark is None and now - first >= warmup:
                mark = (now, total)
            last = now
    if mark is None or last <= mark[0]:
        raise SystemExit(f"linkrate: stream too short for a {warmup} s warm-up ({total} B)")
    steady = {"steady_bytes": total - mark[1], "steady_s": last - mark[0], "total_bytes": total}
    print(f"linkrate result {json.dumps(steady)}", flush=True)


def _send(host: str, port: int, seconds: float) -> None:
    data = memoryview(os.urandom(CHUNK))
    with socket.create_connection((host, port), timeout=30.0) as conn:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        conn.recv(1)  # the receiver closes once it has every byte


def main(argv: list[str]) -> int:
    if argv[:1] == ["recv"]:
        _receive(argv[1], float(argv[2]))
    elif argv[:1] == ["send"]:
        _send(argv[1], int(argv[2]), float(argv[3]))
    else:
        rate = int(float(argv[0]) * 1e6) if argv else 100_000_000
        with ShapedLink(rate) as link:
            print(link.describe())
            for way in ("up", "down"):
                g = measure(link, way)
                print(f"{way}: {g.bits_per_s / 1e6:.1f} Mbit/s goodput "
                      f"({g.steady_bytes:,} B in {g.steady_s:.2f} s)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
