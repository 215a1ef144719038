"""The ``sync``, ``status`` and ``unsync`` commands' arguments: apart from
``fsclient.sync.cli``, which runs them, so that building the parser loads no asyncio
(``--help`` answers at once)."""

from __future__ import annotations

from fsclient.options import add_create_share

VERBOSE, NORMAL, QUIET = 2, 1, 0
"""``report.Verbosity`` (not imported here: building the parser must stay light)."""


def add_commands(command: object) -> None:
    sync = command("sync", "keep a folder in two-way sync with a share")  # type: ignore[operator]
    sync.add_argument("dir", metavar="DIR", help="the local folder to keep in sync")
    sync.add_argument("--once", action="store_true", help="one full reconcile, then exit")
    add_create_share(sync)
    sync.add_argument(
        "--debounce",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="wait this long after a change before sending it (default 2)",
    )
    sync.add_argument(
        "--rebind",
        action="store_true",
        help="move a folder synced with another server to the one --server names",
    )
    talk = sync.add_mutually_exclusive_group()
    talk.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=VERBOSE,
                      default=NORMAL, help="a line per file sent, received or deleted")  # fmt: skip
    talk.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=QUIET,
                      help="print errors only")  # fmt: skip
    status = command("status", "what a synced folder is doing")  # type: ignore[operator]
    status.add_argument("dir", metavar="DIR", help="a synced folder")
    unsync = command("unsync", "stop syncing a folder: its state goes, its files stay")  # type: ignore[operator]
    unsync.add_argument("dir", metavar="DIR", help="a synced folder (no sync may run on it)")
