"""The early folder survey's children, forked from the client (``fsclient.sync.forked``): they
find what a look in the client finds, a failure is told and replaced, they hold none of the
client's files, and a process with threads is not forked."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import pytest

from fsclient.sync import survey as survey_module
from fsclient.sync.candidates import Ask, look_here
from fsclient.sync.forked import ForkedChild, can_fork
from fsclient.sync.state import StateDB
from fsclient.sync.survey import FolderSurvey
from tests.serverproc import wait_for
from tests.test_survey import base_of, children, odd_tree, taken  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("children")  # even a small folder has children


def folder_with_state(root: Path) -> Path:
    odd_tree(root)
    db = StateDB(root, create=True)
    db.put(base_of(root, [f"d0/f{f}.txt" for f in range(20)]))
    db.close()
    (root / "d0" / "f3.txt").write_text("changed here")
    return root


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


def test_a_forked_child_that_fails_is_told_and_replaced(tmp_path, monkeypatch, caplog):
    folder = folder_with_state(tmp_path)

    def broken(*args: object) -> int:
        raise RuntimeError("the walk broke")

    monkeypatch.setattr(survey_module, "serve", broken)
    survey = FolderSurvey(folder, fork=True)
    procs = list(survey.procs)
    found = taken(survey, Ask())
    assert "the folder survey failed (RuntimeError: the walk broke)" in caplog.text
    assert found == look_here(folder, Ask())
    assert [proc.returncode for proc in procs] == [1]


def test_a_forked_child_holds_none_of_the_clients_files(tmp_path):
    (tmp_path / "synced").mkdir()
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


def test_a_process_with_threads_starts_its_survey_children_anew(tmp_path):
    folder = folder_with_state(tmp_path)
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert not can_fork()
        FolderSurvey.start_early(str(folder))
        survey = FolderSurvey.for_folder(folder.absolute())
        assert survey.procs and not any(isinstance(p, ForkedChild) for p in survey.procs)
        assert taken(survey, Ask()) == look_here(folder, Ask())
    finally:
        stop.set()
        thread.join()
