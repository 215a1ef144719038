"""Conditional writes against a real server (PROTOCOL.md section 7): an upload whose
``base_version`` is stale is refused at its ``FileSyncInit``; one whose path changed after the
Init was accepted is refused at its commit; a delete against a stale version is refused and
keeps the file; deleting a missing path is NOT_FOUND. Each refusal is checked on the wire
(a raw client), through the library (the typed error) and, for ``rm``, through the CLI."""

from __future__ import annotations

import asyncio
import os
import random

import pytest

from common import messages as m
from common.digest import digest_of
from common.errors import Conflict, ErrorCode, NotFound
from common.limits import ANY_VERSION, NO_VERSION
from fsclient import Client
from fsserver.store.allocator import aligned
from tests.cli import fsclient
from tests.conftest import run
from tests.rawclient import RawClient
from tests.serverproc import ServerProcess, wait_for

KiB = 1024
MiB = 1024 * KiB


@pytest.fixture
def server(server_factory):
    """The usual test server, without kept versions: these tests read the store's use of
    the arena, which an earlier version kept would change."""
    return server_factory("--workers", "2", "--hash-workers", "1", "--store-size", "64MiB",
                          "--keep-versions", "0")  # fmt: skip


def stored(server: ServerProcess, *writes: tuple[bytes, str]) -> list[int]:
    """Upload each (content, path) in order; the versions they got."""

    async def main() -> list[int]:
        async with await Client.connect(server.address) as client:
            return [(await client.put_bytes(data, path)).version for data, path in writes]

    return run(main())


def stat(server: ServerProcess, path: str) -> m.FileEntry:
    async def main() -> m.FileEntry:
        async with await Client.connect(server.address) as client:
            return await client.stat(path)

    return run(main())


def used_bytes_settle_at(server: ServerProcess, expected: int) -> None:
    """The store's used bytes reach *expected* (reservations are given back by store calls
    that may still be on their way when the client hears the refusal)."""
    wait_for(lambda: server.metric("fs_store_used_bytes") == expected, 10,
             f"the store to use {expected} bytes")  # fmt: skip


def upload(raw: RawClient, fid: int, data: bytes, path: str, base: int) -> m.Message:
    """A whole upload on the wire, up to the server's last word on it."""
    raw.send(m.FileSyncInit(fid, len(data), 0, 0o644, base, None, path))
    reply = raw.expect(m.FileSyncInitResponse)
    assert reply.status is m.InitStatus.ACCEPTED, reply
    raw.send(m.FileSyncData(fid, data))
    raw.send(m.FileSyncCheckHash(fid, digest_of(data)))
    assert raw.expect(m.FileSyncCheckHashResponse).status is m.HashStatus.OK
    return raw.next_event()


# -- the Init-time CONFLICT ------------------------------------------------------------------


def test_a_stale_base_version_is_refused_at_init_with_the_current_version(server):
    v1, v2 = stored(server, (b"one", "a.txt"), (b"two", "a.txt"))
    assert (v1, v2) == (1, 2)
    used = server.metric("fs_store_used_bytes")
    raw = RawClient(server.address)
    try:
        # (base_version, path, the version reported back): each a refusal, nothing reserved
        cases = [
            (v1, "a.txt", v2),  # replace a version that is no longer current
            (NO_VERSION, "a.txt", v2),  # create-only, but the path exists
            (5, "new.txt", NO_VERSION),  # replace a version of a path that never existed
        ]
        for fid, (base, path, current) in enumerate(cases, start=1):
            raw.send(m.FileSyncInit(fid, 100 * KiB, 0, 0o644, base, None, path))
            assert raw.expect(m.FileSyncInitResponse) == m.FileSyncInitResponse(
                fid, m.InitStatus.CONFLICT, current, 0,
                f"conflict: {path} is at version {current}, not {base}",
            )  # fmt: skip
        assert server.metric("fs_store_used_bytes") == used
        # the refusals ended their sessions only: the connection uploads against v2
        assert upload(raw, 9, b"three", "a.txt", v2) == m.FileSyncFinish(9, 3)
    finally:
        raw.close()

    async def library() -> None:
        async with await Client.connect(server.address) as client:
            with pytest.raises(Conflict) as refused:
                await client.put_bytes(b"late", "a.txt", base_version=v2)
            assert refused.value.message == "conflict: a.txt is at version 3, not 2"
            assert refused.value.code is ErrorCode.CONFLICT
            entry = await client.put_bytes(b"fresh", "b.txt", base_version=NO_VERSION)
            assert entry.version == 4

    run(library())
    assert stat(server, "a.txt").digest == digest_of(b"three")


# -- the commit-time CONFLICT ----------------------------------------------------------------


def test_two_uploads_against_the_same_version_the_second_commit_is_refused(server):
    """Both Inits see v1 and are accepted; the first commit makes v2, so the second, checked
    again at its commit, is refused with a session Error, and its reservation goes back."""
    [v1] = stored(server, (b"original", "p.bin"))
    first, second = os.urandom(256 * KiB), os.urandom(192 * KiB)
    a, b = (RawClient(server.address, max_packet=MiB) for _ in range(2))
    try:
        for raw, data in ((a, first), (b, second)):
            raw.send(m.FileSyncInit(1, len(data), 0, 0o644, v1, None, "p.bin"))
            reply = raw.expect(m.FileSyncInitResponse)
            assert reply.status is m.InitStatus.ACCEPTED, reply
            raw.send(m.FileSyncData(1, data))
        a.send(m.FileSyncCheckHash(1, digest_of(first)))
        assert a.expect(m.FileSyncCheckHashResponse).status is m.HashStatus.OK
        assert a.expect(m.FileSyncFinish) == m.FileSyncFinish(1, v1 + 1)
        b.send(m.FileSyncCheckHash(1, digest_of(second)))
        assert b.expect(m.FileSyncCheckHashResponse).status is m.HashStatus.OK
        assert b.next_event() == m.Error(
            ErrorCode.CONFLICT, 1, f"conflict: p.bin is at version {v1 + 1}, not {v1}"
        )
        b.send(m.Ping(3, False))  # the session ended, not the connection
        assert b.expect(m.Ping) == m.Ping(3, True)
    finally:
        a.close()
        b.close()
    entry = stat(server, "p.bin")
    assert (entry.version, entry.digest) == (v1 + 1, digest_of(first))
    used_bytes_settle_at(server, aligned(len(first)))


def test_an_upload_against_v1_is_refused_when_another_client_commits_v2_mid_transfer(
    server, tmp_path
):
    """The library's ``put`` against v1 is half sent when a real ``fsclient put`` commits v2
    (the progress callback runs it and waits: nothing more of the first upload moves
    meanwhile). Its bytes all arrive and verify, and its commit is refused: ``Conflict``."""
    [v1] = stored(server, (b"v1", "doc.bin"))
    mine, theirs = tmp_path / "mine.bin", tmp_path / "theirs.bin"
    mine.write_bytes(os.urandom(8 * MiB))
    theirs.write_bytes(os.urandom(3 * MiB))
    other_put: list[int] = []

    def on_progress(done: int, size: int) -> None:
        if not other_put:
            assert done < size, "the whole file left in one step: nothing was mid-transfer"
            result = fsclient("put", str(theirs), "doc.bin", "--server", server.address)
            assert result.returncode == 0, result.stderr
            assert result.stdout == f"uploaded doc.bin ({3 * MiB} bytes, version {v1 + 1})\n"
            other_put.append(done)

    async def main() -> None:
        async with await Client.connect(server.address) as client:
            with pytest.raises(Conflict) as refused:
                await client.put(mine, "doc.bin", base_version=v1, progress=on_progress)
            assert refused.value.message == f"conflict: doc.bin is at version {v1 + 1}, not {v1}"
            assert client.proto.failure is None  # one session refused, the connection goes on
            assert (await client.stat("doc.bin")).digest == digest_of(theirs.read_bytes())

    run(main())
    assert other_put, "the other client never ran"
    used_bytes_settle_at(server, aligned(3 * MiB))


def test_racing_uploads_against_one_version_leave_exactly_one_winner(server):
    """Eight clients upload different content against the same version at once, for a few
    rounds. Each round exactly one wins; every other one is refused as a conflict, at its
    Init or at its commit, whichever the race makes it."""

    async def main() -> None:
        clients = [await Client.connect(server.address) for _ in range(8)]
        try:
            base = (await clients[0].put_bytes(b"start", "race.bin")).version
            rng = random.Random(10)
            for _ in range(4):
                contents = [rng.randbytes(64 * KiB + n) for n in range(len(clients))]
                results = await asyncio.gather(
                    *(c.put_bytes(data, "race.bin", base_version=base)
                      for c, data in zip(clients, contents, strict=True)),
                    return_exceptions=True,
                )  # fmt: skip
                won = [(i, r) for i, r in enumerate(results) if isinstance(r, m.FileEntry)]
                lost = [r for r in results if not isinstance(r, m.FileEntry)]
                assert len(won) == 1, results
                winner, entry = won[0]
                assert entry.version == base + 1
                for exc in lost:
                    assert isinstance(exc, Conflict), exc
                    assert exc.message == f"conflict: race.bin is at version {base + 1}, not {base}"
                now = await clients[0].stat("race.bin")
                assert (now.version, now.digest) == (base + 1, digest_of(contents[winner]))
                base = now.version
        finally:
            for client in clients:
                await client.close()

    run(main())
    # every loser's reservation went back: only the last winner's content is held
    used_bytes_settle_at(server, aligned(stat(server, "race.bin").size))


# -- conditional deletes, and deleting what is not there ------------------------------------


def test_a_delete_with_a_stale_version_is_refused_and_keeps_the_file(server):
    v1, v2 = stored(server, (b"first", "d.txt"), (b"second", "d.txt"))
    raw = RawClient(server.address)
    try:
        raw.send(m.DeleteRequest(7, v1, "d.txt"))
        assert raw.expect(m.DeleteResponse) == m.DeleteResponse(
            7, m.LookupStatus.CONFLICT, v2, f"conflict: d.txt is at version {v2}, not {v1}"
        )
        raw.send(m.DeleteRequest(8, NO_VERSION, "d.txt"))  # "only if missing": it is not
        assert raw.expect(m.DeleteResponse).status is m.LookupStatus.CONFLICT
    finally:
        raw.close()

    async def library() -> None:
        async with await Client.connect(server.address) as client:
            with pytest.raises(Conflict) as refused:
                await client.rm("d.txt", base_version=v1)
            assert refused.value.message == f"conflict: d.txt is at version {v2}, not {v1}"
            assert refused.value.code is ErrorCode.CONFLICT
            entry = await client.stat("d.txt")
            assert (entry.version, entry.digest) == (v2, digest_of(b"second"))
            assert await client.rm("d.txt", base_version=v2) == v2 + 1

    run(library())


def test_deleting_a_missing_path_is_not_found_whatever_the_version(server):
    [v1] = stored(server, (b"here", "gone.txt"))
    raw = RawClient(server.address)
    try:
        for rid, (path, base) in enumerate(
            [("never.txt", ANY_VERSION), ("never.txt", 5), ("never.txt", NO_VERSION)], start=1
        ):
            raw.send(m.DeleteRequest(rid, base, path))
            assert raw.expect(m.DeleteResponse) == m.DeleteResponse(
                rid, m.LookupStatus.NOT_FOUND, 0, f"not found: {path}"
            )
    finally:
        raw.close()

    async def library() -> None:
        async with await Client.connect(server.address) as client:
            assert await client.rm("gone.txt") == v1 + 1
            for path, base in [("gone.txt", ANY_VERSION), ("gone.txt", v1), ("never.txt", 3)]:
                with pytest.raises(NotFound) as missing:
                    await client.rm(path, base_version=base)
                assert missing.value.message == f"not found: {path}"
                assert missing.value.code is ErrorCode.NOT_FOUND

    run(library())


def test_cli_rm_of_a_missing_path_says_so_and_exits_1(server):
    stored(server, (b"x", "present.txt"))
    missing = fsclient("rm", "docs/absent.txt", "--server", server.address)
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr == "fsclient: error: not found: docs/absent.txt\n"
    present = fsclient("rm", "present.txt", "--server", server.address)
    assert (present.returncode, present.stderr) == (0, "")
    assert present.stdout == "deleted present.txt (version 2)\n"
    again = fsclient("rm", "present.txt", "--server", server.address)
    assert again.returncode == 1
    assert again.stderr == "fsclient: error: not found: present.txt\n"
