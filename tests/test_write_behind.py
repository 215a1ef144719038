"""A big download writes its bytes back while it arrives (``WriteBehind``), so the fsync before
its rename finds little left: the disk works during the transfer, not after it."""

from __future__ import annotations

import os

from fsclient import Client, durable
from tests.conftest import run


def test_a_big_download_is_flushed_while_it_arrives(server_factory, tmp_path, monkeypatch):
    server = server_factory("--store-size", "128MiB")
    data = os.urandom(3 * durable.WRITE_BEHIND + 12345)
    flushed: list[int] = []
    datasync = os.fdatasync

    def counting(fd: int) -> None:
        flushed.append(os.fstat(fd).st_size)  # how much had arrived by then
        datasync(fd)

    monkeypatch.setattr(durable.os, "fdatasync", counting)

    async def roundtrip() -> None:
        async with await Client.connect(server.address) as client:
            await client.put_bytes(data, "big.bin")
            await client.get("big.bin", tmp_path / "big.bin")

    run(roundtrip())
    assert (tmp_path / "big.bin").read_bytes() == data
    assert flushed and min(flushed) < len(data), flushed  # before the whole file was there
