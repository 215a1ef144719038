"""Ctrl-C at any moment of a command's start (while Python loads it, while it connects, while the
server starts its children) ends it with exit status 130, or by SIGINT itself (which the shell
also shows as 130), and never with a traceback.

The signal goes to the command's whole process group, as a terminal's Ctrl-C does. The moments
are fractions of the time the same command takes here without a signal (0, 1/64, ..., 1/2, 1),
so they cover each phase of its start however loaded the machine is, densest where the phases
are short (Python's start-up, the imports).

One window is out of any program's reach: before the first line of the program runs, Python
runs its own Python code (``site`` and the ``.pth`` files of site-packages, then ``runpy`` or the
console script's import of the entry module), and a Ctrl-C there ends in a KeyboardInterrupt
traceback (for ``site``, CPython's "Fatal Python error: init_import_site"). Such a run is
recognised exactly, by a traceback with no frame in this project's code, and does not count.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fsclient import Client
from tests.conftest import run
from tests.serverproc import READY, ROOT, wait_for
from tests.syncproc import SyncProcess

MOMENTS = 8
"""Signals per command."""
OUR_CODE = tuple(str(ROOT / package) + os.sep for package in ("fsclient", "fsserver", "common"))
SWALLOWED = "Exception ignored in"
FRAME = re.compile(r'^\s*File "([^"]+)", line', re.MULTILINE)


@pytest.fixture(autouse=True)
def sigint_as_in_a_terminal() -> Iterator[None]:
    """The commands started here must see SIGINT as a terminal's foreground job does. A test run
    started in the background by a shell without job control (as CI may do) ignores SIGINT, and
    its children would inherit that (and rightly keep ignoring it)."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def console_script(name: str) -> list[str]:
    """The console script that pip writes for *name* (pyproject's [project.scripts]), run with
    this checkout's code: the same import, then the same call."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts[name].split(":")
    return [sys.executable, "-c", f"import sys\nfrom {module} import {func}\nsys.exit({func}())"]


def python_m(name: str) -> list[str]:
    return [sys.executable, "-m", name]


@dataclass
class Outcome:
    pid: int
    signalled: bool
    """The signal was sent while the command still ran (else it had already finished)."""
    code: int
    out: str
    err: str

    @property
    def before_the_program(self) -> bool:
        """Interrupted in Python's own start-up: a traceback without a frame of our code."""
        frames = FRAME.findall(self.err)
        return bool(frames) and not any(path.startswith(OUR_CODE) for path in frames)


def start(command: list[str], env: dict[str, str] | None = None, out: Any = subprocess.PIPE,
          err: Any = subprocess.PIPE) -> subprocess.Popen[str]:  # fmt: skip
    return subprocess.Popen(
        command, cwd=ROOT, env={**os.environ, **(env or {})}, stdout=out, stderr=err, text=True,
        start_new_session=True,
    )  # fmt: skip


def interrupt(command: list[str], after: float, env: dict[str, str] | None = None) -> Outcome:
    """Ctrl-C *after* seconds into *command*. Python's start-up can swallow it (a
    KeyboardInterrupt in one of its weakref callbacks is only reported, as "Exception ignored
    in"): then the command runs on, and gets Ctrl-C again, as a user would press it again."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = start(command, env, out, err)
        time.sleep(after)  # the moment under test, not a wait for something
        signalled = running = proc.poll() is None
        try:
            while running:
                running = ctrl_c_lost(proc, err)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        return Outcome(proc.pid, signalled, proc.returncode, read(out), read(err))


def ctrl_c_lost(proc: subprocess.Popen[str], err: Any) -> bool:
    """Ctrl-C, then wait until *proc* ends (False) or Python swallows the signal (True)."""
    seen = read(err).count(SWALLOWED)
    os.killpg(proc.pid, signal.SIGINT)
    wait_for(lambda: proc.poll() is not None or read(err).count(SWALLOWED) > seen, 30,
             "the command to end")  # fmt: skip
    return proc.poll() is None


def read(file: Any) -> str:
    file.seek(0)
    return file.read()


def duration(command: list[str], done: Callable[[str], bool]) -> float:
    """Seconds the command takes here, without a signal; *done* checks its output."""
    began = time.monotonic()
    proc = start(command)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and done(out), err
    return time.monotonic() - began


def moments(total: float) -> list[float]:
    return [0.0] + [total / 2**k for k in reversed(range(MOMENTS - 1))]


def check_quiet(outcomes: list[Outcome], finished: Callable[[Outcome], bool]) -> None:
    """Every run ended with 130 or by SIGINT and printed no traceback, or (signalled too late)
    finished its work; and the signal did interrupt a good share of the runs."""
    interrupted = 0
    for outcome in outcomes:
        if outcome.before_the_program:
            continue
        assert "Traceback" not in outcome.err and "KeyboardInterrupt" not in outcome.err, outcome
        if outcome.code in (130, -signal.SIGINT):
            assert outcome.signalled
            interrupted += 1
        else:
            assert outcome.code == 0 and finished(outcome), outcome
    assert interrupted >= len(outcomes) // 3, outcomes


@pytest.mark.parametrize("form", [console_script, python_m], ids=["console-script", "python-m"])
def test_ctrl_c_while_fsclient_help_starts(form):
    command = [*form("fsclient"), "put", "--help"]
    total = duration(command, lambda out: "usage: fsclient put" in out)
    outcomes = [interrupt(command, after) for after in moments(total)]
    check_quiet(outcomes, lambda o: "usage: fsclient put" in o.out)


def test_ctrl_c_while_fsclient_ls_runs_against_a_server(server):
    async def seed() -> None:
        async with await Client.connect(server.address) as client:
            await client.put_bytes(b"listed", "hello.txt")

    run(seed())
    command = [*console_script("fsclient"), "ls", "--server", server.address]
    total = duration(command, lambda out: "hello.txt" in out)
    outcomes = [interrupt(command, after) for after in moments(total)]
    check_quiet(outcomes, lambda o: "hello.txt" in o.out)
    late = [o for o in outcomes if o.code == 130]  # interrupted in the command, not in loading
    assert all(o.err.endswith("fsclient: interrupted\n") for o in late), late


@pytest.mark.parametrize("form", [console_script, python_m], ids=["console-script", "python-m"])
def test_ctrl_c_while_fsserver_starts(form, tmp_path):
    """Before its ready line the server ends with 130 (or by SIGINT); after it, Ctrl-C is the
    ordinary graceful stop (exit 0). Either way: no traceback (not from its children either),
    no shared memory and no metrics folder left behind."""
    command = [*form("fsserver"), "--port", "0", "--metrics-port", "0", "--store-size", "8MiB",
               "--workers", "1", "--hash-workers", "1"]  # fmt: skip
    env = {"TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    began = time.monotonic()
    proc = start(command, env)
    try:
        while not READY.search(proc.stderr.readline()):  # type: ignore[union-attr]
            assert proc.poll() is None
        total = time.monotonic() - began
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
    outcomes = []
    for after in moments(total):
        outcomes.append(outcome := interrupt(command, after, env))
        assert not list(Path("/dev/shm").glob(f"fs-{outcome.pid}-*")), outcome
        assert list(tmp_path.iterdir()) == [], outcome
    check_quiet(outcomes, lambda o: READY.search(o.err) is not None)
    for outcome in outcomes:
        assert (READY.search(outcome.err) is not None) == (outcome.code == 0), outcome


def test_ctrl_c_in_a_command_cancels_it_and_exits_130():
    """Deterministically inside the command: the server (a socket that never answers) has
    accepted the connection, and the client waits for the handshake."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        host, port = silent.getsockname()
        address = f"{host}:{port}"
        proc = start([*console_script("fsclient"), "ls", "--server", address])
        silent.settimeout(30)
        conn, _ = silent.accept()
        with conn:
            os.killpg(proc.pid, signal.SIGINT)
            out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert (out, err) == ("", "fsclient: interrupted\n")


def test_ctrl_c_stops_a_live_sync_cleanly(server, tmp_path):
    (tmp_path / "a.txt").write_text("synced before the interrupt")
    sync = SyncProcess(tmp_path, server.address).start()

    async def listed() -> list[str]:
        async with await Client.connect(server.address) as client:
            return [entry.path for entry in await client.ls("")]

    wait_for(lambda: run(listed()) == ["a.txt"], 30, "the upload", interval=0.1)
    assert sync.stop(signal.SIGINT) == 130
    log = sync.log.text()
    assert "Traceback" not in log
    assert re.search(r"^synced .*: 1 uploaded, .* 0 failed", log, re.MULTILINE), log
    assert log.endswith("fsclient: interrupted\n"), log
