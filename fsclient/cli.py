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
from collections.abc import Awaitable, Callable
from types import FrameType
from typing import Any

from common.errors import FSError
from common.heap import tune_gc
from common.limits import MIN_MAX_PACKET
from common.messages import FileEntry
from common.version import VersionAction
from fsclient.access import DEFAULT_SERVER, Access
from fsclient.access import add_options as add_access_options
from fsclient.progress import TerminalProgress
from fsclient.sync.cli import add_commands, status, sync, unsync


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

    put = command("put", "upload a local file")
    put.add_argument("local")
    put.add_argument("remote")
    get = command("get", "download a file (atomically: temp file, then rename)")
    get.add_argument("remote")
    get.add_argument("local")
    ls = command("ls", "list files: path, size, version, digest, mtime")
    ls.add_argument("prefix", nargs="?", default="")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    rm = command("rm", "delete a file")
    rm.add_argument("remote")
    add_commands(command)
    return parser


def format_entry(entry: FileEntry, as_json: bool) -> str:
    import json
    from datetime import UTC, datetime

    mtime = datetime.fromtimestamp(entry.mtime_ns / 1e9, UTC).isoformat(timespec="seconds")
    if as_json:
        return json.dumps(
            {
                "path": entry.path,
                "size": entry.size,
                "version": entry.version,
                "digest": entry.digest.hex(),
                "mtime": mtime,
                "mtime_ns": entry.mtime_ns,
                "mode": f"{entry.mode:o}",
            },
            ensure_ascii=False,
        )
    return f"{entry.path}\t{entry.size}\t{entry.version}\t{entry.digest.hex()}\t{mtime}"


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
    from fsclient.client import Client

    if args.command == "sync":
        return await sync(args)
    if args.command == "status":
        return status(args)
    if args.command == "unsync":
        return unsync(args)
    client = await Client.connect(
        args.server or os.environ.get("FS_SERVER") or DEFAULT_SERVER,
        args.share or os.environ.get("FS_SHARE") or "default",
        max_packet=args.max_packet,
        access=Access.from_args(args),
    )
    async with client:
        actions: dict[str, Callable[[], Awaitable[None]]] = {
            "put": lambda: _put(client, args),
            "get": lambda: _get(client, args),
            "ls": lambda: _ls(client, args),
            "rm": lambda: _rm(client, args),
        }
        await actions[args.command]()
    return 0


async def _put(client: Any, args: argparse.Namespace) -> None:
    with TerminalProgress(f"put {args.remote}") as progress:
        entry = await client.put(args.local, args.remote, progress=progress)
    print(f"uploaded {entry.path} ({entry.size} bytes, version {entry.version})")


async def _get(client: Any, args: argparse.Namespace) -> None:
    with TerminalProgress(f"get {args.remote}") as progress:
        entry = await client.get(args.remote, args.local, progress=progress)
    print(f"downloaded {entry.path} ({entry.size} bytes, version {entry.version})")


async def _ls(client: Any, args: argparse.Namespace) -> None:
    for entry in await client.ls(args.prefix):
        print(format_entry(entry, args.json))


async def _rm(client: Any, args: argparse.Namespace) -> None:
    version = await client.rm(args.remote)
    print(f"deleted {args.remote} (version {version})")


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
    args = build_parser().parse_args(argv)
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
        code = 1
        if not interrupt.fired:
            message = exc.message if isinstance(exc, FSError) else str(exc)
            print(f"fsclient: error: {message}", file=sys.stderr)
    finally:
        interrupt.restore()
    if interrupt.fired:
        print("fsclient: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
