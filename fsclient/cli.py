"""``fsclient`` command line: the parser, and ``main``. Only what parsing needs is imported
here, so that ``--help``, ``--version`` and a usage error answer at once; the commands and the
protocol (``fsclient.commands``, asyncio) are loaded once the arguments are good.

Exit code 0 on success; 1 with a one-line ``fsclient: error: ...`` on stderr when the operation
fails; 2 for a usage error. Common options are accepted before or after the subcommand's
arguments.
"""

from __future__ import annotations

import argparse
import sys

from common.limits import MIN_MAX_PACKET
from common.version import VersionAction
from fsclient.helptopics import add_command as add_help_command
from fsclient.options import (
    DEFAULT_SERVER,
    add_access_options,
    add_create_share,
    add_share_commands,
)
from fsclient.sync.commands import add_commands

TYPE_CHECKING = False  # (not typing's: ``--help`` does without importing typing)
if TYPE_CHECKING:
    from typing import Any


def _packet_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of bytes: {text!r}") from None
    if value < MIN_MAX_PACKET:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_MAX_PACKET}")
    return value


def _version(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a version number: {text!r} (see history)")
    return int(text)


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
    ls.add_argument("--deleted", action="store_true",
                    help="list deleted files whose versions are kept (see restore)")  # fmt: skip
    rm = command("rm", "delete files (and folders, with -r)")
    rm.add_argument("remote", nargs="+", metavar="REMOTE",
                    help="a remote file (or folder, with -r); several are allowed")  # fmt: skip
    rm.add_argument("-r", "--recursive", action="store_true",
                    help="delete the folder and every file in it")  # fmt: skip
    history = command("history", "list a file's versions: version, size, digest, time, writer")
    history.add_argument("remote", metavar="REMOTE", help="a remote file (or a deleted one)")
    history.add_argument("--json", action="store_true", help="one JSON object per line")
    restore = command("restore", "bring back an earlier version of a file, as a new version "
                      "every synced client gets (or, with --to, into a local file)")  # fmt: skip
    restore.add_argument("remote", metavar="REMOTE", help="a remote file (or a deleted one)")
    restore.add_argument("--version", type=_version, metavar="V",
                         help="the version to bring back (see history; default: the "
                         "newest one before the current state)")  # fmt: skip
    restore.add_argument("--to", metavar="LOCAL",
                         help="download that version to this local file or folder instead; "
                         "the server is left as it is")  # fmt: skip
    add_commands(command)
    add_share_commands(command)
    add_help_command(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "sync":  # the folder's walk starts before the rest is loaded
        from fsclient.sync.survey import FolderSurvey

        FolderSurvey.start_early(args.dir)
    try:
        from fsclient.commands import execute
        from fsclient.config import apply_config

        apply_config(parser, args)
        return execute(args)
    finally:
        if args.command == "sync":
            FolderSurvey.drop_early()


if __name__ == "__main__":
    sys.exit(main())
