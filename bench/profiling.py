"""``python -m bench --profile KIND``: one FS transfer with cProfile on in the client.

Only the timed call is profiled (the event loop runs in this thread, so protocol callbacks are
included). The server is started with ``FS_PROFILE_DIR`` pointing at a scratch folder: if the
server honours it (each process dumping ``*.prof`` there on exit), those profiles are printed too.
"""

from __future__ import annotations

import contextlib
import cProfile
import pstats
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop

from bench import fsbench
from bench.data import Workload
from bench.procs import FsServer
from bench.run import MiB, Settings, interruptible, say, workdir

# kind -> (max_packet, which timed call of the round to profile: 0 upload, 1 download)
KINDS: dict[str, tuple[int | None, int]] = {
    "upload4k": (4096, 0),
    "download4k": (4096, 1),
    "upload": (None, 0),
    "download": (None, 1),
    "small": (None, 0),
}
TOP = 25


def _print(stats: pstats.Stats, title: str) -> None:
    for key in ("cumulative", "tottime"):
        print(f"\n===== {title}: top {TOP} by {key} =====", flush=True)
        stats.sort_stats(key).print_stats(TOP)


def profile(kind: str, s: Settings) -> None:
    packet, which = KINDS[kind]
    profiler = cProfile.Profile()
    calls = 0

    async def hook(call: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
        nonlocal calls
        calls += 1
        if calls - 1 != which:
            return await fsbench.timed(call)
        profiler.enable()
        try:
            return await fsbench.timed(call)
        finally:
            profiler.disable()

    with interruptible(), contextlib.ExitStack() as stack:
        work_dir = workdir(stack)
        small = s.small_count if kind == "small" else 1
        work = Workload.create(work_dir, s.big_size if kind != "small" else MiB, small, 4096)
        prof_dir = work_dir / "server-profile"
        prof_dir.mkdir()
        server = FsServer(s.server_args(), env={"FS_PROFILE_DIR": str(prof_dir)})
        stack.callback(server.stop)
        scratch = work_dir / "scratch"
        scratch.mkdir()
        if kind == "small":
            digests = work.refresh_small()
            seconds = uvloop.run(fsbench.small_round(server, work, digests, "p", hook=hook))
            say(f"profile {kind}: {s.small_count / seconds:,.0f} files/s (under cProfile)")
        else:
            run = uvloop.run(
                fsbench.big_round(
                    server, work, scratch, packet, "profile.bin", do_download=which == 1, hook=hook
                )
            )
            seconds = run.download_s if which else run.upload_s
            rate = s.big_size / 1e6 / seconds
            say(f"profile {kind}: {rate:,.1f} MB/s with {run.packet}-byte packets (under cProfile)")
        stats = pstats.Stats(profiler)
        _print(stats, f"client, {kind}")
        python_s = getattr(stats, "total_tt", 0.0)
        say(
            f"profile {kind}: {seconds:.3f} s wall for the call, {python_s:.3f} s of it in "
            "client Python code; the rest is the event loop's C code and waiting on the server"
        )
        server.stop()
        _print_server(prof_dir)


def _print_server(prof_dir: Path) -> None:
    dumps = sorted(str(p) for p in prof_dir.glob("*.prof"))
    if not dumps:
        print(
            f"\n(no server profiles in {prof_dir}: the server does not honour FS_PROFILE_DIR)",
            flush=True,
        )
        return
    for dump in dumps:
        _print(pstats.Stats(dump), f"server {Path(dump).name}")
