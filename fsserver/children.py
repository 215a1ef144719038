"""Worker and hasher processes as the supervisor sees them: spawn, watch, stop.

Children are started with multiprocessing's *forkserver* method: forked from a process that
imported their code once (``fsserver.forkbase``), they share its pages instead of each holding
a copy. They share the supervisor's resource tracker (an attach to the arena then never unlinks
it) and inherit only the sockets passed to them, as spawned children do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from multiprocessing.process import BaseProcess
from typing import Any

from fsserver.channel import MessageChannel
from fsserver.process import SUPERVISOR_PID

log = logging.getLogger(__name__)

CHILDREN = multiprocessing.get_context("forkserver")
CHILDREN.set_forkserver_preload(["fsserver.forkbase"])
QUICK_DEATH = 5.0
"""A child that dies sooner than this after starting counts as a failed boot."""
MAX_QUICK_DEATHS = 5


class Role(Enum):
    WORKER = "worker"
    HASHER = "hasher"
    PERSISTER = "persister"


@dataclass(eq=False)
class Child:
    role: Role
    index: int
    process: BaseProcess
    exited: asyncio.Future[int]
    """Resolves to the exit code once the child is reaped (set by ``spawn``)."""
    started: float = field(default_factory=time.monotonic)
    channel: MessageChannel | None = None
    ready: bool = False
    watching: dict[str, int | None] = field(default_factory=dict)
    """Shares this worker has subscribers for (see ``feed.ChangeFeed.watched``)."""

    @property
    def name(self) -> str:
        return f"{self.role.value}-{self.index}"

    @property
    def alive(self) -> bool:
        return not self.exited.done()


REAP_POLL = 0.005
"""Seconds between checks for a child that has ended but whose exit code is not known yet."""
START_TRIES = 2
"""A start that fails (the fork server died: the next try starts a new one) is tried again."""


def spawn(
    role: Role,
    index: int,
    target: Callable[..., None],
    args: tuple[Any, ...],
    on_exit: Callable[[Child], None],
) -> Child:
    """Start a child and call *on_exit* on the loop when it ends."""
    process = started(role, index, target, args)
    loop = asyncio.get_running_loop()
    child = Child(role, index, process, exited=loop.create_future())
    try:  # readable once the child has ended (not when the fork server has: see forkbase)
        watched: int | None = os.pidfd_open(process.pid)
    except (OSError, AttributeError):  # (Linux before 5.3) the fork server's word
        watched = None
    ended = process.sentinel if watched is None else watched

    def reaped() -> None:
        """The fork server reaps the child and then sends its exit code, a moment after the
        child has ended: poll until it has, so that its real exit code is known."""
        process.join(0)
        if process.exitcode is None:
            loop.call_later(REAP_POLL, reaped)
            return
        if not child.exited.done():
            child.exited.set_result(process.exitcode)
        on_exit(child)

    def closed() -> None:
        loop.remove_reader(ended)
        if watched is not None:
            os.close(watched)
        reaped()

    loop.add_reader(ended, closed)
    log.debug("started %s (pid %s)", child.name, process.pid)
    return child


def started(role: Role, index: int, target: Callable[..., None], args: tuple[Any, ...]
            ) -> BaseProcess:  # fmt: skip
    """A child started. A terminal's Ctrl-C reaches the whole process group: a child still
    starting would die of it with a traceback. It starts with SIGINT blocked (the fork
    server's mask, inherited; a signal meanwhile waits for the unblock here), and ignores it
    in ``setup_child``. The first start starts the fork server, which waits for it to have
    loaded the children's code: the supervisor's cleanup (its metrics folder, say) never
    comes while the fork server still loads."""
    os.environ[SUPERVISOR_PID] = str(os.getpid())  # (for the fork server: see forkbase)
    tries = 1
    while True:
        process = CHILDREN.Process(target=target, args=args, name=f"{role.value}-{index}",
                                   daemon=False)  # fmt: skip
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            process.start()
            return process
        except (OSError, EOFError) as exc:  # the fork server died (the next try starts one)
            if tries >= START_TRIES:
                raise
            tries += 1
            log.warning("cannot start %s-%d (%s); trying again", role.value, index, exc)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


class RestartPolicy:
    """Back off between restarts, and give up on a child that keeps failing to boot."""

    def __init__(self) -> None:
        self.quick_deaths: dict[tuple[Role, int], int] = {}

    def delay(self, child: Child) -> float | None:
        """Seconds to wait before restarting *child*, or None to give up. Only a child that
        died before it was ready counts as a failed boot (a worker reports ready; a hasher
        has nothing to report, so it counts by how soon it died)."""
        key = (child.role, child.index)
        booting = not child.ready  # (only workers ever report ready)
        if booting and time.monotonic() - child.started < QUICK_DEATH:
            self.quick_deaths[key] = self.quick_deaths.get(key, 0) + 1
        else:
            self.quick_deaths[key] = 0
        deaths = self.quick_deaths[key]
        if deaths >= MAX_QUICK_DEATHS:
            return None
        return min(0.1 * 2**deaths, 5.0) if deaths else 0.0


async def stop_all(children: list[Child], grace: float) -> None:
    """SIGTERM, wait up to *grace* seconds, then SIGKILL what is left."""
    for child in children:
        if child.alive and child.process.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.process.pid, signal.SIGTERM)
    pending = [child.exited for child in children if child.alive]
    if pending:
        _, still = await asyncio.wait(pending, timeout=grace)
        if still:
            for child in children:
                if child.alive and child.process.pid:
                    log.warning("%s did not stop in %.1f s; killing it", child.name, grace)
                    child.process.kill()
            await asyncio.wait(still, timeout=2.0)
