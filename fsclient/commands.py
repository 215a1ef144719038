"""The ``fsclient`` commands put, get, ls, rm (and the dispatch to sync, status, shares and
help), run once ``fsclient.cli`` has parsed the arguments.

Exit code 0 on success; 1 with a one-line ``fsclient: error: ...`` on stderr when the operation
fails; 2 for a usage error; 130 after Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Iterable
from types import FrameType
from typing import TYPE_CHECKING, Any

from common.errors import FSError, NotFound
from common.heap import tune_gc
from fsclient.formats import LongLayout, describe, format_entry
from fsclient.sharecmd import connect

if TYPE_CHECKING:
    from fsclient.client import Client
    from fsclient.tree import PutPlan

# Each command loads what only it needs when it runs (``ls`` of an empty share is timed whole
# in the latency bench): the tree commands, the progress display, sync, the help topics.


class Interrupt:
    """Ctrl-C while a command runs: the first cancels the command, which cleans up at its next
    await (main then exits 130); a second ends the process at once. The handler never raises
    KeyboardInterrupt, so no moment of the run can end in a traceback."""

    def __init__(self) -> None:
        self.fired = False
        self.previous: Any = None

    def cancels(self, task: asyncio.Task[Any]) -> None:
        previous = signal.getsignal(signal.SIGINT)
        if previous is signal.SIG_IGN:  # started in the background: Ctrl-C is not for us
            return
        loop = asyncio.get_running_loop()

        def on_sigint(signum: int, frame: FrameType | None) -> None:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            self.fired = True
            if not loop.is_closed():
                loop.call_soon_threadsafe(task.cancel)

        self.previous = previous
        signal.signal(signal.SIGINT, on_sigint)

    def restore(self) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


async def run(args: argparse.Namespace, interrupt: Interrupt) -> int:
    task = asyncio.current_task()
    assert task is not None
    interrupt.cancels(task)
    try:
        return await _command(args)
    except asyncio.CancelledError:
        if interrupt.fired:
            return 130
        raise


async def _command(args: argparse.Namespace) -> int:
    if args.command in ("sync", "status", "unsync"):
        from fsclient.sync import cli as sync_cli

        if args.command == "sync":
            return await sync_cli.sync(args)
        return sync_cli.status(args) if args.command == "status" else sync_cli.unsync(args)
    if args.command == "shares":
        from fsclient.sharecmd import list_shares

        return await list_shares(args)
    if args.command == "help":
        from fsclient.helptopics import show as show_topic

        return show_topic(args)
    plan = _plan_put(args) if args.command == "put" else None  # (a typo needs no server)
    client = await connect(args)
    async with client:
        if plan is not None:
            return await _put(client, plan)
        if args.command in ("history", "restore") or (args.command == "ls" and args.deleted):
            from fsclient import versioncmd

            return await versioncmd.run(client, args)
        actions: dict[str, Callable[[Client, argparse.Namespace], Awaitable[int]]] = {
            "get": _get, "ls": _ls, "rm": _rm,
        }  # fmt: skip
        return await actions[args.command](client, args)


def _plan_put(args: argparse.Namespace) -> PutPlan:
    """``put A B C``: the last is the target (argparse gives every name to LOCAL)."""
    from fsclient.tree import plan_put

    sources, target = args.local, args.remote
    if target is None and len(sources) > 1:
        *sources, target = sources
    return plan_put(sources, target, args.recursive)


async def _put(client: Client, plan: PutPlan) -> int:
    from fsclient.formats import wire_note
    from fsclient.progress import TerminalProgress
    from fsclient.tree import put_tree

    if plan.one_file:
        local, remote = plan.pairs[0]
        conn = client.proto.conn
        before = conn.data_traffic()
        with TerminalProgress(f"put {remote}") as progress:
            entry = await client.put(local, remote, progress=progress)
        note = wire_note(before, conn.data_traffic()) if client.proto.conn is conn else ""
        print(f"uploaded {entry.path} ({entry.size} bytes, version {entry.version}{note})")
        return 0
    return await put_tree(client, plan)


async def _get(client: Client, args: argparse.Namespace) -> int:
    from fsclient.progress import TerminalProgress
    from fsclient.tree import UsageError, get_tree, plan_get

    to_stdout = args.local == "-"
    plan = await plan_get(client, args.remote, None if to_stdout else args.local, args.recursive)
    if to_stdout and not plan.one_file:
        raise UsageError("- (stdout) takes one file, not a folder")
    if not plan.one_file:
        return await get_tree(client, plan)
    entry, dest = plan.pairs[0]
    if to_stdout:
        await _get_to_stdout(client, entry.path)
        return 0
    with TerminalProgress(f"get {entry.path}") as progress:
        entry = await client.get(entry.path, dest, progress=progress)
    print(f"downloaded {entry.path} ({entry.size} bytes, version {entry.version})")
    return 0


async def _get_to_stdout(client: Client, path: str) -> None:
    """The file goes to a temp file first: nothing is written out before its digest checks."""
    import shutil
    import tempfile

    from fsclient.progress import TerminalProgress

    with tempfile.TemporaryDirectory(prefix="fsclient-") as folder:
        with TerminalProgress(f"get {path}") as progress:
            await client.get(path, folder, progress=progress)
        with open(os.path.join(folder, path.rsplit("/", 1)[-1]), "rb") as f:
            sys.stdout.flush()
            shutil.copyfileobj(f, sys.stdout.buffer)
            sys.stdout.buffer.flush()


async def _ls(client: Client, args: argparse.Namespace) -> int:
    """Printed a page at a time, as the server sends them (any size, bounded memory)."""
    layout = LongLayout() if args.long and not args.json else None
    async for page in client.ls_tree_pages(args.prefix):
        if layout is not None:
            lines: Iterable[str] = layout.lines(page)
        else:
            lines = (format_entry(entry, args.json) for entry in page)
        for line in lines:
            print(line)
    return 0


async def _rm(client: Client, args: argparse.Namespace) -> int:
    from fsclient.tree import UsageError, rm_tree

    code = 0
    for remote in args.remote:
        if args.recursive:
            code |= await rm_tree(client, remote)
            continue
        try:
            version = await client.rm(remote)
        except NotFound:
            if await client.ls(remote.rstrip("/") + "/", page=1):
                raise UsageError(f"{remote} is a folder: use -r to delete it") from None
            raise
        print(f"deleted {remote} (version {version})")
    return code


def stdout_gone() -> bool:
    """Whether the reader of our output went away (a pipe with no reader polls as an
    error). If so, output goes to /dev/null from now on, so that the flush at exit is quiet
    too, and the command ends with 0, as ``ls | head`` does."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        gone = any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):
        return False
    if gone:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return gone


def execute(args: argparse.Namespace) -> int:
    """Run the parsed command; its exit code (the messages of failures on stderr)."""
    interrupt = Interrupt()
    try:
        import uvloop

        tune_gc()
        code = uvloop.run(run(args, interrupt))
    except BrokenPipeError as exc:
        code = 0 if stdout_gone() else 1  # `fsclient ls | head`: the reader had enough
        if code:
            print(f"fsclient: error: {exc}", file=sys.stderr)
    except (FSError, OSError, ValueError) as exc:
        from fsclient.tree import UsageError

        code = 2 if isinstance(exc, UsageError) else 1
        if not interrupt.fired:
            print(f"fsclient: error: {describe(exc)}", file=sys.stderr)
    finally:
        interrupt.restore()
    if interrupt.fired:
        print("fsclient: interrupted", file=sys.stderr)
        return 130
    return code
