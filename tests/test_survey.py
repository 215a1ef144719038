"""The folder survey (issue 13): a session's first look at the folder, taken by a child process
that walks and compares with the state, and hands back only the paths that may need something."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fsclient.sync import survey as survey_module
from fsclient.sync.candidates import Ask, Comparison, Survey, look_here
from fsclient.sync.ignore import IgnoreRules
from fsclient.sync.scan import EVERY_PATH, Scanner, Span
from fsclient.sync.state import BaseEntry, StateDB
from fsclient.sync.survey import FolderSurvey, spans_of
from tests.conftest import run
from tests.serverproc import eventually


def odd_tree(root: Path) -> None:
    """Plain folders, and each kind of entry the walk treats apart."""
    for d in range(5):
        (root / f"d{d}").mkdir()
        for f in range(20):
            (root / f"d{d}" / f"f{f}.txt").write_text(f"{d} {f}")
    (root / "d1" / "caf\u00e9.txt").write_text("nfc")  # not ASCII: checked name by name
    (root / "d2" / "x.fs-tmp-1").write_text("a download's leftover")
    (root / "d3" / ".fsfolder").write_text("a real file with a mark's name")
    os.symlink(root / "d0" / "f0.txt", root / "d4" / "link")
    (root / "empty" / "deeper").mkdir(parents=True)


def taken(survey: FolderSurvey, ask: Ask) -> Survey:
    """The whole answer of a survey's children, read as the client reads it."""
    found = survey.whole(ask)
    assert survey.procs == []  # every child was asked
    return found


def compare(walked: dict, rows: list, ask: Ask, stat_mark=lambda mark: None) -> tuple[list, int]:
    found = Comparison(iter(sorted(walked.items())), iter(sorted(rows)), ask, stat_mark)
    return list(found), found.rows


def base_of(root: Path, paths: list[str], version: int = 1) -> list[BaseEntry]:
    rows = []
    for path in paths:
        st = os.lstat(root / path)
        rows.append(BaseEntry(path, st.st_size, st.st_mtime_ns, st.st_mode & 0o7777,
                              st.st_ino, b"d" * 16, version))  # fmt: skip
    return rows


def test_the_walk_finds_files_and_empty_folders_and_skips_the_rest(tmp_path):
    odd_tree(tmp_path)
    walked = dict(Scanner(tmp_path, IgnoreRules.load(tmp_path)).walk())
    assert "d1/caf\u00e9.txt" in walked and "d0/f19.txt" in walked
    assert "empty/deeper/.fsfolder" in walked  # the mark of the empty folder, not its parent's
    assert not {"d2/x.fs-tmp-1", "d3/.fsfolder", "d4/link", "empty/.fsfolder"} & walked.keys()
    assert len(walked) == 5 * 20 + 2


@pytest.fixture
def children(monkeypatch):
    """Even a small folder is looked at by child processes."""
    monkeypatch.setattr(survey_module, "HERE_MAX", 0)


def test_the_child_process_and_this_process_find_the_same(tmp_path, children):
    odd_tree(tmp_path)
    db = StateDB(tmp_path, create=True)
    db.put(base_of(tmp_path, [f"d0/f{f}.txt" for f in range(20)]))
    (tmp_path / "d0" / "f3.txt").write_text("changed, and longer")
    (tmp_path / "d0" / "f4.txt").unlink()
    db.close()
    ask = Ask(named=["d0/f5.txt", "far/away.txt"])
    here = look_here(tmp_path, ask)
    survey = FolderSurvey(tmp_path)
    try:
        there = taken(survey, ask)
    finally:
        survey.drop()
    assert there == here
    paths = [path for path, _, _ in there.candidates]
    assert paths == sorted(paths)
    assert {"d0/f3.txt", "d0/f4.txt", "d0/f5.txt", "far/away.txt", "d1/f0.txt"} <= set(paths)
    assert not {"d0/f6.txt", "d0/f19.txt"} & set(paths)  # known and unchanged
    assert there.rows == 20
    assert there.stale == ["d2/x.fs-tmp-1"]
    warned = dict(there.warnings)
    assert set(warned) == {"d3/.fsfolder", "d4/link"}
    assert "symbolic link" in warned["d4/link"]


def test_compare_names_each_kind_of_difference():
    known = [("same", 1, 10, 0o644, 7, b"x", 3), ("grown", 1, 10, 0o644, 8, b"x", 3),
             ("touched", 1, 10, 0o644, 9, b"x", 3), ("moved", 1, 10, 0o644, 10, b"x", 3),
             ("chmod", 1, 10, 0o644, 11, b"x", 3), ("gone", 1, 10, 0o644, 12, b"x", 3),
             ("unsent", 1, 10, 0o644, 13, b"x", 0),
             ("named", 1, 10, 0o644, 14, b"x", 3)]  # fmt: skip

    def walked() -> dict:
        return {"same": (1, 10, 7, 0o644), "grown": (2, 10, 8, 0o644),
                "touched": (1, 11, 9, 0o644), "moved": (1, 10, 99, 0o644),
                "chmod": (1, 10, 11, 0o755), "unsent": (1, 10, 13, 0o644),
                "named": (1, 10, 14, 0o644), "new": (5, 10, 15, 0o644)}  # fmt: skip

    found, rows = compare(walked(), known, Ask(named=["named", "elsewhere"]))
    assert rows == len(known)
    by_path = {path: (st, row) for path, st, row in found}
    assert list(by_path) == sorted(by_path)
    assert set(by_path) == {"grown", "touched", "moved", "chmod", "gone", "unsent", "named",
                            "new", "elsewhere"}  # fmt: skip
    assert by_path["gone"][0] is None and by_path["gone"][1] == known[5]
    assert by_path["new"] == ((5, 10, 15, 0o644), None)
    assert by_path["elsewhere"] == (None, None)
    everything, _ = compare(walked(), known, Ask(everything=True))
    assert {path for path, _, _ in everything} == {row[0] for row in known} | {"new"}
    nothing, _ = compare({"same": (1, 10, 7, 0o644)}, known[:1], Ask())
    assert nothing == []


def test_a_child_that_fails_is_replaced_by_a_look_in_this_process(
    tmp_path, monkeypatch, caplog, children
):
    odd_tree(tmp_path)
    StateDB(tmp_path, create=True).close()
    monkeypatch.setattr(sys, "executable", "/bin/false")  # the child exits 1, saying nothing
    survey = FolderSurvey(tmp_path)
    found = taken(survey, Ask())
    survey.drop()
    assert "the folder survey failed (exit code 1)" in caplog.text
    assert len(found.candidates) == 5 * 20 + 2
    assert found == look_here(tmp_path, Ask())


def test_a_child_whose_answer_is_unreadable_is_ended_and_replaced(
    tmp_path, monkeypatch, caplog, children
):
    """Its answer cannot be read, and it lives on (it could be blocked writing the rest): it
    is ended, not waited for, and the look is taken in this process."""
    folder = tmp_path / "folder"
    folder.mkdir()
    odd_tree(folder)
    StateDB(folder, create=True).close()
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nprintf 'not a pickle'\nexec sleep 600\n")
    fake.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake))
    monkeypatch.setattr(survey_module, "END_WAIT", 0.1)
    survey = FolderSurvey(folder)
    procs = list(survey.procs)
    found = taken(survey, Ask())
    assert "the folder survey failed (invalid load key" in caplog.text
    assert "the child was ended" in caplog.text
    assert all(proc.returncode == -9 for proc in procs)  # killed, not left asleep
    assert found == look_here(folder, Ask())


def test_a_dropped_survey_stops_its_children(tmp_path, monkeypatch, children):
    monkeypatch.setattr(survey_module, "SPLIT_KEYS", 64)
    monkeypatch.setattr(survey_module, "SPLIT_FILES", 100)
    odd_tree(tmp_path)
    StateDB(tmp_path, create=True).close()
    survey = FolderSurvey(tmp_path, parts=2)
    procs = survey.procs
    assert len(procs) == 2
    survey.drop()
    assert all(proc.poll() is not None for proc in procs)
    assert survey.procs == []


def test_a_survey_started_for_a_caller_gone_meanwhile_is_dropped(tmp_path, monkeypatch,
                                                                 children):  # fmt: skip
    """``started`` makes the survey in a thread; the live client that asked may be stopped
    meanwhile: the survey is then dropped as soon as it exists (no child left waiting)."""
    odd_tree(tmp_path)
    StateDB(tmp_path, create=True).close()
    dropped: list[list] = []
    drop = FolderSurvey.drop

    def noted(self: FolderSurvey) -> None:
        dropped.append(list(self.procs))
        drop(self)

    monkeypatch.setattr(FolderSurvey, "drop", noted)

    async def main() -> None:
        task = asyncio.create_task(FolderSurvey.started(tmp_path))
        await asyncio.sleep(0)  # (one turn of the loop: the task has handed the job over)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await eventually(lambda: dropped, 10, "the survey dropped")

    run(main())
    assert len(dropped) == 1 and dropped[0]  # it had started its child
    assert all(proc.poll() is not None for proc in dropped[0])


@pytest.mark.parametrize("everything", [False, True])
def test_a_survey_of_an_unchanged_folder_hands_back_nothing_but_what_the_server_named(
    tmp_path, everything, children
):
    odd_tree(tmp_path)
    walked = dict(Scanner(tmp_path, IgnoreRules.load(tmp_path)).walk())
    db = StateDB(tmp_path, create=True)
    db.put(
        BaseEntry(path, size, mtime_ns, mode, inode, b"d" * 16, 1)
        for path, (size, mtime_ns, inode, mode) in walked.items()
    )  # a mark too
    db.close()
    survey = FolderSurvey(tmp_path)
    try:
        found = taken(survey, Ask(everything=everything, named=["d1/f1.txt"]))
    finally:
        survey.drop()
    assert found.rows == len(walked)
    paths = [path for path, _, _ in found.candidates]
    assert paths == (sorted(walked) if everything else ["d1/f1.txt"])


NAMES = st.text(alphabet="a-0/.", min_size=1, max_size=6).filter(
    lambda s: "//" not in s and not s.startswith("/") and not s.endswith("/")
)


@given(paths=st.lists(NAMES, max_size=30), low=st.text(alphabet="a-0/.", max_size=5),
       high=st.one_of(st.none(), st.text(alphabet="a-0/.", max_size=5)))  # fmt: skip
def test_a_span_holds_a_path_exactly_when_the_folders_above_it_say_so(paths, low, high):
    span = Span(low, high)
    for path in paths:
        parts = path.split("/")
        for n in range(1, len(parts)):
            folder = "/".join(parts[:n])
            if span.holds_all(folder):
                assert span.holds(path)
            if span.holds(path):
                assert span.meets(folder)
    assert span.holds_all("") == (span == EVERY_PATH)


def test_spans_cut_a_big_folder_into_parts_that_together_find_what_one_look_does(
    tmp_path, monkeypatch, children
):
    monkeypatch.setattr(survey_module, "SPLIT_KEYS", 64)  # a folder of 520 names is "big"
    monkeypatch.setattr(survey_module, "SPLIT_FILES", 100)
    for d in range(40):  # names that sort apart from their paths: "a-b/..." < "a/..."
        for name in (f"n{d:02}", f"n{d:02}-x", f"n{d:02}.y"):
            (tmp_path / name).mkdir()
            for f in range(3):
                (tmp_path / name / f"f{f}").write_text(f"{name} {f}")
        (tmp_path / f"n{d:02}0").write_text("a file between folders' paths")
    walked = dict(Scanner(tmp_path, IgnoreRules.load(tmp_path)).walk())
    db = StateDB(tmp_path, create=True)
    db.put(BaseEntry(path, size, mtime_ns, mode, inode, b"d" * 16, 1)
           for path, (size, mtime_ns, inode, mode) in walked.items())  # fmt: skip
    db.put([BaseEntry("gone/one", 1, 1, 0o644, 1, b"d" * 16, 1),
            BaseEntry("n07/gone", 1, 1, 0o644, 1, b"d" * 16, 1)])  # fmt: skip
    db.close()
    for n in range(0, 40, 3):
        (tmp_path / f"n{n:02}-x" / "f1").write_text("changed, and longer")
        (tmp_path / f"n{n:02}" / "new").write_text("new")
    ask = Ask(named=["n03/f0", "n30.y/zzz"])
    one = look_here(tmp_path, ask)
    assert len(one.candidates) == 2 * 14 + 2 + 2
    for parts in (2, 3, 5):
        spans = spans_of(tmp_path, parts)
        assert len(spans) == parts
        survey = FolderSurvey(tmp_path, parts)
        try:
            assert len(survey.procs) == parts
            assert taken(survey, ask) == one
        finally:
            survey.drop()


def test_a_folder_is_shared_out_only_if_it_looks_big(tmp_path):
    odd_tree(tmp_path)
    assert spans_of(tmp_path, 2) == []  # 107 entries: looked at in the client itself
    survey = FolderSurvey(tmp_path)
    assert survey.procs == []
    StateDB(tmp_path, create=True).close()
    assert taken(survey, Ask()) == look_here(tmp_path, Ask())
    for d in range(20):
        (tmp_path / f"more{d}").mkdir()
        for f in range(100):
            (tmp_path / f"more{d}" / f"f{f}").write_bytes(b"")
    assert spans_of(tmp_path, 2) == [EVERY_PATH]  # 2,127: one child
    big = tmp_path / "big"
    for d in range(1000):  # the root's 1,000 folders are enough names: 8 of them are sampled
        (big / f"d{d:04}").mkdir(parents=True)
        for f in range(31 if d % 125 == 0 else 0):
            (big / f"d{d:04}" / f"f{f}").write_bytes(b"")
    spans = spans_of(big, 2)  # guessed from the sample: 1,000 + 1,000 x 31 entries
    assert [(s.low, s.high) for s in spans] == [("", "d0500/"), ("d0500/", None)]
    for d in range(0, 1000, 125):
        for f in range(31):
            (big / f"d{d:04}" / f"f{f}").unlink()
    assert spans_of(big, 2) == []  # 1,000 empty folders: looked at in the client


def test_a_mark_the_walk_did_not_meet_is_looked_at_before_it_counts_as_gone():
    rows = [
        ("full/.fsfolder", 0, 0, 0o755, 5, b"x", 2),
        ("went/.fsfolder", 0, 0, 0o755, 6, b"x", 2),
    ]
    there = {"full/.fsfolder": (0, 0, 5, 0o755)}  # a folder that holds files now
    found, _ = compare({}, rows, Ask(), there.get)
    assert found == [("went/.fsfolder", None, rows[1])]


def test_the_sorted_walk_comes_in_the_order_of_the_paths_bytes(tmp_path):
    for name in ("a", "a-b", "a.b", "a0", "b"):
        (tmp_path / name / "in").mkdir(parents=True)
        (tmp_path / name / "in" / "x").write_text(name)
        (tmp_path / name / "in-x").write_text(name)
        (tmp_path / f"{name}.txt").write_text(name)
    (tmp_path / "a" / "empty").mkdir()
    scanner = Scanner(tmp_path, IgnoreRules.load(tmp_path))
    walked = list(scanner.walk_sorted())
    assert [path for path, _ in walked] == sorted(dict(scanner.walk()))
    assert dict(walked) == dict(scanner.walk())
    assert "a/empty/.fsfolder" in dict(walked)


def test_a_survey_of_many_candidates_answers_in_lists(tmp_path, monkeypatch):
    monkeypatch.setattr(survey_module, "SPLIT_FILES", 1000)
    for d in range(50):
        (tmp_path / f"d{d:02}").mkdir()
        for f in range(100):
            (tmp_path / f"d{d:02}" / f"f{f:03}").write_bytes(b"")
    StateDB(tmp_path, create=True).close()
    survey = FolderSurvey(tmp_path, parts=2)
    assert len(survey.procs) == 2
    answer = survey.take(Ask())
    parts = []
    try:
        while (part := answer.next()) is not None:
            parts.append(part)
    finally:
        answer.close()
    assert all(0 < len(part) <= survey_module.CHUNK for part in parts)
    found = [candidate for part in parts for candidate in part]
    assert len(found) == 5000 > survey_module.CHUNK
    assert [path for path, _, _ in found] == sorted(
        f"d{d:02}/f{f:03}" for d in range(50) for f in range(100)
    )


def test_a_synced_folder_reached_through_a_link_is_walked(tmp_path, children):
    real = tmp_path / "real"
    real.mkdir()
    odd_tree(real)
    StateDB(real, create=True).close()
    link = tmp_path / "link"
    link.symlink_to(real)
    walked = dict(Scanner(link, IgnoreRules.load(link)).walk())
    assert walked == dict(Scanner(real, IgnoreRules.load(real)).walk())
    assert len(walked) == 5 * 20 + 2
    survey = FolderSurvey(link)
    try:
        assert taken(survey, Ask()) == look_here(real, Ask())
    finally:
        survey.drop()


def test_the_survey_child_loads_no_module_from_where_it_was_started(
    tmp_path, monkeypatch, children
):
    odd_tree(tmp_path)
    StateDB(tmp_path, create=True).close()
    trap = tmp_path / "d0"  # files of a synced folder: anyone of the share may put them there
    for name in ("select", "pickle", "pathlib"):
        (trap / f"{name}.py").write_text("raise SystemExit(3)\n")
    monkeypatch.chdir(trap)
    survey = FolderSurvey(tmp_path)
    try:
        assert taken(survey, Ask()) == look_here(tmp_path, Ask())
    finally:
        survey.drop()


def test_a_survey_given_up_neither_answers_nor_looks_again(tmp_path, caplog, children):
    odd_tree(tmp_path)
    StateDB(tmp_path, create=True).close()
    survey = FolderSurvey(tmp_path)
    answer = survey.take(Ask())
    answer.close()  # the session ended: its children are stopped
    assert answer.next() is None
    assert "looking in this process" not in caplog.text
    survey.drop()


def test_a_warning_about_a_folder_at_a_cut_is_told_by_the_span_that_reads_it(tmp_path):
    scanner = survey_module.c.NotingScanner(tmp_path, IgnoreRules.load(tmp_path))
    scanner.warn("x", "cannot read folder: Permission denied")
    after = Span("x/", None)  # "x/" is the cut: this span reads x (the one before does not)
    assert after.meets("x") and not Span("", "x/").meets("x")
    told = survey_module.c.ending(scanner, 0, after).warnings
    assert told == [("x", "cannot read folder: Permission denied")]
