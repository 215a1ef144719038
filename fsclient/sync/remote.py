"""What the server announces, as the sync engine takes it: a path it may write, and the
``RemoteState`` of a change."""

from __future__ import annotations

import logging
from pathlib import Path

from common import messages as m
from common.errors import InvalidPath
from common.paths import is_canonical
from fsclient.sync.ignore import IgnoreRules
from fsclient.sync.plan import RemoteState

log = logging.getLogger(__name__)


def remote_state(note: m.ChangeNotification) -> RemoteState:
    e = note.entry
    return RemoteState(e.version, note.deleted, e.size, e.mtime_ns, e.mode, e.digest)


def accept(folder: Path, rules: IgnoreRules, path: str) -> str | None:
    """A path from the server, if it is safe and not ignored. A malicious server must not
    make the client write outside its folder: no '..', no absolute path, no symlink."""
    try:
        if not is_canonical(path):
            raise InvalidPath(f"not in canonical form: {path!r}")
    except InvalidPath as exc:
        log.error("refused a path from the server: %s", exc.message)
        return None
    parent = folder
    for part in path.split("/")[:-1]:
        parent = parent / part
        if parent.is_symlink():
            log.error("refused %s from the server: %s is a symbolic link", path, parent)
            return None
    return None if rules.ignored(path) else path
