"""The three-way reconcile of one path, as a pure function.

Inputs: the *base* (what disk and server last agreed on), the *local* file now, and the
*remote* state the server announced since the base (None: no news). A side "changed" if its
content (digest and permission bits, or absence) differs from the base's (a ``chmod +x`` is a
change to sync). Then:

=================  =================  ===================================================
local              remote             decision
=================  =================  ===================================================
unchanged          unchanged          nothing (or record a new stat / version; or upload, if
                                      the server may not hold it: a base without a version)
changed            unchanged          upload it, or delete it on the server
unchanged          changed            download it, or delete the local file
both changed to the same content      record it (the two sides converged)
deleted            modified           download: a modification wins over a delete
modified           deleted            upload: a modification wins over a delete
modified           modified           conflict: keep both (local becomes a conflict copy);
                                      but the same bytes with other permissions: download
                                      (the server's permissions win; no copy for a chmod)
=================  =================  ===================================================

Uploads and server deletes carry the server version they were decided against, so a change
that lands on the server meanwhile turns them into a conflict instead of an overwrite. After
the server lost its store (``reseed``), no news does not mean "unchanged": every local file
is sent again and nothing is deleted because the server lacks it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from enum import Enum, auto

from common.limits import ANY_VERSION, NO_VERSION
from fsclient.sync.state import BaseEntry

PERMISSIONS = 0o777
"""The mode bits that are synced (a download gives a file these, never setuid or sticky)."""

# Made once per file of a sync: slotted, not frozen (a frozen __init__ costs four times as much;
# see common.messages). Nothing changes them after they are made.


@dataclass(slots=True)
class LocalFile:
    path: str
    size: int
    mtime_ns: int
    mode: int
    inode: int
    digest: bytes

    def same_stat(self, base: BaseEntry | None) -> bool:
        return base is not None and (self.size, self.mtime_ns, self.inode) == (
            base.size, base.mtime_ns, base.inode
        )  # fmt: skip


@dataclass(slots=True)
class RemoteState:
    """A path as the server announced it: ``version`` is the change's sequence number."""

    version: int
    deleted: bool
    size: int = 0
    mtime_ns: int = 0
    mode: int = 0o644
    digest: bytes = b""


class Do(Enum):
    NOTHING = auto()
    RECORD = auto()
    FORGET = auto()
    UPLOAD = auto()
    DOWNLOAD = auto()
    DELETE_LOCAL = auto()
    DELETE_REMOTE = auto()
    CONFLICT = auto()


@dataclass(slots=True)
class Decision:
    do: Do
    expected: int = ANY_VERSION
    """For UPLOAD and DELETE_REMOTE: the server version the decision was made against."""
    version: int = 0
    """For RECORD: the server version the base should now carry."""


def decide(base: BaseEntry | None, local: LocalFile | None, remote: RemoteState | None,
           reseed: bool = False) -> Decision:  # fmt: skip
    b_digest = (base.digest, base.mode & PERMISSIONS) if base else None
    l_digest = (local.digest, local.mode & PERMISSIONS) if local else None
    if remote is None and reseed:
        if local is not None:
            return Decision(Do.UPLOAD, ANY_VERSION)
        return Decision(Do.FORGET) if base else Decision(Do.NOTHING)
    if remote is None:
        r_digest = b_digest
        r_version = base.version if base and base.version else NO_VERSION
    else:
        r_digest = None if remote.deleted else (remote.digest, remote.mode & PERMISSIONS)
        r_version = NO_VERSION if remote.deleted else remote.version
    local_changed = l_digest != b_digest
    remote_changed = r_digest != b_digest
    if not local_changed and not remote_changed:
        return _settled(base, local, r_version)
    if not remote_changed:  # only the local side changed
        if local is not None:
            return Decision(Do.UPLOAD, r_version)
        return Decision(Do.DELETE_REMOTE, r_version) if r_digest is not None else _forget(base)
    if not local_changed:  # only the server changed
        if r_digest is not None:
            return Decision(Do.DOWNLOAD)
        return Decision(Do.DELETE_LOCAL) if local is not None else _forget(base)
    if l_digest == r_digest:  # both changed, the same way
        return Decision(Do.RECORD, version=r_version) if local else _forget(base)
    if local is None:
        return Decision(Do.DOWNLOAD)
    if r_digest is None:
        return Decision(Do.UPLOAD, NO_VERSION)
    if l_digest is not None and l_digest[0] == r_digest[0]:  # only the permissions differ
        return Decision(Do.DOWNLOAD)
    return Decision(Do.CONFLICT, r_version)


def _settled(base: BaseEntry | None, local: LocalFile | None, r_version: int) -> Decision:
    """Content agrees everywhere; only bookkeeping may be stale. A base without a version
    (the store was replaced, and this file's upload did not go through yet) is sent, but only
    if the server does not hold the path (else the conflict brings its news)."""
    if local is None:
        return _forget(base)
    if base is not None and base.version == NO_VERSION and r_version == NO_VERSION:
        return Decision(Do.UPLOAD, NO_VERSION)
    if base is None or not local.same_stat(base) or base.version != r_version:
        return Decision(Do.RECORD, version=r_version)
    return Decision(Do.NOTHING)


def _forget(base: BaseEntry | None) -> Decision:
    return Decision(Do.FORGET) if base else Decision(Do.NOTHING)


def conflict_name(path: str, client_id: str, now: float | None = None) -> str:
    """``dir/NAME.sync-conflict-YYYYMMDD-HHMMSS-<client id>.EXT`` for ``dir/NAME.EXT``."""
    folder, slash, name = path.rpartition("/")
    stem, dot, ext = name.rpartition(".")
    if not stem:  # no extension (or a dot file such as .bashrc)
        stem, dot, ext = name, "", ""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return f"{folder}{slash}{stem}.sync-conflict-{stamp}-{client_id}{dot}{ext}"
