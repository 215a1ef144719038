"""``ForkedChild``: a child forked from this process, with pipes for its stdin, stdout and
stderr, that the folder survey handles as it handles a ``subprocess.Popen``.

A survey child started as a new interpreter spends 40 to 90 ms in Python's start and its
imports before it walks (two of them on two cores, while the client imports its own modules),
and a no-change run of a big folder waits for its walk. ``fsclient sync`` starts its survey
before its event loop and its threads exist, with the survey's modules already loaded: a child
forked then walks at once. A process with threads is not forked (a lock held by another
thread would stay held in the child): ``can_fork`` says so.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import subprocess
import threading
from collections.abc import Callable
from typing import IO

Body = Callable[[IO[bytes], IO[bytes]], int]
"""What the child runs: given its stdin and stdout, its exit code."""


def can_fork() -> bool:
    return hasattr(os, "fork") and threading.active_count() == 1


class ForkedChild:
    def __init__(self, body: Body, args: list[str]) -> None:
        self.args = args
        self.returncode: int | None = None
        ends = [os.pipe() for _ in range(3)]  # stdin, stdout, stderr: (read, write)
        self.pid = os.fork()
        if self.pid == 0:  # the child: it never returns from here
            _run_child(body, [ends[0][0], ends[1][1], ends[2][1]])
        for fd in (ends[0][0], ends[1][1], ends[2][1]):
            os.close(fd)
        self.stdin: IO[bytes] = open(ends[0][1], "wb")  # noqa: SIM115
        self.stdout: IO[bytes] = open(ends[1][0], "rb")  # noqa: SIM115
        self.stderr: IO[bytes] = open(ends[2][0], "rb")  # noqa: SIM115

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None and timeout is not None and not self._ends_within(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout)
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    def _ends_within(self, timeout: float) -> bool:
        """Whether the child ends within *timeout* seconds (its pid descriptor turns readable)."""
        fd = os.pidfd_open(self.pid)
        try:
            return bool(select.select([fd], [], [], timeout)[0])
        finally:
            os.close(fd)


def _run_child(body: Body, pipes: list[int]) -> None:
    """The child's life: its pipes on fds 0, 1 and 2 and every other descriptor closed (as
    in a new process: the client's sockets and state DB are not the child's), then *body*.
    It ends with ``os._exit``: nothing of the client's, buffers or exit handlers, runs."""
    code = 1
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the client's to handle
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 3) for fd in pipes]  # (none is 0 to 2 now)
        for target, fd in enumerate(high):
            os.dup2(fd, target)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        with open(0, "rb", closefd=False) as asks, open(1, "wb", closefd=False) as out:
            code = body(asks, out)
            out.flush()
    except BrokenPipeError:  # the client stopped reading: it is gone, or has dropped us
        code = 0
    except BaseException as exc:  # told on its stderr, as a new interpreter would
        with contextlib.suppress(OSError):
            os.write(2, f"{type(exc).__name__}: {exc}\n".encode(errors="replace"))
    finally:
        os._exit(code)
