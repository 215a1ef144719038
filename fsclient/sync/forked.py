"""``ForkedChild``: a child forked from this process, with pipes for its stdin, stdout and
stderr, that the folder survey handles as it handles a ``subprocess.Popen``.

A survey child started as a new interpreter spends 40 to 90 ms in Python's start and its
imports before it walks (two of them on two cores, while the client imports its own modules),
and a no-change run of a big folder waits for its walk. ``fsclient sync`` starts its survey
before its event loop and its threads exist, with the survey's modules already loaded: a child
forked then walks at once. A process with threads is not forked (a lock held by another
thread would stay held in the child): ``can_fork`` says so.

Like ``Popen``, a child may be waited for by two threads at once (a session cancelled while a
worker thread reads its answer): its ``waitpid`` is taken under a lock, and a pid is never
signalled once it is reaped (it may be another process's by then).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO

Body = Callable[[IO[bytes], IO[bytes]], int]
"""What the child runs: given its stdin and stdout, its exit code."""
POLL_STEP = 0.01
"""Seconds between two looks at a child that is waited for with a deadline, where the kernel
gives no pid descriptor (before Linux 5.3, or refused by a sandbox)."""


def can_fork() -> bool:
    """No other thread, by Python's count or the kernel's (a C library may start its own)."""
    if not hasattr(os, "fork") or threading.active_count() != 1:
        return False
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return True  # no /proc: Python's count is all there is


class ForkedChild:
    def __init__(self, body: Body, args: list[str]) -> None:
        self.args = args
        self.returncode: int | None = None
        self._lock = threading.Lock()
        ends = [os.pipe() for _ in range(3)]  # stdin, stdout, stderr: (read, write)
        theirs = [ends[0][0], ends[1][1], ends[2][1]]
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self.pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            for pair in ends:
                for fd in pair:
                    os.close(fd)
            raise
        if self.pid == 0:  # the child: whatever happens, it never returns from here
            try:
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the client's
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
                _run_child(body, theirs)
            finally:
                os._exit(1)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        for fd in theirs:
            os.close(fd)
        self.stdin: IO[bytes] = open(ends[0][1], "wb")  # noqa: SIM115
        self.stdout: IO[bytes] = open(ends[1][0], "rb")  # noqa: SIM115
        self.stderr: IO[bytes] = open(ends[2][0], "rb")  # noqa: SIM115

    def poll(self) -> int | None:
        if self.returncode is None and self._lock.acquire(blocking=False):
            try:
                self._reap(os.WNOHANG)
            finally:
                self._lock.release()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if timeout is not None and not self._ends_within(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout)
        with self._lock:
            self._reap(0)
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        with self._lock:
            if self.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)

    def _reap(self, options: int) -> None:
        """(Under the lock.) Take the child's status if it has ended (*options* 0: wait)."""
        if self.returncode is not None:
            return
        try:
            pid, status = os.waitpid(self.pid, options)
        except ChildProcessError:  # reaped by someone else: its status is lost (as Popen: 0)
            self.returncode = 0
            return
        if pid:
            self.returncode = os.waitstatus_to_exitcode(status)

    def _ends_within(self, timeout: float) -> bool:
        """Whether the child has ended, or ends within *timeout* seconds."""
        if self.poll() is not None:
            return True
        try:
            fd = os.pidfd_open(self.pid)
        except OSError:  # no pid descriptors here: look now and then
            deadline = time.monotonic() + timeout
            while self.poll() is None and time.monotonic() < deadline:
                time.sleep(POLL_STEP)
            return self.returncode is not None
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            return bool(poller.poll(timeout * 1000))
        finally:
            os.close(fd)


def _run_child(body: Body, pipes: list[int]) -> None:
    """The child's life: its pipes on fds 0, 1 and 2 and every other descriptor closed (as
    in a new process: the client's sockets and state DB are not the child's), then *body*.
    Its caller ends it with ``os._exit``: nothing of the client's, buffers or exit handlers,
    runs in it. ``print`` writes to its stderr, never into its answer."""
    code, told = 1, pipes[2]
    try:
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 3) for fd in pipes]  # (none is 0 to 2 now)
        for target, fd in enumerate(high):
            os.dup2(fd, target)
        told = 2
        _close_all_but_the_first_three()
        sys.stdout = sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        with open(0, "rb", closefd=False) as asks, open(1, "wb", closefd=False) as out:
            code = body(asks, out)
            out.flush()
    except BrokenPipeError:  # the client stopped reading: it is gone, or has dropped us
        code = 0
    except BaseException as exc:  # told on its stderr, as a new interpreter would
        with contextlib.suppress(OSError):
            os.write(told, f"{type(exc).__name__}: {exc}\n".encode(errors="replace"))
    finally:
        os._exit(code)


def _close_all_but_the_first_three() -> None:
    """Close what this process has open above fd 2: the descriptors ``/proc`` lists (a
    ``closerange`` up to the limit closes them one call each where the kernel has no
    ``close_range``, a million calls under a high limit)."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        return
    for fd in fds:
        if fd > 2:
            with contextlib.suppress(OSError):  # (the listing's own descriptor is gone)
                os.close(fd)
