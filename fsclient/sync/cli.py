"""``fsclient sync DIR`` and ``fsclient status DIR``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from common.paths import check_name
from fsclient.access import DEFAULT_SERVER, Access
from fsclient.sharecmd import share_refused

if TYPE_CHECKING:  # imported where used: put, get, ls and rm need neither (nor sqlite3)
    from fsclient.sync.state import StateDB


class SetupError(ValueError):
    """The folder cannot be synced as asked (the message says why)."""


def open_folder(args: argparse.Namespace) -> tuple[Path, StateDB, str, str, str]:
    """The folder, its state, and the server, share and client id to use for it."""
    from fsclient.sync.state import StateDB

    folder = Path(args.dir).absolute()
    if not folder.is_dir():
        raise SetupError(f"{folder} does not exist or is not a folder")
    db = StateDB(folder, create=not StateDB.exists(folder))
    stored = db.meta("share")
    share = check_name(args.share or os.environ.get("FS_SHARE") or stored or "default")
    if stored and share != stored:
        raise SetupError(f"{folder} is synced with share {stored!r}, not {share!r}")
    server = args.server or os.environ.get("FS_SERVER") or db.meta("server") or DEFAULT_SERVER
    client_id = db.meta("client_id") or default_client_id()
    db.set_meta(share=share, server=server, client_id=client_id)
    return folder, db, server, share, client_id


def default_client_id() -> str:
    host = "".join(c for c in os.uname().nodename if c.isalnum() or c in "-_")[:24] or "host"
    return f"{host}-{os.urandom(3).hex()}"


def folder_access(args: argparse.Namespace, db: StateDB) -> Access:
    """Token and TLS settings; the TLS ones are remembered with the folder (a later run
    without them must not fall back to plain TCP), the token never is (it is a secret)."""
    given = Access.from_args(args)
    access = Access(
        token=given.token,
        tls=given.tls or db.meta("tls") == "1",
        tls_ca=given.tls_ca or db.meta("tls_ca", ""),
        tls_fingerprint=given.tls_fingerprint or db.meta("tls_fingerprint", ""),
    )
    db.set_meta(tls="1" if access.uses_tls else "0", tls_ca=os.path.abspath(access.tls_ca)
                if access.tls_ca else "", tls_fingerprint=access.tls_fingerprint)  # fmt: skip
    return access


async def sync(args: argparse.Namespace) -> int:
    from common.errors import NoSuchShare
    from fsclient.sync.actions import FolderGone
    from fsclient.sync.engine import SyncEngine

    if args.debounce < 0:
        raise SetupError("--debounce must not be negative")
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="fsclient: %(message)s")
    folder, db, server, share, client_id = open_folder(args)
    access = folder_access(args, db)
    engine = SyncEngine(folder, db, server, share, client_id, args.debounce, args.once, access)
    engine.create_share = args.create_share
    started = time.monotonic()
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        code = await engine.run()
    except FolderGone as exc:
        print(f"fsclient: error: {exc}", file=sys.stderr)
        return 2
    except NoSuchShare as exc:
        raise share_refused(exc, db) from None
    except asyncio.CancelledError:  # SIGTERM: a clean stop
        code = 0
    finally:
        db.close()
    tally = engine.actions.tally
    print(f"synced {folder} with {server}/{share}: {tally.line()} in "
          f"{time.monotonic() - started:.1f} s")  # fmt: skip
    for path, why in list(tally.failed.items())[:20]:
        print(f"  failed: {path}: {why}", file=sys.stderr)
    return code


def status(args: argparse.Namespace) -> int:
    from fsclient.sync.ignore import IgnoreRules
    from fsclient.sync.scan import Scanner, same_stat
    from fsclient.sync.state import StateDB

    folder = Path(args.dir).absolute()
    if not StateDB.exists(folder):
        raise SetupError(f"{folder} is not a synced folder (no {folder / '.fsync'})")
    db = StateDB(folder)
    scanner = Scanner(folder, IgnoreRules.load(folder))
    base = {entry.path: entry for entry in db.all()}
    pending = conflicts = 0
    conflict_paths = []
    seen = set()
    for path, st in scanner.walk():
        seen.add(path)
        if not same_stat(st, base.get(path)):
            pending += 1
        if ".sync-conflict-" in path.rsplit("/", 1)[-1]:
            conflicts += 1
            conflict_paths.append(path)
    pending += sum(1 for path in base if path not in seen)
    last = db.meta("last_sync")
    when = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(last))) if last
            else "never")  # fmt: skip
    print(f"folder:          {folder}")
    print(f"server:          {db.meta('server')}")
    print(f"share:           {db.meta('share')}")
    print(f"client id:       {db.meta('client_id')}")
    print(f"last sync:       {when} (server version {db.meta('last_seq', '0')})")
    print(f"files in sync:   {len(base)}")
    print(f"pending changes: {pending}")
    print(f"conflicts:       {conflicts}")
    for path in conflict_paths:
        print(f"  {path}")
    db.close()
    return 0
