"""Acceptance: identical content is stored once; a full store refuses clearly, keeps what it
has, and reuses space after a delete."""

from __future__ import annotations

import contextlib
import os

import pytest

from common import messages as m
from common.errors import ErrorCode, StoreFull
from common.limits import ANY_VERSION
from fsclient import Client
from tests.cli import fsclient
from tests.conftest import run
from tests.rawclient import RawClient
from tests.serverproc import wait_for

MiB = 1024 * 1024
USED = "fs_store_used_bytes"
PARKED = "fs_store_parked_bytes"


def test_same_content_under_twenty_names_takes_its_size_once(server_factory, tmp_path):
    # 16 MiB could not hold two copies of 10 MiB: every name after the first must reuse it.
    server = server_factory("--store-size", "16MiB")
    data = os.urandom(10 * MiB)
    local = tmp_path / "ten.bin"
    local.write_bytes(data)

    async def main():
        async with await Client.connect(server.address) as client:
            for n in range(20):
                entry = await client.put(local, f"copies/{n:02d}.bin")
                assert entry.size == len(data)
            assert len(await client.ls("copies/")) == 20
            back = tmp_path / "back.bin"
            await client.get("copies/19.bin", back)
            assert back.read_bytes() == data

    run(main())
    used = server.metric("fs_store_used_bytes")
    assert 10 * MiB <= used <= 10 * MiB + 4096
    assert server.metric("fs_store_dedup_saved_bytes") == 19 * 10 * MiB
    assert server.metric("fs_store_files") == 20


def test_full_store_says_no_space_keeps_files_and_reuses_space(server_factory, tmp_path):
    server = server_factory("--store-size", "8MiB")
    first, second = os.urandom(5 * MiB), os.urandom(5 * MiB)
    (tmp_path / "second.bin").write_bytes(second)

    async def fill_then_overflow():
        async with await Client.connect(server.address) as client:
            await client.put_bytes(first, "first.bin")
            with pytest.raises(StoreFull, match="no space for 5242880 bytes"):
                await client.put(tmp_path / "second.bin", "second.bin")
            await client.get("first.bin", tmp_path / "first-back.bin")
            assert [e.path for e in await client.ls()] == ["first.bin"]

    run(fill_then_overflow())
    assert (tmp_path / "first-back.bin").read_bytes() == first

    cli = fsclient("put", str(tmp_path / "second.bin"), "second.bin", server=server)
    assert cli.returncode == 1
    assert cli.stderr.startswith("fsclient: error: no space for 5242880 bytes")
    assert cli.stderr.count("\n") == 1

    async def delete_then_retry():
        async with await Client.connect(server.address) as client:
            await client.rm("first.bin")
            entry = await client.put(tmp_path / "second.bin", "second.bin")
            assert entry.size == 5 * MiB
            await client.get("second.bin", tmp_path / "second-back.bin")

    run(delete_then_retry())
    assert (tmp_path / "second-back.bin").read_bytes() == second
    assert server.metric("fs_store_used_bytes") == 5 * MiB


def test_a_session_the_client_gives_up_frees_its_space(server_factory):
    """A reservation ends with its session: by Cancel, by a file-scoped Error, or by the
    connection closing. Each time the space comes back, and the next 5 MiB upload into an
    8 MiB store fits. A Cancel or an Error frees it while the connection stays open. A closed
    connection parks the upload, to be resumed: its space counts as used (and parked) until
    another upload needs it."""
    server = server_factory("--store-size", "8MiB", "--keep-versions", "0")
    data = os.urandom(5 * MiB)
    for how in ["cancel", "error", "disconnect"]:
        with contextlib.closing(RawClient(server.address)) as raw:
            raw.send(m.FileSyncInit(1, len(data), 0, 0o644, ANY_VERSION, None, f"{how}.bin"))
            assert raw.expect(m.FileSyncInitResponse).status is m.InitStatus.ACCEPTED
            assert server.metric(USED) >= len(data), "the session holds its space"
            raw.send_raw(raw.conn.frame_data(1, memoryview(data)[: 1 * MiB]))
            if how == "cancel":
                raw.send(m.FileSyncCancel(1))
            elif how == "error":
                raw.send(m.Error(ErrorCode.INTERNAL, 1, "disk read failed"))
            else:
                raw.close()
                wait_for(lambda: server.metric(PARKED) == len(data), 10, "the upload parked")
                assert server.metric(USED) == len(data)
            if how != "disconnect":  # the session ended, not the connection
                wait_for(lambda: server.metric(USED) == 0, 10, f"the space back after the {how}")
                raw.send(m.Ping(1, reply=False))
                assert raw.expect(m.Ping).reply

        async def fits():
            async with await Client.connect(server.address) as client:
                await client.put_bytes(data, "real.bin")
                await client.rm("real.bin")

        run(fits())
        assert server.metric(PARKED) == 0 == server.metric(USED)


def test_file_larger_than_the_store_is_too_large(server_factory):
    server = server_factory("--store-size", "4MiB")

    async def main():
        async with await Client.connect(server.address) as client:
            with pytest.raises(StoreFull, match="more than the whole store"):
                await client.put_bytes(os.urandom(5 * MiB), "huge.bin")

    run(main())
