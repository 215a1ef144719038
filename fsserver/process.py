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
LOG_FORMAT = "%(asctime)s %(levelname)s %(processName)s %(name)s: %(message)s"


def setup_logging(level: str) -> None:
    logging.basicConfig(stream=sys.stderr, level=level.upper(), format=LOG_FORMAT, force=True)


def setup_child(name: str, log_level: str) -> None:
    """Called first in a worker or hasher. Ctrl-C goes to the supervisor, which stops the
    children in order (they start with SIGINT blocked, see ``children.spawn``); if the
    supervisor dies without that, the kernel sends SIGTERM. The process is named
    ``fs-<name>`` so that ps and top tell the roles apart."""
    import multiprocessing

    multiprocessing.current_process().name = name
    setup_logging(log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked since spawn()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        libc.prctl(PR_SET_NAME, f"fs-{name}".encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        logging.getLogger(__name__).debug("prctl(PR_SET_PDEATHSIG) not available")
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
