"""The ``sync`` and ``status`` commands' arguments: apart from ``fsclient.sync.cli``, which
runs them, so that building the parser loads no asyncio (``--help`` answers at once)."""

from __future__ import annotations

from fsclient.options import add_create_share


def add_commands(command: object) -> None:
    sync = command("sync", "keep a folder in two-way sync with a share")  # type: ignore[operator]
    sync.add_argument("dir")
    sync.add_argument("--once", action="store_true", help="one full reconcile, then exit")
    add_create_share(sync)
    sync.add_argument(
        "--debounce",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="wait this long after a change before sending it (default 2)",
    )
    status = command("status", "what a synced folder is doing")  # type: ignore[operator]
    status.add_argument("dir")
