"""``fsclient shares``, ``--create-share``, and connecting to a share that must exist.

The command line asks the server for an existing share (the ``EXISTING_SHARE`` handshake flag):
a typo in ``--share`` is refused, naming the share, instead of quietly making a new one. Only a
command given ``--create-share`` (``put``, ``sync``) makes it.
"""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from fsclient.access import DEFAULT_SERVER, Access

if TYPE_CHECKING:
    from common.errors import NoSuchShare
    from fsclient.client import Client
    from fsclient.sync.state import StateDB

CREATES = ("put", "sync")
"""The commands that take ``--create-share``."""


def no_share_hint(command: str) -> str:
    """What the user can do about a share that does not exist."""
    if command in CREATES:
        return " (fsclient shares lists them; --create-share makes it)"
    return " (fsclient shares lists them)"


async def connect(args: argparse.Namespace, share: str | None = None) -> Client:
    """A client on the share the options name, which must exist unless ``--create-share``."""
    from common.errors import NoSuchShare
    from fsclient.client import Client

    try:
        return await Client.connect(
            args.server or os.environ.get("FS_SERVER") or DEFAULT_SERVER,
            share or args.share or os.environ.get("FS_SHARE") or "default",
            max_packet=getattr(args, "max_packet", None),
            access=Access.from_args(args),
            create_share=bool(getattr(args, "create_share", False)),
        )
    except NoSuchShare as exc:
        raise NoSuchShare(exc.message + no_share_hint(args.command)) from None


def share_refused(exc: NoSuchShare, db: StateDB) -> NoSuchShare:
    """``fsclient sync`` to a share that does not exist: the error to show. A folder that never
    synced forgets the share, so that the next run may name the right one."""
    from common.errors import NoSuchShare

    if not db.meta("store_id"):
        db.set_meta(share="")
    return NoSuchShare(exc.message + no_share_hint("sync"))


async def list_shares(args: argparse.Namespace) -> int:
    import json

    async with await connect(args) as client:
        shares = await client.shares()
    for info in shares:
        if args.json:
            print(json.dumps({"name": info.name, "files": info.files, "bytes": info.bytes}))
        else:
            print(f"{info.name}\t{info.files}\t{info.bytes}")
    return 0
