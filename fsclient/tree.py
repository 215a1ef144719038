"""Many files at once on one connection: ``fsclient put -r``, ``get -r`` and ``rm -r``.

Where things go (``plan_put``, ``plan_get``), like ``cp`` and rsync's ``DIR/ DEST/``:
- a file keeps its name in a target folder (a target ending in ``/``, no target, or the target
  of several sources), else the target is its new name;
- a single folder's files go under the target (``put -r photos backup/``: ``backup/...``;
  no target: a folder of the same name), several sources each under their own name.

Uploads go through ``Client.put_many`` (small files in batches, big ones streamed), downloads
through ``Client.get`` a window at a time (each one atomic: temp file, digest check, rename),
deletions as pipelined requests. One file that fails is reported and the rest go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from common import messages as m
from common.errors import FSError, InvalidPath, NotFound
from common.paths import is_canonical, normalize_path
from fsclient.formats import Tally, describe, wire_note
from fsclient.localfiles import DB_NAME, MARKER, TEMP_MARK
from fsclient.progress import SyncProgress

if TYPE_CHECKING:
    from fsclient.client import Client

WINDOW = 32
"""Downloads (or deletions) in flight at once on the connection."""


class UsageError(ValueError):
    """The command line asks for something that cannot be meant (exit code 2)."""


def no_such_file(path: str) -> FileNotFoundError:
    return FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)


def remote_join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def local_name(path: str) -> str:
    """The last segment of a local path (``docs/`` and ``.`` have one too)."""
    return os.path.basename(os.path.abspath(path))


@dataclass
class PutPlan:
    pairs: list[tuple[str, str]] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    one_file: bool = False
    """A single file, not a tree: shown with a byte progress bar and its version."""


def plan_put(sources: list[str], target: str | None, recursive: bool) -> PutPlan:
    """(local, remote) for every file to upload; missing sources and folders without
    *recursive* are refused before anything is sent."""
    several = len(sources) > 1
    base = (target or "").rstrip("/")  # ("/": the share's top; "/x" is refused)
    as_folder = target is None or target.endswith("/") or several or not base
    plan = PutPlan()
    for source in sources:
        try:
            st = os.stat(source)
        except FileNotFoundError:
            raise no_such_file(source) from None
        is_folder = stat.S_ISDIR(st.st_mode)
        if is_folder:
            if not recursive:
                raise UsageError(f"{source} is a folder: give a file name, or use -r")
            folder = remote_join(base, local_name(source)) if several or target is None else base
            for local, rel, size in walk(source):
                plan.pairs.append((local, remote_join(folder, rel)))
                plan.sizes.append(size)
        else:
            name = remote_join(base, local_name(source)) if as_folder else base
            plan.pairs.append((source, name))
            plan.sizes.append(st.st_size)
    plan.one_file = not several and not is_folder
    return plan


def walk(top: str) -> Iterator[tuple[str, str, int]]:
    """(path, path relative to *top* with ``/``, size) of every regular file under *top*, in
    name order. Symbolic links to folders are not followed (no loops); anything that is not a
    regular file (a FIFO, a dangling link) is skipped with a warning."""
    for folder, dirs, files in os.walk(top, onerror=warn):
        dirs.sort()
        for name in list(dirs):
            if os.path.islink(os.path.join(folder, name)):
                warn(f"skipping a link to a folder: {os.path.join(folder, name)}")
            elif name == MARKER and os.path.isfile(os.path.join(folder, name, DB_NAME)):
                dirs.remove(name)  # a synced folder's state: this client's, not a file to share
        for name in sorted(files):
            path = os.path.join(folder, name)
            if name.startswith(".") and TEMP_MARK in name:
                warn(f"skipping a download's unfinished temp file: {path}")
                continue
            try:
                st = os.stat(path)
            except OSError as exc:
                warn(exc)
                continue
            if not stat.S_ISREG(st.st_mode):
                warn(f"skipping what is not a regular file: {path}")
                continue
            yield path, os.path.relpath(path, top).replace(os.sep, "/"), st.st_size


def warn(what: object) -> None:
    text = describe(what) if isinstance(what, BaseException) else str(what)
    print(f"fsclient: warning: {text}", file=sys.stderr)


def failed(what: str, exc: BaseException) -> None:
    print(f"fsclient: error: {what}: {describe(exc)}", file=sys.stderr)


class Run:
    """A tally, a progress bar (on a terminal) and the clock of one tree command. The
    connection lost for good ends it: the files not done yet are not each reported."""

    def __init__(self, label: str, files: int, nbytes: int) -> None:
        self.tally = Tally()
        self.progress = SyncProgress(files, nbytes, label=label)
        self.start = time.monotonic()
        self.lost: FSError | None = None

    def done(self, size: int) -> None:
        self.tally.files += 1
        self.tally.nbytes += size
        self.progress.advance(1, size)

    def failed(self, what: str, exc: BaseException, size: int = 0) -> None:
        from fsclient.resume import lost  # (not at start: --help needs none of the IO)

        self.tally.failed += 1
        self.progress.advance(1, size)
        if isinstance(exc, FSError) and lost(exc):
            self.lost = self.lost or exc
        elif self.lost is None:
            failed(what, exc)

    def end(self, verb: str, note: str = "") -> int:
        """Print the summary line (and *note* after it); 1 if a file failed (each was
        reported as it did)."""
        self.progress.close()
        print(self.tally.summary(verb, time.monotonic() - self.start) + note)
        if self.lost is not None:
            raise self.lost
        return 1 if self.tally.failed else 0


async def put_tree(client: Client, plan: PutPlan) -> int:
    run = Run("put", len(plan.pairs), sum(plan.sizes))

    def on_result(index: int, result: m.FileEntry | FSError | OSError) -> None:
        if isinstance(result, m.FileEntry):
            run.done(result.size)
        else:
            run.failed(plan.pairs[index][0], result, plan.sizes[index])

    conn = client.proto.conn
    before = conn.data_traffic()
    await client.put_many(plan.pairs, on_result=on_result, keep=False)
    note = wire_note(before, conn.data_traffic()) if client.proto.conn is conn else ""
    return run.end("uploaded", note)


@dataclass
class GetPlan:
    pairs: list[tuple[m.FileEntry, Path]]
    one_file: bool


async def plan_get(client: Client, remote: str, local: str | None, recursive: bool) -> GetPlan:
    """(entry, local path) for every file to download. Without *recursive*, a single file
    (and a folder is refused with a hint); with it, the file or the folder *remote*."""
    folder = remote.rstrip("/")
    if not recursive:
        return GetPlan([(await stat_file(client, remote), Path(local or "."))], True)
    entries = [e for e in await client.ls_tree(remote) if canonical(e.path)]
    under = [e for e in entries if not folder or e.path.startswith(folder + "/")]
    if not under:
        if entries:  # a file: as without -r
            return GetPlan([(entries[0], Path(local or "."))], True)
        raise NotFound(f"not found: {folder}")
    top = Path(local if local is not None else (local_name(folder) if folder else "."))
    if top.exists() and not top.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(top))
    skip = len(folder) + 1 if folder else 0
    return GetPlan([(e, top.joinpath(*e.path[skip:].split("/"))) for e in under], False)


def canonical(path: str) -> bool:
    """A path from the server that is safe to join to a local folder (no ``..``, nothing
    absolute): a server that sends another is not followed out of the folder."""
    with contextlib.suppress(InvalidPath):  # (an invalid one is skipped, as a bad one is)
        if is_canonical(path):
            return True
    warn(f"skipping a path the server should not have sent: {path!r}")
    return False


async def stat_file(client: Client, remote: str) -> m.FileEntry:
    """The entry of the file *remote*; a folder's name is refused with a hint to use -r."""
    try:
        return await client.stat(remote)
    except NotFound:
        if await client.ls(normalize_path(remote.rstrip("/") or "/") + "/", page=1):
            raise UsageError(f"{remote} is a folder: give a file name, or use -r") from None
        raise


async def get_tree(client: Client, plan: GetPlan) -> int:
    run = Run("get", len(plan.pairs), sum(e.size for e, _ in plan.pairs))
    todo = iter(plan.pairs)

    async def worker() -> None:
        for entry, dest in todo:
            if run.lost is not None:
                return
            try:
                if dest.is_dir():
                    raise IsADirectoryError(errno.EISDIR, "a folder is in the way", str(dest))
                dest.parent.mkdir(parents=True, exist_ok=True)
                got = await client.get(entry.path, dest)
            except (FSError, OSError) as exc:
                run.failed(entry.path, exc, entry.size)
            else:
                run.done(got.size)

    await asyncio.gather(*(worker() for _ in range(min(WINDOW, len(plan.pairs)))))
    return run.end("downloaded")


async def rm_tree(client: Client, remote: str) -> int:
    """Delete the file or folder *remote*, each file only at the version listed (a file
    changed meanwhile is kept, and reported)."""
    if not remote.strip("/"):
        raise UsageError("rm -r needs a folder: it does not delete the whole share")
    entries = await client.ls_tree(remote)
    if not entries:
        raise NotFound(f"not found: {remote.strip('/')}")
    run = Run("rm", len(entries), sum(e.size for e in entries))
    todo = iter(entries)

    async def worker() -> None:
        for entry in todo:
            if run.lost is not None:
                return
            try:
                await client.rm(entry.path, base_version=entry.version)
            except FSError as exc:
                run.failed(entry.path, exc, entry.size)
            else:
                run.done(entry.size)

    await asyncio.gather(*(worker() for _ in range(min(WINDOW, len(entries)))))
    return run.end("deleted")
