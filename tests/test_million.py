"""A share of a million files (issue 13): the server takes them at its default ``--max-files``,
``fsclient ls`` streams them all in path order in bounded memory, and ``fsclient sync --once``
into an empty folder gets every one. The files are made through full small-file batches on raw
connections (``tests.bulkfill``): 1 in 100 holds 8 bytes of its own, the others are empty.
The sync goes to tmpfs when there is one: a disk would time the client's fsync of each file."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bulkfill import data_of, fill, path_of
from tests.cli import cli_env, fsclient, fsclient_command
from tests.serverproc import ROOT, ServerProcess, start_server

FILES = 1_000_000
SIZE, EVERY = 8, 100
LS_PEAK_MIB = 100
"""The ls process's bound. A streaming ls stays near the interpreter's own ~30 MiB; one that
held the listing would keep a million entries (their paths alone ~64 MiB, each entry an object
of a few hundred bytes: over 250 MiB)."""
CLI_TIMEOUT = 600.0
SYNC_TIMEOUT = 1100.0
SHM = Path("/dev/shm")


@pytest.fixture(scope="module")
def million() -> Iterator[ServerProcess]:
    """One server holding the million files, for both tests (making them takes ~40 s)."""
    server = start_server("--workers", "2", "--hash-workers", "1", "--store-size", "64MiB")
    try:
        assert fill(server.address, FILES, SIZE, EVERY) == FILES
        assert server.metric("fs_store_files") == FILES
        yield server
    finally:
        try:
            server.stop()
        finally:
            server.kill_group()
        assert server.shm_segments() == [], "server left shared memory behind"


@pytest.mark.timeout(600)
def test_ls_streams_a_million_files_in_order_in_bounded_memory(million):
    count, peak = listing(million.address)
    assert count == FILES
    assert peak < LS_PEAK_MIB, f"ls peaked at {peak:.0f} MiB"


@pytest.mark.timeout(1200)
def test_sync_once_into_an_empty_folder_gets_a_million_files(million):
    scratch = SHM if SHM.is_dir() else ROOT / "tests"
    dest = Path(tempfile.mkdtemp(prefix="fstest-million-", dir=scratch))
    try:
        synced = fsclient("sync", str(dest), "--once", server=million, timeout=SYNC_TIMEOUT)
        assert synced.returncode == 0, synced.stderr[-2000:]
        assert count_files(dest) == FILES
        for n in [*range(0, FILES, 9_973), *range(0, FILES, 100_000), FILES - 1]:
            assert (dest / path_of(n)).read_bytes() == data_of(n, SIZE, EVERY), path_of(n)
    finally:
        shutil.rmtree(dest)


def listing(address: str) -> tuple[int, float]:
    """Run ``fsclient ls``: how many lines it printed (each checked to be the next path in
    order), and its peak resident memory in MiB (VmHWM, read while it runs)."""
    command = fsclient_command("ls", server=address)
    proc = subprocess.Popen(command, cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)  # fmt: skip
    seen = [0]
    wrong: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if not wrong and line.split("\t", 1)[0] != path_of(seen[0]):
                wrong.append(f"line {seen[0]}: {line!r}")
            seen[0] += 1

    reader = threading.Thread(target=read)
    reader.start()
    peak_kib = 0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                peak_kib = max(
                    [peak_kib] + [int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")]
                )
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.01)  # sampling, not synchronisation: poll() ends the loop
    assert proc.wait(CLI_TIMEOUT) == 0
    reader.join(CLI_TIMEOUT)
    assert not wrong, wrong[0]
    return seen[0], peak_kib / 1024


def count_files(folder: Path) -> int:
    """How many files are below *folder*, but the sync client's own state folder (by
    ``os.walk``: a ``Path`` per file was tens of seconds for a million)."""
    count = 0
    for top, folders, files in os.walk(folder):
        if top == str(folder) and ".fsync" in folders:
            folders.remove(".fsync")
        count += len(files)
    return count


@pytest.mark.timeout(300)
def test_a_share_of_a_million_files_still_takes_deletes_and_new_paths(million, tmp_path):
    """The default ``--max-files`` counts tombstones: it leaves room past a million files."""
    gone = fsclient("rm", path_of(0), server=million)
    assert gone.returncode == 0, gone.stderr
    (tmp_path / "new.txt").write_text("hello\n")
    added = fsclient("put", str(tmp_path / "new.txt"), "new/after-a-million.txt", server=million)
    assert added.returncode == 0, added.stderr
    assert million.metric("fs_store_files") == FILES
