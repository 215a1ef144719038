"""The sync client's own rules: the reconcile table, conflict names, and refusing paths from a
server that tries to make it write outside its folder."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import tempfile
import threading
from pathlib import Path

import pytest
import xxhash

from common import messages as m
from common.connection import FSConnection
from common.limits import ANY_VERSION, MAX_MTIME_NS, MIN_MTIME_NS, NO_VERSION
from common.state import Role
from fsclient.sync.actions import conflict_name
from fsclient.sync.plan import Decision, Do, LocalFile, RemoteState, decide
from fsclient.sync.state import BaseEntry
from tests.syncproc import once, status

D1, D2, D3 = b"\x01" * 16, b"\x02" * 16, b"\x03" * 16


def base(digest: bytes, version: int = 5) -> BaseEntry:
    return BaseEntry("p", 1, 100, 0o644, 7, digest, version)


def local(digest: bytes, mtime: int = 100) -> LocalFile:
    return LocalFile("p", 1, mtime, 0o644, 7, digest)


def remote(digest: bytes | None, version: int = 9) -> RemoteState:
    return RemoteState(version, deleted=digest is None, digest=digest or b"")


@pytest.mark.parametrize(
    ("b", "loc", "r", "expected"),
    [
        (D1, D1, "none", Do.NOTHING),
        (D1, D2, "none", Do.UPLOAD),
        (D1, None, "none", Do.DELETE_REMOTE),
        (D1, D1, D2, Do.DOWNLOAD),
        (D1, D1, None, Do.DELETE_LOCAL),
        (D1, D2, D2, Do.RECORD),
        (D1, None, None, Do.FORGET),
        (D1, None, D2, Do.DOWNLOAD),  # a modification wins over a delete
        (D1, D2, None, Do.UPLOAD),  # ... both ways
        (D1, D2, D3, Do.CONFLICT),
        (None, D1, "none", Do.UPLOAD),
        (None, None, D1, Do.DOWNLOAD),
        (None, D1, D1, Do.RECORD),
        (None, D1, D2, Do.CONFLICT),
        (None, None, None, Do.NOTHING),
    ],
)
def test_reconcile_table(b, loc, r, expected):
    decision = decide(
        base(b) if b else None, local(loc) if loc else None, None if r == "none" else remote(r)
    )
    assert decision.do is expected


def test_conditional_versions():
    assert decide(base(D1, 5), local(D2), None).expected == 5
    assert decide(None, local(D1), None).expected == NO_VERSION
    assert decide(base(D1), local(D2), remote(None)).expected == NO_VERSION
    assert decide(base(D1, 5), None, None).expected == 5


def test_after_a_store_reset_nothing_is_deleted():
    assert decide(base(D1, 0), local(D1), None, reseed=True) == decide(
        None, local(D1), None, reseed=True
    )
    assert decide(base(D1, 0), local(D1), None, reseed=True).do is Do.UPLOAD
    # a base without a version (its upload after the reset did not go through yet) is sent
    # later too, but only if the server does not hold the path: create-only
    assert decide(base(D1, 0), local(D1), None) == Decision(Do.UPLOAD, NO_VERSION)
    assert decide(base(D1, 0), local(D1), remote(D1)).do is Do.RECORD
    assert decide(base(D1, 0), local(D1), None, reseed=True).expected == ANY_VERSION
    assert decide(base(D1, 0), None, None, reseed=True).do is Do.FORGET
    assert decide(base(D1, 0), local(D1), remote(D2), reseed=True).do is Do.DOWNLOAD


def test_reconcile_never_loses_a_local_change():
    """Over every combination: if the local file changed, the decision keeps it somewhere."""
    options = [None, D1, D2, D3]
    for b, loc, r in itertools.product(options, options, [*options, "none"]):
        decision = decide(base(b) if b else None, local(loc) if loc else None,
                          None if r == "none" else remote(r))  # fmt: skip
        if loc is not None and loc != b:
            assert decision.do in (Do.UPLOAD, Do.CONFLICT, Do.RECORD), (b, loc, r, decision)


def test_a_touched_file_is_recorded_not_sent():
    assert decide(base(D1), local(D1, mtime=200), None).do is Do.RECORD


def test_conflict_names():
    when = 1_800_000_000.0
    name = conflict_name("dir/report.txt", "laptop-1", when)
    assert name.startswith("dir/report.sync-conflict-")
    assert name.endswith("-laptop-1.txt")
    assert conflict_name(".bashrc", "c", when).startswith(".bashrc.sync-conflict-")
    assert conflict_name("Makefile", "c", when).startswith("Makefile.sync-conflict-")
    assert conflict_name("a.tar.gz", "c", when).endswith("-c.gz")


class EvilServer:
    """A server (the sans-IO core over asyncio) that announces paths outside the folder."""

    BAD = [
        "../evil.txt",
        "/tmp/evil-absolute.txt",
        "/etc/x",
        "sub/../../evil2.txt",
        "a//b.txt",
        "nul\x00.txt",
        "bell\x07.txt",
        "..",
        ".",
    ]

    def __init__(self) -> None:
        self.port = 0
        self.ready = threading.Event()
        self.requested: list[str] = []
        self.loop: asyncio.AbstractEventLoop | None = None

    def run(self) -> None:
        asyncio.run(self.serve())

    async def serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self.stop = asyncio.Event()
        self.ready.set()
        async with server:
            await self.stop.wait()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = FSConnection(Role.SERVER)
        content = b"the only file you get"
        digest = xxhash.xxh3_128_digest(content)
        while not reader.at_eof():
            data = await reader.read(65536)
            for event in conn.feed(data):
                if isinstance(event, m.VersionHandshake):
                    writer.write(conn.send(m.VersionHandshakeResponse(
                        m.HandshakeStatus.OK, 1, conn.negotiate(event.max_packet), 0,
                        b"E" * 16, 4096, "")))  # fmt: skip
                elif isinstance(event, m.SubscribeRequest):
                    names = [*self.BAD, "ok.txt"]
                    writer.write(conn.send(m.SubscribeResponse(
                        event.request_id, m.LookupStatus.OK, len(names), "")))  # fmt: skip
                    for version, name in enumerate(names, 1):
                        entry = m.FileEntry(len(content), version, 0, 0o644, digest, name)
                        writer.write(conn.send(m.ChangeNotification(False, entry)))
                elif isinstance(event, m.DownloadRequest):
                    self.requested.append(event.path)
                    entry = m.FileEntry(len(content), 5, 0, 0o644, digest, event.path)
                    writer.write(conn.send(m.DownloadResponse(
                        event.file_id, m.LookupStatus.OK, 0, "", entry)))  # fmt: skip
                    writer.write(conn.data_header(event.file_id, len(content)) + content)
                    writer.write(conn.send(m.FileSyncCheckHash(event.file_id, digest)))
            await writer.drain()
        writer.close()


def test_paths_from_the_server_that_escape_the_folder_are_refused(tmp_path):
    evil = EvilServer()
    thread = threading.Thread(target=evil.run, daemon=True)
    thread.start()
    assert evil.ready.wait(10)
    folder = tmp_path / "inner" / "synced"
    folder.mkdir(parents=True)
    try:
        result = once(folder, f"127.0.0.1:{evil.port}")
    finally:
        assert evil.loop is not None
        evil.loop.call_soon_threadsafe(evil.stop.set)
        thread.join(10)
    assert result.returncode == 0, result.stderr
    assert evil.requested == ["ok.txt"]
    assert (folder / "ok.txt").read_bytes() == b"the only file you get"
    assert sorted(p.name for p in folder.iterdir()) == [".fsync", "ok.txt"]
    assert not (tmp_path / "inner" / "evil.txt").exists()
    assert not (tmp_path / "inner" / "evil2.txt").exists()
    assert result.stderr.count("refused a path from the server") == len(EvilServer.BAD)
    for bad in EvilServer.BAD:
        assert "\x00" in bad or repr(bad) in result.stderr


def test_a_file_dated_after_2262_is_synced_as_of_2262(server, tmp_path):
    """Its mtime does not fit the protocol's signed 64-bit nanoseconds (nor the state's
    integers): it is sent as of the last moment that does, once, and the next run finds
    nothing to do (it crashed the session before)."""
    a, b = tmp_path / "A", tmp_path / "B"
    a.mkdir()
    b.mkdir()
    (a / "plain.txt").write_bytes(b"today")
    future = a / "future.txt"
    future.write_bytes(b"from a broken camera clock")
    os.utime(future, ns=(0, 3 * 10**19))  # the year 2920
    first = once(a, server.address)
    assert first.returncode == 0, first.stderr
    assert "2 uploaded" in first.stdout
    again = once(a, server.address)
    assert again.returncode == 0 and "0 uploaded" in again.stdout, again.stdout
    got = once(b, server.address)
    assert got.returncode == 0, got.stderr
    assert (b / "future.txt").read_bytes() == b"from a broken camera clock"
    assert os.stat(b / "future.txt").st_mtime_ns == MAX_MTIME_NS


def test_a_file_dated_before_1677_is_synced_as_of_1677_and_then_left_alone(server):
    """The other end of the protocol's signed 64-bit nanoseconds: the file is sent as of the
    first moment that fits, once, and is in sync after. (A disk's file system may not hold
    such a date: tmpfs does.)"""
    root = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        a = root / "A"
        a.mkdir()
        past = a / "past.txt"
        past.write_bytes(b"from a broken archive")
        os.utime(past, ns=(0, MIN_MTIME_NS - 10**12))
        if os.stat(past).st_mtime_ns >= MIN_MTIME_NS:
            pytest.skip("this file system cannot date a file before 1677")
        first = once(a, server.address)
        assert first.returncode == 0 and "1 uploaded" in first.stdout, first.stderr
        assert "files in sync:   1\n" in status(a)  # (a changed file would be pending)
        again = once(a, server.address)
        assert again.returncode == 0 and "0 uploaded" in again.stdout, again.stdout
    finally:
        shutil.rmtree(root)
