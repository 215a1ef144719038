"""Start-up shared by every child process: logging, signals, and dying with the supervisor."""

from __future__ import annotations

import cProfile
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from common.heap import tune_gc

T = TypeVar("T")

PR_SET_NAME = 15
PR_SET_PDEATHSIG = 1
SUPERVISOR_PID = "FS_SUPERVISOR_PID"
"""Environment variable: the supervisor's pid, for the fork server to check it is its parent
still (``forkbase``; set by ``children.started``)."""
SINGLE = {"persister"}
"""Roles with one process only: their title has no number."""
LOG_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


def setup_logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=level.upper(), format=LOG_FORMAT, force=True)


def name_process(role: str, args: list[str] | None = None) -> None:
    """What ps shows for this process: ``fsserver: worker 0`` rather than the interpreter's
    command line (``python -c from multiprocessing.spawn ...`` for every child)."""
    import setproctitle

    setproctitle.setproctitle(" ".join(["fsserver:", role, *(args or [])]))
    set_comm("fsserver")  # (setproctitle cut the title to 15 bytes for it: "fsserver: super")


def _prctl(option: int, value: int | bytes, what: str) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):
        logging.getLogger(__name__).debug("prctl(%s) not available", what)


def set_comm(name: str) -> None:
    """The name that top, ``ps -o comm`` and pgrep see (15 bytes at most)."""
    _prctl(PR_SET_NAME, name.encode()[:15], "PR_SET_NAME")


def die_with_parent(sig: int, parent: str | None = None) -> None:
    """Have the kernel send *sig* when this process's parent dies; if *parent* (a pid) is
    given and is no longer the parent, it died before the call: exit now."""
    _prctl(PR_SET_PDEATHSIG, sig, "PR_SET_PDEATHSIG")
    if parent is not None and str(os.getppid()) != parent:
        os._exit(0)


def setup_child(name: str, log_level: str) -> None:
    """Called first in a worker, hasher or the persister. Ctrl-C goes to the supervisor, which
    stops the children in order: they start with SIGINT blocked (see ``children.spawn``) and
    then ignore it. SIGTERM, which the fork server ignores, is theirs again. If the supervisor
    dies without stopping them, the kernel kills the fork server and sends them SIGTERM. Its
    title (ps -o args) says its role, and its name (ps -o comm, top) is ``fs-<name>``, set
    last (setproctitle sets it too)."""
    import multiprocessing

    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # (ignored in the fork server)
    multiprocessing.current_process().name = name
    role, _, index = name.rpartition("-")
    name_process(role if role in SINGLE else f"{role} {index}")
    setup_logging(log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked since spawn()
    die_with_parent(signal.SIGTERM)
    if "fsserver.forkbase" not in sys.modules:  # (the fork server skips a preload that fails)
        logging.getLogger(__name__).warning(
            "%s was not forked from a fork server that loaded the server's code: it loaded "
            "its own (about 15 MiB more)", name)  # fmt: skip
    set_comm(f"fs-{name}")
    tune_gc()


def profiled(name: str, run: Callable[[], T]) -> T:
    """Run *run*; if ``FS_PROFILE_DIR`` is set, under cProfile, with the statistics written to
    ``FS_PROFILE_DIR/<name>-<pid>.prof`` when it returns (a clean stop)."""
    folder = os.environ.get("FS_PROFILE_DIR")
    if not folder:
        return run()
    profile = cProfile.Profile()
    try:
        return profile.runcall(run)
    finally:
        Path(folder).mkdir(parents=True, exist_ok=True)
        profile.dump_stats(Path(folder) / f"{name}-{os.getpid()}.prof")
