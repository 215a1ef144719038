"""``fsclient history``, ``fsclient restore`` and ``fsclient ls --deleted``: the kept
versions of files (``fsclient.versions`` asks the server)."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

from common import messages as m
from common.errors import NotFound
from fsclient.client import Client
from fsclient.formats import format_entry

STATES = {m.VersionFlags.CURRENT: "current", m.VersionFlags.CURRENT | m.VersionFlags.DELETED:
          "deleted"}  # fmt: skip
"""How a version's flags read in the listing; any other is an earlier, kept one."""


async def run(client: Client, args: argparse.Namespace) -> int:
    if args.command == "history":
        for version in await client.history(args.remote):
            print(format_version(version, args.json))
        return 0
    if args.command == "restore":
        return await _restore(client, args)
    async for page in client.deleted_pages(args.prefix):
        for entry in page:
            print(format_entry(entry, args.json))
    return 0


def format_version(version: m.VersionEntry, as_json: bool) -> str:
    """One line: version, size, digest, when it was written (UTC), who wrote it, state."""
    written = (datetime.fromtimestamp(version.written, UTC).isoformat(timespec="seconds")
               if version.written else "-")  # fmt: skip
    state = STATES.get(m.VersionFlags(version.flags), "kept")
    if as_json:
        return json.dumps({"version": version.version, "size": version.size,
                           "digest": version.digest.hex(), "written": written,
                           "writer": version.writer, "state": state,
                           "mtime_ns": version.mtime_ns}, ensure_ascii=False)  # fmt: skip
    writer = version.writer or "-"
    return (
        f"{version.version}\t{version.size}\t{version.digest.hex()}\t{written}\t{writer}\t{state}"
    )


async def _restore(client: Client, args: argparse.Namespace) -> int:
    history = await client.history(args.remote)
    chosen = _choose(history, args.version, args.remote)
    if args.to is not None:
        entry = await client.get(args.remote, args.to, version=chosen.version)
        print(f"downloaded {entry.path} version {chosen.version} to {args.to} "
              f"({entry.size} bytes)")  # fmt: skip
        return 0
    made = await client.restore(args.remote, chosen.version)
    print(f"restored {args.remote} version {chosen.version} as version {made}")
    return 0


def _choose(history: list[m.VersionEntry], wanted: int | None, remote: str) -> m.VersionEntry:
    """The version asked for, or the newest with content before the current state."""
    with_content = [v for v in history if not v.flags & m.VersionFlags.DELETED]
    if wanted is not None:
        for version in with_content:
            if version.version == wanted:
                return version
        numbers = ", ".join(str(v.version) for v in with_content) or "none"
        raise NotFound(f"{remote} has no version {wanted} (versions with content: {numbers})")
    earlier = [v for v in with_content if not v.flags & m.VersionFlags.CURRENT]
    if not earlier:
        raise NotFound(f"{remote} has no earlier version to restore")
    return earlier[0]
