"""CLI start-up: whole ``fsclient --help`` and ``fsclient ls`` (of an empty share) commands.

The command is the installed ``fsclient`` script next to this interpreter (what a user runs),
with this tree first on the import path (so the code measured is the benchmark's own, also in
a worktree of an editable install). Each run is timed whole, from ``fork`` to ``wait``; its
CPU time (user + system, from ``RUSAGE_CHILDREN``) is kept too, since wall time on a shared
machine also counts the time others take.
"""

from __future__ import annotations

import compileall
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.fsbench import BenchCheckFailed
from bench.procs import ROOT


def fsclient_cmd() -> list[str]:
    """The installed ``fsclient`` script next to this interpreter (else ``-m fsclient``)."""
    script = Path(sys.executable).with_name("fsclient")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "fsclient"]


def command_env() -> dict[str, str]:
    """No ``FS_*`` settings and no config file of the user's; this tree first on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FS_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["XDG_CONFIG_HOME"] = str(ROOT / "bench" / "no-such-config-home")
    return env


@dataclass
class Timings:
    label: str
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_command(args: list[str], runs: int, into: Timings) -> None:
    """Run ``fsclient ARGS`` *runs* times; each must exit 0 and print nothing on stderr."""
    cmd, env = [*fsclient_cmd(), *args], command_env()
    for _ in range(runs):
        cpu = _children_cpu()
        start = time.perf_counter()
        done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
        into.wall.append(time.perf_counter() - start)
        into.cpu.append(_children_cpu() - cpu)
        if done.returncode != 0 or done.stderr:
            raise BenchCheckFailed(f"{' '.join(args)}: exit {done.returncode}: {done.stderr}")


def byte_compile() -> None:
    """Compile the client's packages as ``pip install`` does: with PYTHONDONTWRITEBYTECODE
    set (or a read-only tree) each command would compile them from source again."""
    for package in ("common", "fsclient"):
        compileall.compile_dir(ROOT / package, quiet=1)


def measure(address: str, runs: int) -> tuple[Timings, Timings]:
    """(``--help``, ``ls`` of the empty share ``default`` of the server at *address*)."""
    byte_compile()
    help_, ls = Timings("`fsclient --help`"), Timings("`fsclient ls`, empty share")
    check = subprocess.run([*fsclient_cmd(), "ls", "--server", address], env=command_env(),
                           cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    if check.returncode != 0 or check.stdout:
        raise BenchCheckFailed(f"ls of the empty share: exit {check.returncode}, "
                               f"{check.stdout!r} {check.stderr!r}")  # fmt: skip
    for _ in range(runs):  # taking turns: drift on a shared machine hits both alike
        time_command(["--help"], 1, help_)
        time_command(["ls", "--server", address], 1, ls)
    return help_, ls
