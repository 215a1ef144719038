"""``IgnoreRules``: which paths a synced folder leaves alone.

``.fsignore`` holds gitignore-style patterns (``*``, ``?``, ``**``, a trailing ``/`` for
folders, a leading ``/`` to anchor), matched by the ``pathspec`` library. The state folder
``.fsync/`` and the temp files of downloads in progress are always ignored. The same rules
apply to paths the server announces, so an ignored file is neither sent nor fetched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fsclient.localfiles import TEMP_MARK
from fsclient.sync.folders import MARK
from fsclient.sync.state import MARKER

IGNORE_FILE = ".fsignore"
MARK_SUFFIX = "/" + MARK
ALWAYS = [f"/{MARKER}/", f"*{TEMP_MARK}*"]


class IgnoreRules:
    def __init__(self, lines: list[str]) -> None:
        self.only_always = not any(line.strip() and not line.startswith("#") for line in lines)
        self.spec: Any = None
        if not self.only_always:  # pathspec is imported only for a folder with patterns
            import pathspec

            self.spec = pathspec.GitIgnoreSpec.from_lines([*ALWAYS, *lines])

    @classmethod
    def load(cls, folder: Path) -> IgnoreRules:
        try:
            text = (folder / IGNORE_FILE).read_text(encoding="utf-8", errors="replace")
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            text = ""
        return cls(text.splitlines())

    def ignored(self, path: str, is_dir: bool = False) -> bool:
        """*path* is relative and ``/``-separated; folders are matched with a trailing ``/``."""
        if self.only_always:  # no .fsignore patterns: the built-in rules, without pathspec
            return TEMP_MARK in path or path == MARKER or path.startswith(MARKER + "/")
        if path.endswith(MARK_SUFFIX):  # an empty folder's mark goes with its folder (``.*``
            path, is_dir = path[: -len(MARK_SUFFIX)], True  # must not ignore every mark)
        return self.spec.match_file(path + "/" if is_dir else path)
