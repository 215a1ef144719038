"""``FolderSurvey``: a session's first look at the whole folder, taken by a process of its own.

A look at a folder of 100,000 files is 100,000 ``lstat`` calls, then as many rows of the state
to compare them with. In the client's own process they fought the event loop for the GIL (two
walking threads were slower than one: each system call hands the GIL over), and their dicts
stayed in a live client's heap. A child process walks while the client starts and connects,
then compares the walk with the state and hands back only the paths that may need something
(``Candidate``): a no-change run of 100,000 files passes a few bytes between the two. The same
comparison runs in the client itself when the child cannot (``look_here``).

The child is ``python -m fsclient.sync.survey FOLDER``. It reads one ``Ask`` (pickled) on stdin
once its walk is done, so that the state it reads is the one the session has settled on (a new
store resets the versions first), and writes one ``Survey`` (pickled) on stdout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path

import fsclient
from fsclient.sync.ignore import MARK_SUFFIX, IgnoreRules
from fsclient.sync.plan import PERMISSIONS
from fsclient.sync.scan import EVERY_PATH, Scanner, Span, Stat
from fsclient.sync.state import DB_NAME, MARKER

log = logging.getLogger(__name__)

Row = tuple[str, int, int, int, int, bytes, int]
"""A state row, in ``BaseEntry``'s field order (path, size, mtime_ns, mode, inode, digest,
version): plain tuples pickle several times faster than named ones."""
Candidate = tuple[str, Stat | None, Row | None]
"""A path that may need something: its stat if the folder holds it, its state row if any."""
PARTS = 2
"""Processes that walk a big folder, each a span of it (at most one per CPU)."""
SPLIT_KEYS = 1000
"""Names (files, and folders with a '/') that a folder is shared out by; fewer than this in
its first SPLIT_DEPTH levels: it is small, and one process walks it (a second one would
cost more to start than it saves)."""
SPLIT_DEPTH = 3


@dataclass
class Ask:
    everything: bool = False
    """Every path is a candidate (the server's store is new: each file is sent again)."""
    named: list[str] = field(default_factory=list)
    """Paths the server changed: each is a candidate, whatever its stat."""


@dataclass
class Survey:
    candidates: list[Candidate]
    """In path order."""
    rows: int
    """Entries in the state."""
    stale: list[str] = field(default_factory=list)
    """Temp files of downloads that never finished (``Scanner.stale``)."""
    warnings: list[tuple[str, str]] = field(default_factory=list)
    """(path, why) of what the walk skipped, for the client to log once."""


class NotingScanner(Scanner):
    """A scanner that keeps its warnings for the client to log (it logs each one once)."""

    def __init__(self, folder: Path, rules: IgnoreRules) -> None:
        super().__init__(folder, rules)
        self.notes: list[tuple[str, str]] = []

    def warn(self, path: str, why: str) -> None:
        self.notes.append((path, why))


def compare(walked: dict[str, Stat], rows: Iterable[Row], ask: Ask,
            stat_mark: Callable[[str], Stat | None] = lambda mark: None,
            ) -> tuple[list[Candidate], int]:  # fmt: skip
    """The candidates: files new, changed (size, mtime, inode, permissions) or gone since
    their row, rows without a known version, and the paths *ask* names; and the rows' count.
    *walked* is emptied. The walk yields marks only of empty folders: a mark's row that it
    did not meet is looked at with *stat_mark* (its folder may hold files now)."""
    everything, named = ask.everything, set(ask.named)
    found: list[Candidate] = []
    add, take = found.append, walked.pop
    count = 0
    for row in rows:
        count += 1
        path = row[0]
        st = take(path, None)
        if st is None and path.endswith(MARK_SUFFIX):
            st = stat_mark(path)
        if path in named:
            named.discard(path)
            add((path, st, row))
        elif (st is None or everything or not row[6] or st[0] != row[1] or st[1] != row[2]
              or st[2] != row[4] or (st[3] ^ row[3]) & PERMISSIONS):  # fmt: skip
            add((path, st, row))
    for path, st in walked.items():
        named.discard(path)
        add((path, st, None))
    walked.clear()
    found += [(path, None, None) for path in named]
    found.sort(key=itemgetter(0))
    return found, count


def look(folder: Path, scanner: NotingScanner, walked: dict[str, Stat], ask: Ask,
         span: Span = EVERY_PATH) -> Survey:  # fmt: skip
    """Compare *walked* (the files of *span*) with the state's rows of *span*, read now (a
    connection of its own)."""
    uri = (folder / MARKER / DB_NAME).resolve().as_uri() + "?mode=ro"
    db = sqlite3.connect(uri, uri=True)
    try:
        rows = db.execute("SELECT * FROM files WHERE path >= ? AND (? IS NULL OR path < ?)",
                          (span.low, span.high, span.high))  # fmt: skip
        named = [path for path in ask.named if span.holds(path)]
        candidates, count = compare(walked, rows, Ask(ask.everything, named), scanner.stat)
    finally:
        db.close()
    # a folder the span's ends cut through is read by two processes: each tells its own
    stale = [path for path in scanner.stale if span.holds(path)]
    return Survey(candidates, count, stale, [n for n in scanner.notes if span.holds(n[0])])


def look_here(folder: Path, ask: Ask) -> Survey:
    """The survey, in this process."""
    scanner = NotingScanner(folder, IgnoreRules.load(folder))
    return look(folder, scanner, scanner.walk_all(), ask)


def spans_of(folder: Path, parts: int) -> list[Span]:
    """*parts* spans that share the folder's paths out about evenly (by the names of its
    first levels, read until there are enough of them), or one if it looks small. Each
    span is walked by a process of its own."""
    keys: list[str] = []
    level = [""]
    for _depth in range(SPLIT_DEPTH):
        below = []
        for rel in level:
            with contextlib.suppress(OSError), os.scandir(folder / rel) as entries:
                for entry in entries:
                    path = f"{rel}/{entry.name}" if rel else entry.name
                    with contextlib.suppress(OSError):
                        (below if entry.is_dir(follow_symlinks=False) else keys).append(path)
        level = below
        if len(below) >= SPLIT_KEYS:
            break
    keys += [path + "/" for path in level]  # every path inside a folder sorts after this
    if len(keys) < SPLIT_KEYS or parts < 2:
        return [EVERY_PATH]
    keys.sort()
    cuts = sorted({keys[len(keys) * i // parts] for i in range(1, parts)})
    return [Span(low, high) for low, high in zip(["", *cuts], [*cuts, None], strict=True)]


class FolderSurvey:
    """The child processes of one survey: started at once, asked once (``take``), or
    dropped. Each walks and compares a span of the folder's paths."""

    early: FolderSurvey | None = None
    """Started by ``start_early``, for ``sync`` to take (``for_folder``)."""

    @classmethod
    def start_early(cls, folder: str) -> None:
        """``fsclient sync`` starts its survey before it loads the rest of the client: the
        walk is most of a no-change run, and the imports are a tenth of a second."""
        if os.path.isdir(folder):
            cls.early = cls(Path(folder).absolute())

    @classmethod
    def for_folder(cls, folder: Path) -> FolderSurvey:
        """The early survey, if it is of *folder*; else a new one."""
        early, cls.early = cls.early, None
        if early is not None and early.folder == folder:
            return early
        if early is not None:
            early.drop()
        return cls(folder)

    @classmethod
    def drop_early(cls) -> None:
        """Not taken (the command failed before): its children go."""
        early, cls.early = cls.early, None
        if early is not None:
            early.drop()

    def __init__(self, folder: Path, parts: int | None = None) -> None:
        self.folder = folder
        env = dict(os.environ)
        root = str(Path(fsclient.__file__).resolve().parent.parent)  # as this process sees it
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            for span in spans_of(folder, parts or min(PARTS, os.cpu_count() or 1)):
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "fsclient.sync.survey", str(folder), span.low,
                     *([] if span.high is None else [span.high])],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    env=env,
                ))  # fmt: skip
        except OSError as exc:
            self.drop()
            log.warning("cannot start the folder survey (%s); looking in this process", exc)

    def take(self, ask: Ask) -> Survey:
        """The survey's answer to *ask* (blocks: run it in a thread). If a child failed,
        the whole look is taken here."""
        procs, self.procs = self.procs, []
        if not procs:
            return look_here(self.folder, ask)
        question = pickle.dumps(ask, pickle.HIGHEST_PROTOCOL)
        for proc in procs:  # all of them, before the first answer is waited for
            with contextlib.suppress(OSError):
                assert proc.stdin is not None
                proc.stdin.write(question)
                proc.stdin.close()
        found = Survey([], 0)
        try:
            for proc in procs:  # in span order: the candidates stay in path order
                part = answer(proc)
                found.candidates += part.candidates
                found.rows += part.rows
                found.stale += part.stale
                found.warnings += part.warnings
        except SurveyFailed as exc:
            self.procs = procs
            self.drop()
            log.warning("the folder survey failed (%s); looking in this process", exc)
            return look_here(self.folder, ask)
        return found

    def drop(self) -> None:
        """Not taken (the connection failed, or the client stops): the children go."""
        procs, self.procs = self.procs, []
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()


class SurveyFailed(Exception):
    """A child of the survey did not answer (the message says why)."""


def answer(proc: subprocess.Popen[bytes]) -> Survey:
    """One child's part, once it is done (its stdin is already closed)."""
    assert proc.stdout is not None and proc.stderr is not None
    try:
        out = proc.stdout.read()
        err = proc.stderr.read()  # (the child writes it only as it fails)
        proc.wait()
        if proc.returncode == 0 and out:
            return pickle.loads(out)  # type: ignore[no-any-return]
    except (OSError, ValueError, pickle.UnpicklingError, EOFError) as exc:
        raise SurveyFailed(str(exc)) from exc
    lines = err.decode(errors="replace").strip().splitlines()
    raise SurveyFailed(lines[-1] if lines else f"exit code {proc.returncode}")


def main(argv: list[str]) -> int:
    """The child: ``FOLDER LOW [HIGH]``, the span it walks and compares."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the client's to handle
    folder = Path(argv[0])
    span = Span(argv[1], argv[2] if len(argv) > 2 else None)
    scanner = NotingScanner(folder, IgnoreRules.load(folder))
    walked = scanner.walk_all(span)
    try:
        ask = pickle.load(sys.stdin.buffer)
    except EOFError:  # the client went away, or dropped the survey
        return 0
    survey = look(folder, scanner, walked, ask, span)
    pickle.dump(survey, sys.stdout.buffer, pickle.HIGHEST_PROTOCOL)
    return 0


if __name__ == "__main__":
    from fsclient.sync import survey  # what is pickled must name this module, not __main__

    sys.exit(survey.main(sys.argv[1:]))
