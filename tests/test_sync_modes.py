"""A mode-only change (``chmod +x``, no new bytes, no new mtime) reaches the other clients,
live and with ``--once``; the same bytes with other permissions on both sides are no conflict.
Real server, real ``fsclient`` processes."""

from __future__ import annotations

import os
import stat

from fsclient.sync.engine import SyncEngine
from fsclient.sync.ignore import IgnoreRules
from fsclient.sync.state import StateDB
from tests.conftest import run
from tests.served import listing
from tests.serverproc import wait_for
from tests.syncproc import files, once, started, status


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_chmod_reaches_a_live_client_and_back(server, tmp_path):
    a, b = started(tmp_path, server.address, "a", "b")
    try:
        script = a.folder / "run.sh"
        script.write_text("#!/bin/sh\n")
        script.chmod(0o644)
        wait_for(lambda: files(b.folder) == {"run.sh": b"#!/bin/sh\n"}, 20, "the file at b")
        assert mode(b.folder / "run.sh") == 0o644
        before = os.stat(script).st_mtime_ns
        script.chmod(0o755)  # chmod +x: the mtime does not move
        assert os.stat(script).st_mtime_ns == before
        wait_for(lambda: mode(b.folder / "run.sh") == 0o755, 20, "+x at b")
        (b.folder / "run.sh").chmod(0o700)
        wait_for(lambda: mode(script) == 0o700, 20, "the chmod at b back at a")
        assert files(a.folder) == files(b.folder) == {"run.sh": b"#!/bin/sh\n"}  # no copies
    finally:
        for proc in (a, b):
            proc.stop()
    assert listing(server) == ["run.sh"]


def test_a_chmod_reaches_another_client_with_once(server, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    (one / "tool").write_bytes(b"x" * 5000)
    (one / "tool").chmod(0o644)
    assert once(one, server.address).returncode == 0
    assert once(two, server.address).returncode == 0
    (one / "tool").chmod(0o755)
    sent = once(one, server.address, "-v")
    assert sent.stdout.splitlines()[0] == "uploaded tool (4.9 KiB)"
    got = once(two, server.address, "-v")
    assert (got.returncode, got.stderr) == (0, "")
    assert got.stdout.splitlines()[0] == "set tool to mode 755"  # no download of the bytes
    assert mode(two / "tool") == 0o755
    again = once(two, server.address, "-v")  # settled: nothing more to do either way
    assert again.stdout.startswith(f"synced {two} with ")


def chmod_during_a_flush(server, folder, inode: int, monkeypatch) -> None:
    """Sync *folder* once, in this process; when the client flushes the file or folder whose
    inode is *inode*, the user chmods ``tool`` to 700 first. Then that chmod must reach the
    server, and the other folder ``one`` beside it."""
    flush = os.fsync

    def chmod_first(fd: int) -> None:
        if os.fstat(fd).st_ino == inode and (folder / "tool").exists():
            os.chmod(folder / "tool", 0o700)  # the user
        flush(fd)

    monkeypatch.setattr(os, "fsync", chmod_first)
    engine = SyncEngine(folder, StateDB(folder), server.address, "default", "two", once=True)
    try:
        assert run(engine.run()) == 0
    finally:
        engine.db.close()
    monkeypatch.undo()
    assert files(folder) == {"tool": b"tool"}
    assert mode(folder / "tool") == 0o700
    assert once(folder, server.address).returncode == 0  # the user's chmod, sent
    one = folder.parent / "one"
    assert once(one, server.address).returncode == 0
    assert mode(one / "tool") == 0o700


def test_a_chmod_made_here_while_the_servers_chmod_is_flushed_is_sent(server, tmp_path,
                                                                     monkeypatch):  # fmt: skip
    """The server's chmod is applied (fchmod, then fsync), and the user chmods the file again
    during the flush: the base keeps the server's mode, so the user's is seen and sent, not
    taken for the server's (the live chmod test lost it so, now and then)."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    (one / "tool").write_bytes(b"tool")
    (one / "tool").chmod(0o644)
    assert once(one, server.address).returncode == 0
    assert once(two, server.address).returncode == 0
    (one / "tool").chmod(0o755)
    assert once(one, server.address).returncode == 0
    chmod_during_a_flush(server, two, os.stat(two / "tool").st_ino, monkeypatch)


def test_a_chmod_made_here_right_after_a_download_is_sent(server, tmp_path, monkeypatch):
    """The user chmods a file just downloaded, while its folder is flushed (after the rename,
    before the base is written): the base keeps the mode the download gave it, so the chmod
    is seen and sent, not taken for the server's."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    assert once(two, server.address).returncode == 0
    (one / "tool").write_bytes(b"tool")
    (one / "tool").chmod(0o644)
    assert once(one, server.address).returncode == 0
    chmod_during_a_flush(server, two, os.stat(two).st_ino, monkeypatch)


def test_the_same_bytes_with_other_permissions_are_no_conflict(server, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    for folder, perms in ((one, 0o755), (two, 0o600)):
        (folder / "same").write_text("same")
        (folder / "same").chmod(perms)
    assert once(one, server.address).returncode == 0
    result = once(two, server.address)  # new on both sides, equal bytes: the server's wins
    assert result.returncode == 0, result.stderr
    assert "conflict on" not in result.stdout
    assert ", 0 conflicts," in result.stdout
    assert mode(two / "same") == 0o755
    assert files(two) == {"same": b"same"}


def folders(root) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")
            if p.is_dir() and ".fsync" not in p.parts}  # fmt: skip


def test_an_empty_folder_reaches_a_live_client_and_its_removal_too(server, tmp_path):
    a, b = started(tmp_path, server.address, "a", "b")
    try:
        (a.folder / "empty").mkdir()
        (a.folder / "deep" / "er").mkdir(parents=True)
        wait_for(lambda: folders(b.folder) == {"empty", "deep", "deep/er"}, 20, "the folders at b")
        assert listing(server) == ["deep/er/.fsfolder", "empty/.fsfolder"]
        assert files(b.folder) == {}  # the marks are never on the disk
        (a.folder / "empty").rmdir()
        wait_for(lambda: folders(b.folder) == {"deep", "deep/er"}, 20, "the removal at b")
        (b.folder / "deep" / "er" / "f.txt").write_text("f")  # a folder that fills up
        wait_for(lambda: files(a.folder) == {"deep/er/f.txt": b"f"}, 20, "the file at a")
        # (its state row written: a delete made between the rename and the row goes unseen)
        wait_for(lambda: "files in sync:   2\n" in status(a.folder), 20, "the file in a's state")
        (a.folder / "deep" / "er" / "f.txt").unlink()  # emptied again: the folder stays
        wait_for(lambda: "deep/er/f.txt" not in listing(server), 20, "the delete")
        wait_for(lambda: files(b.folder) == {}, 20, "the delete at b")
        assert folders(b.folder) == folders(a.folder) == {"deep", "deep/er"}
    finally:
        for proc in (a, b):
            proc.stop()


def test_a_folder_emptied_live_stays_on_the_other_client(server, tmp_path):
    a, b = started(tmp_path, server.address, "a", "b")
    try:
        (a.folder / "box").mkdir()
        (a.folder / "box" / "only.txt").write_text("only")
        wait_for(lambda: files(b.folder) == {"box/only.txt": b"only"}, 20, "the file at b")
        wait_for(lambda: "files in sync:   1\n" in status(b.folder), 20, "b's state")
        assert listing(server) == ["box/only.txt"]  # a folder with a file needs no mark
        (a.folder / "box" / "only.txt").unlink()  # the folder is kept, empty
        wait_for(lambda: listing(server) == ["box/.fsfolder"], 20, "the mark instead of the file")
        # (b may prune the folder when the delete comes first, and make it again for the mark)
        wait_for(lambda: files(b.folder) == {} and folders(b.folder) == {"box"}, 20, "b's box")
        assert listing(server) == ["box/.fsfolder"]
    finally:
        for proc in (a, b):
            proc.stop()


def test_an_empty_folder_reaches_another_client_with_once(server, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    (one / "kept" / "inner").mkdir(parents=True)
    (one / "full").mkdir()
    (one / "full" / "x.txt").write_text("x")
    assert once(one, server.address).returncode == 0
    assert listing(server) == ["full/x.txt", "kept/inner/.fsfolder"]  # only empty ones
    got = once(two, server.address, "-v")
    assert (got.returncode, got.stderr) == (0, "")
    assert "made folder kept/inner" in got.stdout.splitlines()
    assert folders(two) == {"kept", "kept/inner", "full"}
    (two / "kept" / "inner").rmdir()
    assert once(two, server.address).returncode == 0
    assert once(one, server.address).returncode == 0
    assert folders(one) == {"kept", "full"}  # "kept" is empty now: it is sent in turn
    assert "kept/.fsfolder" in listing(server)


def test_a_mark_is_ignored_with_its_folder_only():
    rules = IgnoreRules([".*", "build/"])
    assert rules.ignored("d/.hidden") and rules.ignored("build/x.o")
    assert not rules.ignored("d/.fsfolder")  # ".*" does not hide every empty folder
    assert rules.ignored("build/.fsfolder")
