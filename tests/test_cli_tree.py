"""Trees and many files with the real ``fsclient`` (issue 12): ``put -r``, ``get -r`` and
``rm -r`` each on one connection, byte for byte; where files go without a target; ``get -``;
and ``ls`` by path segment, ``ls -l`` for people, ``ls | head``."""

from __future__ import annotations

import random
import re
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from fsclient import Client
from fsclient.localfiles import TEMP_MARK
from tests.cli import CLI_TIMEOUT, cli_env, fsclient, fsclient_command
from tests.conftest import run
from tests.serverproc import ServerProcess, wait_for
from tests.syncproc import once

NAMES = ("é", "日本語", "naïve café", "ß", "plain")
"""Unicode names, in NFC (the form the server stores: a round trip gives the same bytes)."""
CONNECTIONS = "fs_connections_total"


def make_tree(root: Path, count: int = 500) -> dict[str, bytes]:
    """*count* files in folders up to three deep: every 50th empty, four over 1 MiB."""
    rng = random.Random(12)
    files: dict[str, bytes] = {}
    for n in range(count):
        folders = [f"{NAMES[(n + k) % len(NAMES)]}-{k}" for k in range(n % 4)]
        rel = "/".join([*folders, f"{NAMES[n % len(NAMES)]} {n:03d}.txt"])
        if n % 50 == 0:
            size = 0
        elif n % 125 == 1:
            size = (1 << 20) + rng.randrange(1 << 19)
        else:
            size = rng.randrange(1, 6000)
        files[rel] = rng.randbytes(size)
        path = root.joinpath(*rel.split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(files[rel])
    return files


def read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def remote_paths(server: ServerProcess, prefix: str = "") -> list[str]:
    async def listing() -> list[str]:
        async with await Client.connect(server.address) as client:
            return [e.path for e in await client.ls(prefix)]

    return run(listing())


def connections(server: ServerProcess) -> float:
    """Connections the server has accepted. A scrape the supervisor dropped (its 5 s read
    timeout, on a loaded machine) is asked again: the count does not change by asking."""

    def scrape() -> float | None:
        try:
            return server.metric_total(CONNECTIONS) + 1  # (+1: 0 is an answer too)
        except OSError:
            return None

    return wait_for(scrape, 30, "a /metrics answer") - 1


def on_one_connection(server: ServerProcess, *args: str, cwd: Path | None = None
                      ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run ``fsclient ARGS``; it must succeed, quietly on stderr, having opened exactly one
    connection (the server counts each it accepts)."""
    before = connections(server)
    done = fsclient(*args, server=server, cwd=cwd)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert connections(server) - before == 1
    return done


def test_a_tree_round_trips_byte_exactly_on_one_connection_each(server, tmp_path):
    source, back = tmp_path / "source", tmp_path / "back"
    files = make_tree(source)
    assert len(files) == 500 and sum(len(d) > 1 << 20 for d in files.values()) == 4

    put = on_one_connection(server, "put", "-r", str(source), "backup/")
    assert re.fullmatch(r"uploaded 500 files, \d+\.\d MiB in \S+ s \(.+/s\)\n", put.stdout)
    assert sorted(remote_paths(server)) == sorted(f"backup/{rel}" for rel in files)

    get = on_one_connection(server, "get", "-r", "backup/", str(back))
    assert get.stdout.startswith("downloaded 500 files, ")
    assert read_tree(back) == files
    assert not [p for p in back.rglob("*") if ".fs-tmp-" in p.name]  # no temp file left

    rm = on_one_connection(server, "rm", "-r", "backup/")
    assert rm.stdout.startswith("deleted 500 files, ")
    assert remote_paths(server) == []


def test_where_files_go_without_a_target_or_into_a_folder(server, tmp_path):
    (tmp_path / "notes.txt").write_text("notes")
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "photos" / "2026").mkdir(parents=True)
    (tmp_path / "photos" / "2026" / "p.jpg").write_bytes(b"jpg")

    on_one_connection(server, "put", "notes.txt", cwd=tmp_path)  # the file's own name
    on_one_connection(server, "put", "notes.txt", "docs/", cwd=tmp_path)  # into a folder
    on_one_connection(server, "put", "a.txt", "notes.txt", "many", cwd=tmp_path)
    on_one_connection(server, "put", "-r", "photos", cwd=tmp_path)  # the folder's own name
    assert sorted(remote_paths(server)) == ["docs/notes.txt", "many/a.txt", "many/notes.txt",
                                            "notes.txt", "photos/2026/p.jpg"]  # fmt: skip

    (tmp_path / "notes.txt").unlink()
    got = on_one_connection(server, "get", "many/notes.txt", cwd=tmp_path)
    assert got.stdout.startswith("downloaded many/notes.txt (5 bytes")
    assert (tmp_path / "notes.txt").read_text() == "notes"


def test_put_r_of_a_synced_folder_sends_its_files_not_its_sync_state(server, tmp_path):
    """The client's state (``.fsync/``) and a download's unfinished temp file are this
    machine's own: a ``put -r`` of the folder leaves them out, as a sync does."""
    folder = tmp_path / "synced"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    (folder / "sub").mkdir()
    (folder / "sub" / "b.txt").write_text("b")
    assert once(folder, server.address, "--share", "other", "--create-share").returncode == 0
    assert (folder / ".fsync" / "state.sqlite").is_file()
    (folder / "sub" / f".b.txt{TEMP_MARK}1a2b3c4d").write_text("half a download")
    (folder / "sub" / ".fsync").mkdir()  # not a client's state: no state DB in it
    (folder / "sub" / ".fsync" / "kept.txt").write_text("kept")
    put = fsclient("put", "-r", "synced", server=server, cwd=tmp_path)
    assert put.returncode == 0, put.stderr
    assert put.stderr.startswith("fsclient: warning: skipping a download's unfinished temp file")
    assert sorted(remote_paths(server)) == ["synced/a.txt", "synced/sub/.fsync/kept.txt",
                                            "synced/sub/b.txt"]  # fmt: skip


def test_get_dash_writes_the_file_to_stdout(server, tmp_path):
    data = random.Random(3).randbytes(300_000)
    (tmp_path / "blob.bin").write_bytes(data)
    on_one_connection(server, "put", str(tmp_path / "blob.bin"), "d/blob.bin")
    done = subprocess.run(fsclient_command("get", "d/blob.bin", "-", server=server),
                          capture_output=True, env=cli_env(), cwd=tmp_path,
                          timeout=CLI_TIMEOUT)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == data and done.stderr == b""
    assert list(tmp_path.iterdir()) == [tmp_path / "blob.bin"]  # no file left behind


def test_a_file_that_fails_is_reported_and_the_others_arrive(server, tmp_path):
    source = tmp_path / "source"
    for name in ("a", "b", "c"):
        (source / "d").mkdir(parents=True, exist_ok=True)
        (source / "d" / name).write_text(name)
    on_one_connection(server, "put", "-r", str(source), "t/")
    back = tmp_path / "back"
    (back / "d" / "b").mkdir(parents=True)  # a folder where the file b should go

    done = fsclient("get", "-r", "t", str(back), server=server)
    assert done.returncode == 1
    assert done.stderr == f"fsclient: error: t/d/b: a folder is in the way: {back}/d/b\n"
    assert done.stdout.startswith("downloaded 2 files, 2 B in ")
    assert done.stdout.rstrip().endswith("; 1 failed")
    assert (back / "d" / "a").read_text() == "a" and (back / "d" / "c").read_text() == "c"


def fill(server: ServerProcess, paths: list[str]) -> None:
    async def main() -> None:
        async with await Client.connect(server.address) as client:
            for n, path in enumerate(paths):
                await client.put_bytes(b"x" * n, path, mtime_ns=1_700_000_000_000_000_000)

    run(main())


def test_ls_matches_whole_path_segments(server):
    fill(server, ["json/__init__.py", "json/tool.py", "json/tool.pyc", "jsonx/tool.py", "js"])
    listed = fsclient("ls", "json", server=server)
    assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == [
        "json/__init__.py", "json/tool.py", "json/tool.pyc"]  # fmt: skip
    assert fsclient("ls", "json/", server=server).stdout == listed.stdout
    one = fsclient("ls", "json/tool.py", "--json", server=server).stdout.splitlines()
    assert len(one) == 1 and '"path": "json/tool.py"' in one[0]
    assert fsclient("ls", "jso", server=server).stdout == ""


def test_ls_long_has_a_header_human_sizes_and_local_times(server):
    fill(server, ["small.txt", "big/" + "x" * 10])

    async def grow() -> None:
        async with await Client.connect(server.address) as client:
            await client.put_bytes(b"y" * (3 << 20), "big/file.bin",
                                   mtime_ns=1_700_000_000_000_000_000)  # fmt: skip

    run(grow())
    lines = fsclient("ls", "-l", server=server).stdout.splitlines()
    assert lines[0].split() == ["SIZE", "VERSION", "MODIFIED", "PATH"]
    local = datetime.fromtimestamp(1_700_000_000).strftime("%Y-%m-%d %H:%M")
    assert lines[1].split() == ["3.0", "MiB", "3", *local.split(), "big/file.bin"]
    assert lines[3].split() == ["0", "B", "1", *local.split(), "small.txt"]
    assert {line.rindex(" ") + 1 for line in lines} == {lines[0].index("PATH")}  # aligned


def test_ls_long_shows_an_empty_folder_as_the_folder(server):
    fill(server, ["a.txt", "empty/.fsfolder"])
    lines = fsclient("ls", "-l", server=server).stdout.splitlines()
    assert [line.split()[-1] for line in lines] == ["PATH", "a.txt", "empty/"]
    assert lines[2].split()[0] == "-"
    plain = fsclient("ls", server=server).stdout.splitlines()  # scripts get the real path
    assert [line.split("\t")[0] for line in plain] == ["a.txt", "empty/.fsfolder"]


def test_ls_into_head_ends_quietly_with_0(server):
    fill(server, [f"f{n:04d}" for n in range(500)])
    command = " ".join(f"'{part}'" for part in fsclient_command("ls", server=server))
    done = subprocess.run(["bash", "-c", f"set -o pipefail; {command} | head -1"],
                          capture_output=True, text=True, env=cli_env(),
                          timeout=CLI_TIMEOUT)  # fmt: skip
    assert done.returncode == 0
    assert done.stdout.startswith("f0000\t") and done.stdout.count("\n") == 1
    assert done.stderr == ""


def test_a_tree_shows_files_and_bytes_on_a_terminal_only(server, tmp_path):
    from tests.test_progress import cli_output

    make_tree(tmp_path / "source", count=120)
    shown = cli_output(server, ["put", "-r", str(tmp_path / "source"), "t/"], on_tty=True)
    assert "put:" in shown and "/120" in shown
    shown = cli_output(server, ["get", "-r", "t", str(tmp_path / "back")], on_tty=True)
    assert "get:" in shown and "/120" in shown
    assert cli_output(server, ["rm", "-r", "t"], on_tty=False) == ""


def test_paths_a_server_should_not_send_are_not_followed_out_of_the_folder(tmp_path, capsys):
    """A listing is the server's word: a path with ``..`` is skipped, not joined."""
    from common.messages import FileEntry
    from fsclient.tree import plan_get

    class Listing:
        async def ls_tree(self, path: str) -> list[FileEntry]:
            return [FileEntry(1, 1, 0, 0o644, bytes(16), p) for p in ("t/ok", "t/../../evil")]

    plan = run(plan_get(Listing(), "t", str(tmp_path / "into"), recursive=True))  # type: ignore[arg-type]
    assert [(e.path, dest) for e, dest in plan.pairs] == [("t/ok", tmp_path / "into" / "ok")]
    assert "skipping a path the server should not have sent: 't/../../evil'" in (
        capsys.readouterr().err
    )


def test_a_connection_lost_for_good_ends_the_run_with_one_error(tmp_path, capsys):
    """Not one line per file left: the first loss ends the workers, and is the error."""
    from common.messages import FileEntry
    from fsclient.protocol import ConnectionLost
    from fsclient.tree import GetPlan, get_tree

    calls = []

    class Gone:
        async def get(self, path: str, dest: Path) -> FileEntry:
            calls.append(path)
            raise ConnectionLost("connection lost")

    entries = [FileEntry(1, 1, 0, 0o644, bytes(16), f"t/{n}") for n in range(200)]
    plan = GetPlan([(e, tmp_path / e.path) for e in entries], one_file=False)
    with pytest.raises(ConnectionLost):
        run(get_tree(Gone(), plan))  # type: ignore[arg-type]
    out, err = capsys.readouterr()
    assert len(calls) <= 32  # each worker stopped at its first loss
    assert out.startswith("downloaded 0 files, 0 B in ") and err == ""


def test_ls_streams_a_big_listing_a_page_at_a_time(server, tmp_path):
    """2,500 files come in pages of at most 1,000, in path order; ``ls -l`` prints one header
    and keeps its columns aligned across pages (its widths are fitted to the first)."""
    source = tmp_path / "one.txt"
    source.write_bytes(b"x")
    names = [f"d/{n:05d}" for n in range(2500)]

    async def fill_and_page() -> list[int]:
        async with await Client.connect(server.address) as client:
            results = await client.put_many([(source, name) for name in names])
            assert all(not isinstance(r, Exception) for r in results)
            pages = [page async for page in client.ls_tree_pages("d")]
        assert [e.path for page in pages for e in page] == names
        return [len(page) for page in pages]

    sizes = run(fill_and_page())
    assert len(sizes) >= 3 and max(sizes) <= 1000
    lines = fsclient("ls", "-l", "d", server=server).stdout.splitlines()
    assert len(lines) == 2501 and lines[0].split()[0] == "SIZE"
    assert sum(line.split()[0] == "SIZE" for line in lines) == 1
    assert {line.rindex(" ") + 1 for line in lines} == {lines[0].index("PATH")}  # aligned
