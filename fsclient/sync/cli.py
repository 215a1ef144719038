"""``fsclient sync DIR``, ``fsclient status DIR`` and ``fsclient unsync DIR``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from common.errors import FSError
from common.paths import check_name
from fsclient.access import DEFAULT_SERVER, Access
from fsclient.sharecmd import share_refused
from fsclient.sync.commands import QUIET

if TYPE_CHECKING:  # imported where used: put, get, ls and rm need neither (nor sqlite3)
    from fsclient.sync.state import StateDB
    from fsclient.sync.survey import FolderSurvey


class SetupError(ValueError):
    """The folder cannot be synced as asked (the message says why): exit 1."""


class UsageError(SetupError):
    """The command line asks for something it must say more clearly (``--rebind``): exit 2."""


def synced_folder(path: str) -> Path:
    """The folder to sync (absolute: the state and messages name it so)."""
    folder = Path(path).absolute()
    if not folder.is_dir():
        raise SetupError(f"{folder} does not exist or is not a folder")
    return folder


@dataclass
class Binding:
    """The server and share a folder syncs with, and how to reach it. Saved with the folder
    only once a connection with them succeeded (a mistyped ``--server`` must not stick)."""

    server: str
    share: str
    access: Access
    connected: bool = False

    def save(self, db: StateDB) -> None:
        """A connection succeeded: the folder is bound to this server from now on."""
        self.connected = True
        ca = os.path.abspath(self.access.tls_ca) if self.access.tls_ca else ""
        db.set_meta(server=self.server, share=self.share, tls_ca=ca,
                    tls="1" if self.access.uses_tls else "0",
                    tls_fingerprint=self.access.tls_fingerprint)  # fmt: skip


def binding(args: argparse.Namespace, folder: Path, db: StateDB) -> Binding:
    """What this run syncs with: the command line and environment, else what the folder was
    bound to. A folder bound to a server moves to another only with ``--rebind``."""
    stored = db.meta("share")
    share = check_name(args.share or os.environ.get("FS_SHARE") or stored or "default")
    if stored and share != stored:
        raise SetupError(f"{folder} is synced with share {stored!r}, not {share!r}")
    given = args.server or os.environ.get("FS_SERVER")
    bound = db.meta("server")
    if args.rebind and not given:
        raise UsageError("--rebind needs --server: the server to move the folder to")
    if given and bound and given != bound and not args.rebind:
        raise UsageError(f"{folder} is synced with server {bound}, not {given}; "
                         f"to move it to {given}, add --rebind")  # fmt: skip
    if given and bound and given != bound:
        logging.getLogger(__name__).info("moving %s from %s to %s", folder, bound, given)
    return Binding(given or bound or DEFAULT_SERVER, share, folder_access(args, db))


def default_client_id() -> str:
    host = "".join(c for c in os.uname().nodename if c.isalnum() or c in "-_")[:24] or "host"
    return f"{host}-{os.urandom(3).hex()}"


def folder_access(args: argparse.Namespace, db: StateDB) -> Access:
    """Token and TLS settings; the TLS ones are remembered with the folder (a later run
    without them must not fall back to plain TCP), the token never is (it is a secret)."""
    given = Access.from_args(args)
    return Access(
        token=given.token,
        tls=given.tls or db.meta("tls") == "1",
        tls_ca=given.tls_ca or db.meta("tls_ca", ""),
        tls_fingerprint=given.tls_fingerprint or db.meta("tls_fingerprint", ""),
        compress=given.compress,
    )


async def sync(args: argparse.Namespace) -> int:
    import shutil

    from fsclient.sync.lock import FolderBusy, FolderLock
    from fsclient.sync.state import MARKER, StateDB
    from fsclient.sync.survey import FolderSurvey

    if args.debounce < 0:
        raise SetupError("--debounce must not be negative")
    level = logging.ERROR if args.verbosity == QUIET else logging.INFO
    logging.basicConfig(stream=sys.stderr, level=level, format="fsclient: %(message)s")
    folder = synced_folder(args.dir)
    created = not StateDB.exists(folder)
    (folder / MARKER).mkdir(exist_ok=True)
    try:
        lock = FolderLock(folder).acquire()
    except FolderBusy as exc:
        return error(str(exc), 1)
    db = StateDB(folder, create=created)
    survey = FolderSurvey.for_folder(folder)  # the first look at the folder, in a process
    bound: Binding | None = None
    try:
        bound = binding(args, folder, db)
        client_id = db.meta("client_id") or default_client_id()
        db.set_meta(client_id=client_id)
        return await run_engine(args, folder, db, bound, client_id, survey)
    except UsageError as exc:
        return error(str(exc), 2)
    finally:
        survey.drop()
        db.close()
        if created and not (bound and bound.connected):  # nothing of this run is worth keeping
            shutil.rmtree(folder / MARKER, ignore_errors=True)
        lock.release()


async def run_engine(args: argparse.Namespace, folder: Path, db: StateDB, bound: Binding,
                     client_id: str, survey: FolderSurvey) -> int:  # fmt: skip
    """Sync until done or stopped; the summary, unless -q. Exit 1 if anything failed, or
    if no connection was ever made (that is no sync at all, whatever the reason)."""
    from common.errors import NoSuchShare
    from fsclient.sync.actions import FolderGone
    from fsclient.sync.engine import SyncEngine
    from fsclient.sync.report import Tally, Verbosity

    tally = Tally(Verbosity(args.verbosity), db)
    engine = SyncEngine(folder, db, bound.server, bound.share, client_id, args.debounce,
                        args.once, bound.access, tally)  # fmt: skip
    engine.on_connect = lambda: bound.save(db)
    engine.create_share = args.create_share
    started = time.monotonic()
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        code = await engine.run(survey)
    except FolderGone as exc:
        return error(str(exc), 2)
    except NoSuchShare as exc:
        raise share_refused(exc, db) from None
    except asyncio.CancelledError:  # SIGTERM: a clean stop
        code = 0
    except (FSError, OSError) as exc:
        if bound.connected:
            raise
        engine.last_error = exc.message if isinstance(exc, FSError) else str(exc)
    if not bound.connected:
        return error(f"never connected to {bound.server} ({engine.last_error or 'stopped'}): "
                     f"nothing was synced", 1)  # fmt: skip
    tally.end_batch()
    if tally.verbosity is not Verbosity.QUIET:
        print(f"synced {folder} with {bound.server}/{bound.share}: {tally.line()} in "
              f"{time.monotonic() - started:.1f} s")  # fmt: skip
    for path, why in list(tally.failed.items())[:20]:
        print(f"  failed: {path}: {why}", file=sys.stderr)
    return code


def error(message: str, code: int) -> int:
    print(f"fsclient: error: {message}", file=sys.stderr)
    return code


def unsync(args: argparse.Namespace) -> int:
    """Forget that a folder is synced: its state goes (once no sync holds it), its files stay."""
    import shutil

    from fsclient.sync.lock import FolderBusy, FolderLock
    from fsclient.sync.state import MARKER, StateDB

    folder = Path(args.dir).absolute()
    if not StateDB.exists(folder):
        raise SetupError(f"{folder} is not a synced folder (no {folder / MARKER})")
    try:
        with FolderLock(folder):
            db = StateDB(folder)
            server, share = db.meta("server"), db.meta("share")
            db.close()
            shutil.rmtree(folder / MARKER)
    except FolderBusy as exc:
        return error(f"cannot unsync: {exc}", 1)
    print(f"{folder} is no longer synced with {server}/{share}: its state is removed, "
          f"its files are kept")  # fmt: skip
    return 0


def status(args: argparse.Namespace) -> int:
    from fsclient.sync.candidates import Ask
    from fsclient.sync.ignore import IgnoreRules
    from fsclient.sync.scan import Scanner
    from fsclient.sync.state import StateDB
    from fsclient.sync.survey import FolderSurvey

    folder = Path(args.dir).absolute()
    if not StateDB.exists(folder):
        raise SetupError(f"{folder} is not a synced folder (no {folder / '.fsync'})")
    db = StateDB(folder)
    scanner = Scanner(folder, IgnoreRules.load(folder))
    failures = db.failures()  # why a change did not go through the last time it was tried
    # (a download that failed is no difference on the disk, but it is pending)
    survey = FolderSurvey(folder)  # (a big folder is walked by two processes, as a sync does)
    try:
        found = survey.whole(Ask())
    finally:
        survey.drop()
    pending = set(failures) | {path for path, _, _ in found.candidates}
    named = set(db.paths_containing(".sync-conflict-")) | pending
    conflicts = sorted(
        path for path in named if ".sync-conflict-" in path.rsplit("/")[-1] and scanner.stat(path)
    )
    last = db.meta("last_sync")
    when = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(last))) if last
            else "never")  # fmt: skip
    print(f"folder:          {folder}")
    print(f"server:          {db.meta('server')}")
    print(f"share:           {db.meta('share')}")
    print(f"client id:       {db.meta('client_id')}")
    print(f"last sync:       {when} (server version {db.meta('last_seq', '0')})")
    print(f"files in sync:   {found.rows}")
    print(f"pending changes: {len(pending)}")
    for path, why in failures.items():
        print(f"  {path}: {why}")
    print(f"conflicts:       {len(conflicts)}")
    for path in conflicts:
        print(f"  {path}")
    db.close()
    return 0
