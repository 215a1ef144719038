"""What ``fsclient sync`` tells: one line per file with ``-v``, only errors with ``-q``, a line
per batch of changes by default (as they happen, not only at exit), an honest summary ("1
conflict", sizes in human units, a failure that later went through is no failure), and
``fsclient status`` saying why a change is pending. Real server, real ``fsclient``."""

from __future__ import annotations

import re
import signal

from fsclient.sync.report import human_size
from tests.served import listing
from tests.serverproc import wait_for
from tests.syncproc import SyncProcess, once, status

QUOTA = ("--workers", "1", "--hash-workers", "1", "--store-size", "16MiB", "--share-quota", "1000")
FULL = "no space on the server: share default would hold 1300 bytes, over its quota of 1000"


def summary(folder, address: str, counts: str) -> re.Pattern[str]:
    return re.compile(rf"^synced {re.escape(str(folder))} with {re.escape(address)}/default: "
                      rf"{re.escape(counts)} in \d+\.\d s$", re.MULTILINE)  # fmt: skip


def test_human_sizes():
    assert [human_size(n) for n in (0, 1, 1023, 1024, 1536, 10 << 20, 3 << 30)] == [
        "0 bytes", "1 byte", "1023 bytes", "1.0 KiB", "1.5 KiB", "10 MiB", "3.0 GiB"
    ]  # fmt: skip


def test_sync_v_prints_one_line_per_file(server, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    (one / "a.txt").write_text("a")
    (one / "sub").mkdir()
    (one / "sub" / "c.txt").write_text("ccc")
    (one / "big.bin").write_bytes(b"x" * (3 << 19))
    sent = once(one, server.address, "-v")
    assert (sent.returncode, sent.stderr) == (0, "")
    lines = sent.stdout.splitlines()
    assert sorted(lines[:-1]) == [
        "uploaded a.txt (1 byte)", "uploaded big.bin (1.5 MiB)", "uploaded sub/c.txt (3 bytes)"
    ]  # fmt: skip
    assert summary(one, server.address, "3 uploaded, 0 downloaded, 0 deleted, 0 conflicts, "
                   "0 failed (1.5 MiB)").fullmatch(lines[-1])  # fmt: skip
    got = once(two, server.address, "--verbose")
    assert sorted(got.stdout.splitlines()[:-1]) == [
        "downloaded a.txt (1 byte)", "downloaded big.bin (1.5 MiB)",
        "downloaded sub/c.txt (3 bytes)",
    ]  # fmt: skip
    (one / "a.txt").unlink()
    assert once(one, server.address, "-v").stdout.splitlines()[0] == "deleted a.txt on the server"
    assert once(two, server.address, "-v").stdout.splitlines()[0] == "deleted a.txt here"


def test_default_output_is_a_line_per_batch_as_it_happens(server, tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    (folder / "b.txt").write_text("bb")
    first = once(folder, server.address)
    assert (first.returncode, first.stderr) == (0, "")
    assert first.stdout.splitlines()[0] == "uploaded 2 files (3 bytes)"
    assert len(first.stdout.splitlines()) == 2  # the batch, then the summary
    sync = SyncProcess(folder, server.address).start()
    try:
        (folder / "c.txt").write_text("cccc")
        wait_for(lambda: "uploaded 1 file (4 bytes)\n" in sync.log.text(), 20, "the batch line")
        assert sync.proc is not None and sync.proc.poll() is None  # told while it runs
    finally:
        assert sync.stop(signal.SIGTERM) == 0
    assert "uploaded c.txt" not in sync.log.text()  # no line per file without -v


def test_quiet_prints_nothing_but_errors(server_factory, tmp_path):
    server = server_factory(*QUOTA)
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"a" * 800)
    quiet = once(folder, server.address, "-q")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    (folder / "b.bin").write_bytes(b"b" * 500)
    failed = once(folder, server.address, "--quiet")
    assert (failed.returncode, failed.stdout) == (1, "")
    assert failed.stderr == f"fsclient: b.bin: {FULL}\n  failed: b.bin: {FULL}\n"


def test_status_says_why_a_change_is_pending(server_factory, tmp_path):
    server = server_factory(*QUOTA)
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"a" * 800)
    assert once(folder, server.address).returncode == 0
    (folder / "b.bin").write_bytes(b"b" * 500)
    failed = once(folder, server.address)
    assert failed.returncode == 1
    assert summary(folder, server.address, "0 uploaded, 0 downloaded, 0 deleted, 0 conflicts, "
                   "1 failed (0 bytes)").search(failed.stdout), failed.stdout  # fmt: skip
    assert f"pending changes: 1\n  b.bin: {FULL}\nconflicts:" in status(folder)


def test_a_failure_that_later_went_through_is_not_counted(server_factory, tmp_path):
    server = server_factory(*QUOTA)
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"a" * 800)
    sync = SyncProcess(folder, server.address).start()
    try:
        wait_for(lambda: listing(server) == ["a.bin"], 20, "the first file")
        (folder / "b.bin").write_bytes(b"b" * 500)
        wait_for(lambda: f"fsclient: b.bin: {FULL}\n" in sync.log.text(), 20, "the error, live")
        assert f"  b.bin: {FULL}\n" in status(folder)
        (folder / "a.bin").unlink()  # room for b.bin: its retry goes through
        wait_for(lambda: listing(server) == ["b.bin"], 30, "the retried upload")
        wait_for(lambda: "pending changes: 0\nconflicts:" in status(folder), 10, "no reason left")
    finally:
        code = sync.stop(signal.SIGTERM)
    assert code == 0
    counts = "2 uploaded, 0 downloaded, 1 deleted, 0 conflicts, 0 failed (1.3 KiB)"
    wait_for(lambda: summary(folder, server.address, counts).search(sync.log.text()), 10,
             "the summary (by a pipe)")  # fmt: skip


def test_one_conflict_is_one_conflict(server, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    (one / "x.txt").write_text("base")
    assert once(one, server.address).returncode == 0
    assert once(two, server.address).returncode == 0
    (one / "x.txt").write_text("one's")
    (two / "x.txt").write_text("two's!")
    assert once(one, server.address).returncode == 0
    result = once(two, server.address)
    assert result.returncode == 0, result.stderr
    kept = re.search(r"^conflict on x\.txt: the local version is kept as "
                     r"(x\.sync-conflict-\S+\.txt)$", result.stdout, re.MULTILINE)  # fmt: skip
    assert kept, result.stdout
    assert (two / kept.group(1)).read_text() == "two's!"
    assert summary(two, server.address, "1 uploaded, 1 downloaded, 0 deleted, 1 conflict, "
                   "0 failed (11 bytes)").search(result.stdout), result.stdout  # fmt: skip


def test_status_of_a_folder_of_thousands_of_files_counts_what_changed(server, tmp_path):
    folder = tmp_path / "f"
    for d in range(30):  # 3,000 files: looked at by a survey process, not in the command
        (folder / f"d{d:02}").mkdir(parents=True)
        for n in range(100):
            (folder / f"d{d:02}" / f"{n:03}.txt").write_bytes(b"%d" % n)
    copy = "d03/x.sync-conflict-20261207-010203-vm-abc123.txt"  # kept from a conflict
    (folder / copy).write_bytes(b"the other side's version")
    assert once(folder, server.address).returncode == 0
    report = status(folder)
    assert "files in sync:   3001\npending changes: 0\n" in report
    assert f"conflicts:       1\n  {copy}\n" in report
    (folder / "d07" / "001.txt").write_bytes(b"changed")
    (folder / "d29" / "099.txt").unlink()
    (folder / "d15" / "new.txt").write_bytes(b"new")
    assert "files in sync:   3001\npending changes: 3\n" in status(folder)
