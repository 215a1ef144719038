"""``fsclient`` command line: put, get, ls, rm.

Exit code 0 on success; 1 with a one-line ``fsclient: error: ...`` on stderr when the operation
fails; 2 for a usage error. Common options are accepted before or after the subcommand's
arguments.
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
from common.limits import MIN_MAX_PACKET
from common.version import VersionAction
from fsclient.access import DEFAULT_SERVER
from fsclient.access import add_options as add_access_options
from fsclient.config import apply_config
from fsclient.formats import describe, format_entry, long_listing
from fsclient.helptopics import add_command as add_help_command
from fsclient.helptopics import show as show_topic
from fsclient.progress import TerminalProgress
from fsclient.sharecmd import add_commands as add_share_commands
from fsclient.sharecmd import add_create_share, connect, list_shares
from fsclient.sync.cli import add_commands, status, sync
from fsclient.tree import PutPlan, UsageError, get_tree, plan_get, plan_put, put_tree, rm_tree

if TYPE_CHECKING:
    from fsclient.client import Client


def _packet_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of bytes: {text!r}") from None
    if value < MIN_MAX_PACKET:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_MAX_PACKET}")
    return value


def _add_common(parser: argparse.ArgumentParser, suppress: bool) -> None:
    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--server",
        default=default(None),
        metavar="HOST:PORT",
        help=f"server address (env FS_SERVER, default {DEFAULT_SERVER})",
    )
    parser.add_argument(
        "--share",
        default=default(None),
        metavar="NAME",
        help="share to use (env FS_SHARE, default 'default')",
    )
    parser.add_argument(
        "--max-packet",
        type=_packet_size,
        default=default(None),
        metavar="BYTES",
        help="largest packet to negotiate (default: the most the server allows;"
        " 4096 keeps the seed protocol's size)",
    )
    add_access_options(parser, suppress)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fsclient", description="FS file-sync client.")
    parser.add_argument("--version", action=VersionAction)
    _add_common(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text)
        _add_common(sub, suppress=True)
        return sub

    put = command("put", "upload files (and folders, with -r) on one connection")
    put.add_argument("local", nargs="+", metavar="LOCAL",
                     help="a local file (or folder, with -r); several are allowed")  # fmt: skip
    put.add_argument("remote", nargs="?", metavar="REMOTE",
                     help="where to: a remote file name, or a folder ending in '/'"
                     " (default: the file's or folder's own name)")  # fmt: skip
    put.add_argument("-r", "--recursive", action="store_true",
                     help="upload folders and everything in them")  # fmt: skip
    add_create_share(put)
    get = command("get", "download a file (atomically: temp file, then rename), or a folder")
    get.add_argument("remote", metavar="REMOTE",
                     help="a remote file (or folder, with -r)")  # fmt: skip
    get.add_argument("local", nargs="?", metavar="LOCAL",
                     help="a local file or folder (default: the remote name, here);"
                     " - writes the file to stdout")  # fmt: skip
    get.add_argument("-r", "--recursive", action="store_true",
                     help="download the folder REMOTE and everything in it into LOCAL")  # fmt: skip
    ls = command("ls", "list files: path, size, version, digest, mtime")
    ls.add_argument("prefix", nargs="?", default="", metavar="PATH",
                    help="a file, or a folder to list all in (default: every file)")  # fmt: skip
    ls.add_argument("-l", "--long", action="store_true",
                    help="for people: a header, sizes in KiB/MiB, local times")  # fmt: skip
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    rm = command("rm", "delete files (and folders, with -r)")
    rm.add_argument("remote", nargs="+", metavar="REMOTE",
                    help="a remote file (or folder, with -r); several are allowed")  # fmt: skip
    rm.add_argument("-r", "--recursive", action="store_true",
                    help="delete the folder and every file in it")  # fmt: skip
    add_commands(command)
    add_share_commands(command)
    add_help_command(command)
    return parser


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
    if args.command == "sync":
        return await sync(args)
    if args.command == "status":
        return status(args)
    if args.command == "shares":
        return await list_shares(args)
    if args.command == "help":
        return show_topic(args)
    plan = _plan_put(args) if args.command == "put" else None  # (a typo needs no server)
    client = await connect(args)
    async with client:
        if plan is not None:
            return await _put(client, plan)
        actions: dict[str, Callable[[Client, argparse.Namespace], Awaitable[int]]] = {
            "get": _get, "ls": _ls, "rm": _rm,
        }  # fmt: skip
        return await actions[args.command](client, args)


def _plan_put(args: argparse.Namespace) -> PutPlan:
    """``put A B C``: the last is the target (argparse gives every name to LOCAL)."""
    sources, target = args.local, args.remote
    if target is None and len(sources) > 1:
        *sources, target = sources
    return plan_put(sources, target, args.recursive)


async def _put(client: Client, plan: PutPlan) -> int:
    if plan.one_file:
        local, remote = plan.pairs[0]
        with TerminalProgress(f"put {remote}") as progress:
            entry = await client.put(local, remote, progress=progress)
        print(f"uploaded {entry.path} ({entry.size} bytes, version {entry.version})")
        return 0
    return await put_tree(client, plan)


async def _get(client: Client, args: argparse.Namespace) -> int:
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

    with tempfile.TemporaryDirectory(prefix="fsclient-") as folder:
        with TerminalProgress(f"get {path}") as progress:
            await client.get(path, folder, progress=progress)
        with open(os.path.join(folder, path.rsplit("/", 1)[-1]), "rb") as f:
            sys.stdout.flush()
            shutil.copyfileobj(f, sys.stdout.buffer)
            sys.stdout.buffer.flush()


async def _ls(client: Client, args: argparse.Namespace) -> int:
    entries = await client.ls_tree(args.prefix)
    if args.long and not args.json:
        lines: Iterable[str] = long_listing(entries)
    else:
        lines = (format_entry(entry, args.json) for entry in entries)
    for line in lines:
        print(line)
    return 0


async def _rm(client: Client, args: argparse.Namespace) -> int:
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    apply_config(parser, args)
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
        code = 2 if isinstance(exc, UsageError) else 1
        if not interrupt.fired:
            print(f"fsclient: error: {describe(exc)}", file=sys.stderr)
    finally:
        interrupt.restore()
    if interrupt.fired:
        print("fsclient: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
