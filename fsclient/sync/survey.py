"""``FolderSurvey``: a session's first look at the whole folder, taken by processes of its own.

A look at a folder of 100,000 files is 100,000 ``lstat`` calls, then as many rows of the state
to compare them with. In the client's own process they fought the event loop for the GIL (two
walking threads were slower than one: each system call hands the GIL over), and their objects
stayed in a live client's heap. Child processes walk while the client starts and connects,
then compare the walk with the state (``fsclient.sync.candidates``) and hand back only the
paths that may need something: a no-change run of 100,000 files passes a few bytes. A big
folder is shared between two children, each a span of its paths (``spans_of``). The same
comparison runs in the client itself when a child cannot.

A child is ``python -m fsclient.sync.survey FOLDER LOW [HIGH]``. It reads one ``Ask``
(pickled) on stdin, once its walk has started, so that the state it reads is the one the
session has settled on (a new store resets the versions first). It answers on stdout with
pickled lists of at most CHUNK candidates, then one ``Survey`` without candidates (the end).
The client takes each list in as it comes (``SurveyAnswer``): neither side ever holds them all.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import pickle
import select
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING

import fsclient
from fsclient.sync import candidates as c
from fsclient.sync.candidates import Ask, Candidate, Survey
from fsclient.sync.forked import ForkedChild, can_fork
from fsclient.sync.ignore import IgnoreRules
from fsclient.sync.scan import EVERY_PATH, Span, Stat

if TYPE_CHECKING:
    import asyncio

log = logging.getLogger(__name__)

Child = subprocess.Popen[bytes] | ForkedChild
"""A survey child: a new interpreter, or a fork of this process (``fsclient.sync.forked``)."""

PARTS = 2
"""Processes that walk a big folder, each a span of it (at most one per CPU)."""
SPLIT_KEYS = 1000
"""Folders of one level enough to share a folder out by (else the next level is read, down
to SPLIT_DEPTH)."""
SPLIT_DEPTH = 3
SPLIT_FILES = 30_000
"""Entries a folder must seem to hold to be walked by PARTS processes rather than one."""
HERE_MAX = 2000
"""Entries below which a folder is looked at in the client's own process (about 10 ms,
against about 60 ms of CPU to start a child)."""
SAMPLE = 8
"""Folders of a level listed to guess how much the whole level holds."""
LIST_MAX = 50_000
"""A level that looks bigger than this is not listed to find cuts (its folders are the cuts)."""
CHUNK = 2000
"""Candidates per answer: each is taken in while the children go on."""
LOOK_EVERY = 256
"""Files walked between two looks for the client's question."""
AHEAD_MAX = 100_000
"""Files walked before the question comes, at most (about 25 MB): then the walk waits."""
END_WAIT = 2.0
"""Seconds a child whose answer failed is given to end on its own (its error told)."""


def spans_of(folder: Path, parts: int) -> list[Span]:
    """*parts* spans that share the folder's paths out about evenly, or one for a folder that
    looks smaller than SPLIT_FILES (a second process costs about as much to start as it
    saves walking 30,000 files), or none for one smaller than HERE_MAX (it is looked at in
    the client itself: a walk of it costs less than a process's start). The cuts are
    between the names of its first levels, read a level at a time while the next level looks
    small (a sample of it is listed first): a look costs at most about LIST_MAX names,
    whatever the folder holds."""
    keys: list[str] = []
    level, seen, guess = [""], 0, 0
    for depth in range(SPLIT_DEPTH + 1):
        level.sort()  # (so that the sample is spread over the names)
        sample = level[:: max(1, len(level) // SAMPLE)][:SAMPLE]
        inside = sum(_list(folder, rel, [], []) for rel in sample)
        next_level = inside * len(level) // max(1, len(sample))
        guess = seen + next_level
        if not level or len(level) >= SPLIT_KEYS or next_level > LIST_MAX or depth == SPLIT_DEPTH:
            break
        below: list[str] = []
        for rel in level:
            seen += _list(folder, rel, keys, below)
        level = below
    keys += [path + "/" for path in level]  # every path inside a folder sorts after this
    if guess < HERE_MAX:
        return []
    if guess < SPLIT_FILES or len(keys) < 2 * parts or parts < 2:
        return [EVERY_PATH]
    keys.sort()
    cuts = sorted({keys[len(keys) * i // parts] for i in range(1, parts)})
    return [Span(low, high) for low, high in zip(["", *cuts], [*cuts, None], strict=True)]


def _list(folder: Path, rel: str, files: list[str], folders: list[str]) -> int:
    """Add the paths in folder *rel* to *files* and *folders*; how many there were. A name
    that is not valid UTF-8 is counted but not added: it cannot be a cut (SQLite could not
    take it), and the walk skips it anyway."""
    count = 0
    with contextlib.suppress(OSError), os.scandir(folder / rel) as entries:
        for entry in entries:
            count += 1
            path = f"{rel}/{entry.name}" if rel else entry.name
            with contextlib.suppress(OSError, UnicodeEncodeError):
                path.encode()
                (folders if entry.is_dir(follow_symlinks=False) else files).append(path)
    return count


class FolderSurvey:
    """The child processes of one survey: started at once, asked once (``take``), or
    dropped. Each walks and compares a span of the folder's paths."""

    early: FolderSurvey | None = None
    """Started by ``start_early``, for ``sync`` to take (``for_folder``)."""

    @classmethod
    def start_early(cls, folder: str) -> None:
        """``fsclient sync`` starts its survey before it loads the rest of the client: the
        walk is most of a no-change run, and the imports are a tenth of a second. Its
        children are forked (``fsclient.sync.forked``) if this process has no thread yet."""
        if os.path.isdir(folder):
            cls.early = cls(Path(folder).absolute(), fork=can_fork())

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
    async def started(cls, folder: Path) -> FolderSurvey:
        """A new survey, started in a thread: its look for cuts lists up to ~50,000 names,
        which a live client's loop should not wait for (~30 ms at 100,000 files). One whose
        caller is cancelled meanwhile is dropped once it has started."""
        import asyncio

        job = asyncio.get_running_loop().run_in_executor(None, cls, folder)
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            job.add_done_callback(_drop_unwanted)
            raise

    @classmethod
    def drop_early(cls) -> None:
        """Not taken (the command failed before): its children go."""
        early, cls.early = cls.early, None
        if early is not None:
            early.drop()

    def __init__(self, folder: Path, parts: int | None = None, fork: bool = False) -> None:
        self.folder = folder
        self.procs: list[Child] = []
        self.end = Survey([], 0)
        """After ``parts``: the rows' count, stale temp files and warnings."""
        try:
            for span in spans_of(folder, parts or min(PARTS, os.cpu_count() or 1)):
                self.procs.append(forked(folder, span) if fork else spawned(folder, span))
        except OSError as exc:
            self.drop()
            log.warning("cannot start the folder survey (%s); looking in this process", exc)

    async def parts(self, ask: Ask) -> AsyncIterator[list[Candidate]]:
        """The candidates, a list at a time, in path order; then ``end`` tells the rest."""
        import asyncio  # (here: a child, which imports this module, needs no asyncio)

        loop = asyncio.get_running_loop()
        answer = await loop.run_in_executor(None, self.take, ask)
        try:
            while (part := await loop.run_in_executor(None, answer.next)) is not None:
                yield part
        finally:
            answer.close()
        self.end = answer.end

    def take(self, ask: Ask) -> SurveyAnswer:
        """Put *ask* to the children (blocks until each has read it: run it in a thread)."""
        procs, self.procs = self.procs, []
        question = pickle.dumps(ask, pickle.HIGHEST_PROTOCOL)
        for proc in procs:
            with contextlib.suppress(OSError):  # one that died says so when it is read
                assert proc.stdin is not None
                proc.stdin.write(question)
                proc.stdin.close()
        return SurveyAnswer(self, procs, ask)

    def whole(self, ask: Ask) -> Survey:
        """The whole answer at once, in this thread (a command with nothing else to do)."""
        answer = self.take(ask)
        candidates: list[Candidate] = []
        try:
            while (part := answer.next()) is not None:
                candidates += part
        finally:
            answer.close()
        end = answer.end
        return Survey(candidates, end.rows, end.stale, end.warnings)

    def drop(self) -> None:
        """Not taken (the connection failed, or the client stops): the children go."""
        procs, self.procs = self.procs, []
        stop(procs)


def forked(folder: Path, span: Span) -> ForkedChild:
    """A child forked from this process (which must have no other thread)."""
    return ForkedChild(partial(serve, folder, span), [str(folder), span.low])


def spawned(folder: Path, span: Span) -> subprocess.Popen[bytes]:
    """A child in a new interpreter, which finds this package where this process does."""
    env = dict(os.environ)
    root = str(Path(fsclient.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return subprocess.Popen(
        [sys.executable, "-P", "-m", "fsclient.sync.survey", str(folder), span.low,
         *([] if span.high is None else [span.high])],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip


def _drop_unwanted(job: asyncio.Future[FolderSurvey]) -> None:
    """(A callback of ``FolderSurvey.started``'s thread job, once it is done.)"""
    if not job.cancelled() and job.exception() is None:
        job.result().drop()


def stop(procs: list[Child]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


class SurveyFailed(Exception):
    """A child of the survey did not answer (the message says why)."""


class SurveyAnswer:
    """The children's answers, in span order (so in path order), a list at a time; ``end``
    then tells the rest. If a child fails, the look is taken again in this process, and
    only what came after the last candidate already handed out is handed out."""

    def __init__(self, survey: FolderSurvey, procs: list[Child],
                 ask: Ask) -> None:  # fmt: skip
        self.survey = survey
        self.procs = procs
        self.ask = ask
        self.end = Survey([], 0)
        self.last: str | None = None
        """The last path handed out."""
        self.here = not procs
        """No child was started: the look is taken in this process."""
        self.closed = False
        """Given up (the session ends): no answer is read, nor a look taken, any more."""

    def next(self) -> list[Candidate] | None:
        """The next candidates; None when there are no more (blocks: run it in a thread)."""
        if self.here:
            self.here = False
            return self.look_here()
        try:
            while self.procs:
                part = read_part(self.procs[0])
                if isinstance(part, list):
                    if part:
                        self.last = part[-1][0]
                        return part
                    continue
                self.end.rows += part.rows
                self.end.stale += part.stale
                self.end.warnings += part.warnings
                stop(self.procs[:1])
                del self.procs[0]
            return None
        except SurveyFailed as exc:
            if self.closed:  # its children were stopped: not a failure, nobody waits
                return None
            stop(self.procs)
            self.procs = []
            log.warning("the folder survey failed (%s); looking in this process", exc)
            return self.look_here()

    def look_here(self) -> list[Candidate] | None:
        """All the candidates not handed out yet, from a look in this process."""
        self.end = c.look_here(self.survey.folder, self.ask)
        rest, self.end.candidates = self.end.candidates, []
        return [one for one in rest if self.last is None or one[0] > self.last] or None

    def close(self) -> None:
        self.closed = True
        stop(self.procs)
        self.procs = []


def read_part(proc: Child) -> list[Candidate] | Survey:
    """One answer of a child: a list of candidates, or its ``Survey`` (the end)."""
    assert proc.stdout is not None and proc.stderr is not None
    try:
        return pickle.load(proc.stdout)  # type: ignore[no-any-return]
    except (OSError, ValueError, pickle.UnpicklingError, EOFError, AttributeError) as exc:
        if not ended(proc):  # (its last words would be of the pipe closed under it)
            raise SurveyFailed(f"{exc}; the child was ended") from exc
        lines = proc.stderr.read().decode(errors="replace").strip().splitlines()
        why = lines[-1] if lines else str(exc) if proc.returncode == 0 else (
            f"exit code {proc.returncode}")  # fmt: skip
        raise SurveyFailed(why) from exc


def ended(proc: Child) -> bool:
    """A child whose answer could not be read: it has ended, or is ended now; True if it
    ended by itself (an answer cut short: it is ending, its status a moment behind its
    pipe's end). One that lives on may be blocked writing the rest of its answer, which
    nobody reads any more: after END_WAIT its pipe is closed and it is killed. (Waiting for
    it alone hung the client once, under py-spy, after an ``UnpicklingError``.)"""
    assert proc.stdout is not None
    try:
        proc.wait(END_WAIT)
        return True
    except subprocess.TimeoutExpired:
        proc.stdout.close()
        proc.kill()
        proc.wait()
        return False


def answer(folder: Path, span: Span, ask: Ask, scanner: c.NotingScanner,
           walk: Iterator[tuple[str, Stat]], out: IO[bytes]) -> None:  # fmt: skip
    """The child's answer: its candidates in lists of CHUNK, then its ``Survey``."""
    found = c.comparison(folder, scanner, ask, span, walk)
    chunk: list[Candidate] = []
    for candidate in found:
        chunk.append(candidate)
        if len(chunk) >= CHUNK:
            pickle.dump(chunk, out, pickle.HIGHEST_PROTOCOL)
            chunk = []
    if chunk:
        pickle.dump(chunk, out, pickle.HIGHEST_PROTOCOL)
    pickle.dump(c.ending(scanner, found.rows, span), out, pickle.HIGHEST_PROTOCOL)
    out.flush()


def walk_until_asked(walk: Iterator[tuple[str, Stat]], asks: IO[bytes]
                     ) -> list[tuple[str, Stat]]:  # fmt: skip
    """What the walk finds until the question comes: the walk starts with the client, the
    comparison only once the session has settled the state."""
    ahead: list[tuple[str, Stat]] = []
    poller = select.poll()
    poller.register(asks, select.POLLIN | select.POLLHUP)
    while len(ahead) < AHEAD_MAX and not poller.poll(0):
        more = list(itertools.islice(walk, LOOK_EVERY))
        ahead += more
        if len(more) < LOOK_EVERY:
            break
    return ahead


def serve(folder: Path, span: Span, asks: IO[bytes], out: IO[bytes]) -> int:
    """A child's work, in a new interpreter (``main``) or forked (``ForkedChild``)."""
    scanner = c.NotingScanner(folder, IgnoreRules.load(folder))
    walk = scanner.walk_sorted(span)
    ahead = walk_until_asked(walk, asks)
    try:
        ask = pickle.load(asks)
    except EOFError:  # the client went away, or dropped the survey
        return 0
    try:
        answer(folder, span, ask, scanner, itertools.chain(ahead, walk), out)
    except BrokenPipeError:  # the client stopped reading: it is gone, or has dropped us
        return 0
    return 0


def main(argv: list[str]) -> int:
    """The child: ``FOLDER LOW [HIGH]``, the span it walks and compares."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the client's to handle
    span = Span(argv[1], argv[2] if len(argv) > 2 else None)
    return serve(Path(argv[0]), span, sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    from fsclient.sync import survey  # what is pickled must name this module, not __main__

    sys.exit(survey.main(sys.argv[1:]))
