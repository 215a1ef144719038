"""``--max-files`` end to end: a real server with a small index limit refuses a new path with
NO_SPACE (file sessions, small-file batches and the CLI alike), still takes new versions of
paths it knows, counts deleted paths (their tombstones stay in the index) and uploads still in
progress, and gives a place back when such an upload is given up."""

from __future__ import annotations

import pytest

from common import messages as m
from common.digest import digest_of
from common.errors import ErrorCode, StoreFull
from common.limits import ANY_VERSION
from fsclient import Client
from tests.cli import fsclient, fsserver_tool
from tests.conftest import run
from tests.rawclient import RawClient
from tests.serverproc import wait_for

FULL = "no space: the store holds its limit of {} entries (--max-files)"


def test_a_new_path_beyond_the_limit_is_refused_and_known_paths_still_take_versions(
    server_factory, tmp_path
):
    server = server_factory("--workers", "1", "--store-size", "16MiB", "--max-files", "3")

    async def main() -> None:
        async with await Client.connect(server.address) as client:
            for name in ("a", "b", "c"):
                await client.put_bytes(name.encode(), f"{name}.txt")
            with pytest.raises(StoreFull) as full:
                await client.put_bytes(b"d", "d.txt")
            assert full.value.message == FULL.format(3)
            assert full.value.code is ErrorCode.NO_SPACE
            assert (await client.put_bytes(b"a, again", "a.txt")).version == 4
            # a deleted path keeps its entry: the index is still full, and the path comes back
            assert await client.rm("b.txt") == 5
            with pytest.raises(StoreFull):
                await client.put_bytes(b"d", "d.txt")
            assert (await client.put_bytes(b"b is back", "b.txt")).version == 6
            # small files go in batches: each one refused on its own, the known one stored
            files = {"e.txt": b"e", "f.txt": b"f", "c.txt": b"c, again"}
            for name, data in files.items():
                (tmp_path / name).write_bytes(data)
            results = await client.put_many([(tmp_path / n, n) for n in files])
            assert [type(r) for r in results] == [StoreFull, StoreFull, m.FileEntry]
            assert results[0].message == FULL.format(3)  # type: ignore[union-attr]
            listed = {e.path: e.digest for e in await client.ls()}
            assert listed == {"a.txt": digest_of(b"a, again"), "b.txt": digest_of(b"b is back"),
                              "c.txt": digest_of(b"c, again")}  # fmt: skip

    run(main())
    batches = 'fs_received_packets_total{packet_type="small_file_batch"}'
    wait_for(lambda: server.metric(batches, 0.0) > 0, 5, "the small files to go in a batch")
    local = tmp_path / "g.txt"
    local.write_bytes(b"g")
    refused = fsclient("put", str(local), "g.txt", "--server", server.address)
    assert (refused.returncode, refused.stdout) == (1, "")
    assert refused.stderr == f"fsclient: error: {FULL.format(3)}\n"
    assert server.metric("fs_store_files") == 3


def test_uploads_in_progress_to_new_paths_hold_a_place_until_given_up(server_factory):
    """From the environment this time (FS_MAX_FILES). One file stored, one upload to a new
    path accepted and not finished: a second new path is refused on the wire, exactly, until
    the first is cancelled."""
    server = server_factory("--workers", "1", "--store-size", "16MiB",
                            env={"FS_MAX_FILES": "2"})  # fmt: skip
    run(_put(server, b"kept", "kept.txt"))
    raw = RawClient(server.address)
    try:
        raw.send(m.FileSyncInit(1, 1000, 0, 0o644, ANY_VERSION, None, "first.bin"))
        assert raw.expect(m.FileSyncInitResponse).status is m.InitStatus.ACCEPTED
        raw.send(m.FileSyncInit(2, 10, 0, 0o644, ANY_VERSION, None, "second.bin"))
        assert raw.expect(m.FileSyncInitResponse) == m.FileSyncInitResponse(
            2, m.InitStatus.NO_SPACE, 0, 0, FULL.format(2)
        )
        raw.send(m.FileSyncInit(3, 10, 0, 0o644, ANY_VERSION, None, "kept.txt"))
        assert raw.expect(m.FileSyncInitResponse).status is m.InitStatus.ACCEPTED  # known
        raw.send(m.FileSyncCancel(1))
        raw.send(m.FileSyncInit(4, 10, 0, 0o644, ANY_VERSION, None, "second.bin"))
        assert raw.expect(m.FileSyncInitResponse).status is m.InitStatus.ACCEPTED
    finally:
        raw.close()


async def _put(server, data: bytes, path: str) -> m.FileEntry:
    async with await Client.connect(server.address) as client:
        return await client.put_bytes(data, path)


def test_a_max_files_below_one_stops_the_start():
    for args, env in ((["--max-files", "0"], {}), ([], {"FS_MAX_FILES": "0"})):
        result = fsserver_tool("--port", "0", "--metrics-port", "0", *args, env=env)
        assert result.returncode == 2
        assert result.stderr == "fsserver: error: --max-files must be at least 1\n"


def test_the_default_fits_a_million_files_and_as_many_tombstones():
    """Issue 13: a share of a million files must still take deletes and new paths (a
    tombstone holds an entry); ``tests/test_million.py`` fills a share to a million."""
    result = fsserver_tool("--help")
    assert result.returncode == 0
    assert "(env FS_MAX_FILES, default 2000000)" in " ".join(result.stdout.split())
