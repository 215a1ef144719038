"""The early folder survey's children, forked from the client (``fsclient.sync.forked``): they
find what a look in the client finds, a failure is told and replaced, they keep none of the
client's descriptors, two threads may stop and wait for one at once, a kernel without pid
descriptors still gets a deadline, the command line forks them, and a process with threads
does not."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from fsclient.sync import survey as survey_module
from fsclient.sync.candidates import Ask, look_here
from fsclient.sync.forked import ForkedChild, can_fork
from fsclient.sync.state import StateDB
from fsclient.sync.survey import FolderSurvey, stop
from tests.serverproc import wait_for
from tests.test_survey import base_of, children, odd_tree, taken  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("children")  # even a small folder has children


@pytest.fixture
def forkable() -> None:
    """This test process may fork only with no other thread (as the client does). A thread
    just joined may still be in the kernel's list for a moment."""
    with contextlib.suppress(AssertionError):
        wait_for(can_fork, 5, "the other threads to end")
    if not can_fork():
        pytest.skip("this test process has threads: no fork (the client would not either)")


def folder_with_state(root: Path) -> Path:
    root.mkdir(exist_ok=True)
    odd_tree(root)
    db = StateDB(root, create=True)
    db.put(base_of(root, [f"d0/f{f}.txt" for f in range(20)]))
    db.close()
    (root / "d0" / "f3.txt").write_text("changed here")
    return root


def sleeper(asks, out) -> int:
    """A child's body that waits until its stdin is closed."""
    asks.read()
    return 0


@pytest.mark.usefixtures("forkable")
def test_forked_children_find_what_a_look_here_finds(tmp_path, monkeypatch):
    monkeypatch.setattr(survey_module, "SPLIT_KEYS", 4)  # two children, each a span
    monkeypatch.setattr(survey_module, "SPLIT_FILES", 10)
    folder = folder_with_state(tmp_path)
    survey = FolderSurvey(folder, fork=True)
    assert len(survey.procs) == 2
    assert all(isinstance(proc, ForkedChild) for proc in survey.procs)
    procs = list(survey.procs)
    ask = Ask(named=["d0/f5.txt"])
    assert taken(survey, ask) == look_here(folder, ask)
    assert all(proc.returncode is not None for proc in procs)  # ended (or, done, stopped)


@pytest.mark.usefixtures("forkable")
def test_a_forked_child_that_fails_is_told_and_replaced(tmp_path, monkeypatch, caplog):
    folder = folder_with_state(tmp_path)

    def broken(*args: object) -> int:
        print("a stray print goes to its stderr, not into its answer")
        raise RuntimeError("the walk broke")

    monkeypatch.setattr(survey_module, "serve", broken)
    survey = FolderSurvey(folder, fork=True)
    procs = list(survey.procs)
    found = taken(survey, Ask())
    assert "the folder survey failed (RuntimeError: the walk broke)" in caplog.text
    assert found == look_here(folder, Ask())
    assert [proc.returncode for proc in procs] == [1]


@pytest.mark.usefixtures("forkable")
def test_a_forked_child_keeps_no_descriptor_of_the_client_open(tmp_path):
    folder = folder_with_state(tmp_path / "synced")
    secret = tmp_path / "client-only.txt"
    with open(secret, "w") as held:
        survey = FolderSurvey(folder, fork=True)
        try:
            (proc,) = survey.procs

            def targets() -> set[str]:  # (it waits for the question meanwhile)
                found = set()
                for fd in os.listdir(f"/proc/{proc.pid}/fd"):
                    with contextlib.suppress(FileNotFoundError):  # a folder it walks
                        found.add(os.readlink(f"/proc/{proc.pid}/fd/{fd}"))
                return found

            wait_for(lambda: str(secret) not in targets(), 10, "the child to close the "
                     "client's files")  # fmt: skip
            assert os.readlink(f"/proc/self/fd/{held.fileno()}") == str(secret)
            assert {"0", "1", "2"} <= set(os.listdir(f"/proc/{proc.pid}/fd"))
        finally:
            survey.drop()
    assert proc.returncode == -9  # dropped before it was asked: killed


@pytest.mark.usefixtures("forkable")
def test_two_threads_may_stop_and_wait_for_one_child_at_once():
    """A session cancelled while a thread reads the child's answer: both end it, no error."""
    for _ in range(20):
        child = ForkedChild(sleeper, ["sleeper"])
        errors: list[BaseException] = []

        def end(how, child=child, errors=errors) -> None:
            try:
                how(child)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=end, args=(how,)) for how in
                   (lambda c: stop([c]), lambda c: (c.kill(), c.wait()))]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [] and child.returncode == -9


@pytest.mark.usefixtures("forkable")
def test_a_deadline_holds_without_pid_descriptors(monkeypatch):
    def refused(pid: int, flags: int = 0) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", refused)
    child = ForkedChild(sleeper, ["sleeper"])
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(0.05)
        child.stdin.close()  # now it ends
        assert child.wait(10) == 0
    finally:
        stop([child])


FILES = 2_500
"""A folder big enough for ``fsclient sync`` to survey it in child processes."""


def test_the_command_line_forks_the_survey_of_sync(tmp_path):
    """What ``fsclient`` loads before it starts the survey starts no thread: the children of
    ``fsclient sync`` are forked (a fresh interpreter, as the command runs)."""
    folder = tmp_path / "big"
    folder.mkdir()
    for n in range(FILES):
        (folder / f"f{n}").touch()
    script = (
        "import sys\n"
        "from fsclient.cli import build_parser\n"
        "args = build_parser().parse_args(['sync', sys.argv[1], '--once'])\n"
        "from fsclient.sync.survey import HERE_MAX, FolderSurvey\n"
        f"assert HERE_MAX < {FILES}, HERE_MAX  # (else it is looked at in-process)\n"
        "FolderSurvey.start_early(args.dir)\n"
        "procs = FolderSurvey.early.procs\n"
        "print(len(procs), {type(p).__name__ for p in procs})\n"
        "FolderSurvey.drop_early()\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True,
                         text=True, timeout=60, check=True).stdout  # fmt: skip
    assert out.split(maxsplit=1) == ["1", "{'ForkedChild'}\n"]


def test_a_process_with_threads_starts_its_survey_children_anew(tmp_path):
    folder = folder_with_state(tmp_path)
    stop_thread = threading.Event()
    thread = threading.Thread(target=stop_thread.wait)
    thread.start()
    try:
        assert not can_fork()
        FolderSurvey.start_early(str(folder))
        survey = FolderSurvey.for_folder(folder.absolute())
        assert survey.procs and not any(isinstance(p, ForkedChild) for p in survey.procs)
        assert taken(survey, Ask()) == look_here(folder, Ask())
    finally:
        FolderSurvey.drop_early()
        stop_thread.set()
        thread.join()
