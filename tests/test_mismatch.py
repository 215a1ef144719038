"""Acceptance: a wrong digest gets a mismatch, and the path keeps its previous version until a
verified new one replaces it."""

from __future__ import annotations

import os

import xxhash

from common import messages as m
from common.errors import ErrorCode
from common.limits import ANY_VERSION
from fsclient import Client
from tests.conftest import run
from tests.rawclient import RawClient


def upload_with_digest(raw: RawClient, fid: int, path: str, data: bytes, claimed: bytes) -> None:
    raw.send(m.FileSyncInit(fid, len(data), 0, 0o644, ANY_VERSION, None, path))
    reply = raw.expect(m.FileSyncInitResponse)
    assert reply.status is m.InitStatus.ACCEPTED
    send_data(raw, fid, data)
    raw.send(m.FileSyncCheckHash(fid, claimed))


def send_data(raw: RawClient, fid: int, data: bytes) -> None:
    raw.send_raw(raw.conn.frame_data(fid, memoryview(data)))


def read_back(server, path: str) -> tuple[bytes, m.FileEntry]:
    async def main():
        async with await Client.connect(server.address) as client:
            entry = await client.stat(path)
            target = f"/tmp/fs-mismatch-{os.getpid()}"
            try:
                await client.get(path, target)
                with open(target, "rb") as f:
                    return f.read(), entry
            finally:
                os.unlink(target)

    return run(main())


def test_wrong_digest_is_a_mismatch_and_old_version_stays(server):
    old = os.urandom(10_000)
    run(put(server, "doc.txt", old))
    new = os.urandom(20_000)

    raw = RawClient(server.address)
    upload_with_digest(raw, 1, "doc.txt", new, claimed=bytes(16))
    verdict = raw.expect(m.FileSyncCheckHashResponse)
    assert verdict.status is m.HashStatus.MISMATCH
    assert verdict.digest == xxhash.xxh3_128_digest(new)
    retry = raw.expect(m.FileSyncRetryUpload)
    assert retry.attempt == 1

    data, entry = read_back(server, "doc.txt")
    assert data == old
    assert entry.digest == xxhash.xxh3_128_digest(old)

    # The retry with the right digest replaces the old version.
    send_data(raw, 1, new)
    raw.send(m.FileSyncCheckHash(1, xxhash.xxh3_128_digest(new)))
    assert raw.expect(m.FileSyncCheckHashResponse).status is m.HashStatus.OK
    finish = raw.expect(m.FileSyncFinish)
    assert finish.version > entry.version
    raw.close()
    assert read_back(server, "doc.txt")[0] == new


def test_server_gives_up_after_repeated_mismatches(server):
    old = b"the good version\n"
    run(put(server, "keep.txt", old))
    raw = RawClient(server.address)
    data = os.urandom(5000)
    upload_with_digest(raw, 9, "keep.txt", data, claimed=b"\x01" * 16)
    for attempt in range(1, 4):
        assert raw.expect(m.FileSyncCheckHashResponse).status is m.HashStatus.MISMATCH
        assert raw.expect(m.FileSyncRetryUpload).attempt == attempt
        send_data(raw, 9, data)
        raw.send(m.FileSyncCheckHash(9, b"\x01" * 16))
    assert raw.expect(m.FileSyncCheckHashResponse).status is m.HashStatus.MISMATCH
    error = raw.expect(m.Error)
    assert (error.code, error.file_id) == (ErrorCode.HASH_MISMATCH, 9)
    # The connection is still usable, and the old version is untouched.
    raw.send(m.Ping(5, reply=False))
    assert raw.expect(m.Ping) == m.Ping(5, reply=True)
    raw.close()
    assert read_back(server, "keep.txt")[0] == old


async def put(server, path: str, data: bytes) -> m.FileEntry:
    async with await Client.connect(server.address) as client:
        return await client.put_bytes(data, path)


def test_big_upload_hashed_while_streaming_detects_a_mismatch(server_factory):
    """Uploads of 8 MiB and more are digested as they arrive; a wrong claim is still caught,
    and the retry is digested afresh."""
    server = server_factory("--store-size", "64MiB")
    data = os.urandom(20 * 1024 * 1024)
    raw = RawClient(server.address)
    upload_with_digest(raw, 1, "big.bin", data, claimed=bytes(16))
    verdict = raw.expect(m.FileSyncCheckHashResponse, timeout=30)
    assert verdict.status is m.HashStatus.MISMATCH
    assert verdict.digest == xxhash.xxh3_128_digest(data)
    raw.expect(m.FileSyncRetryUpload)
    send_data(raw, 1, data)
    raw.send(m.FileSyncCheckHash(1, xxhash.xxh3_128_digest(data)))
    assert raw.expect(m.FileSyncCheckHashResponse, timeout=30).status is m.HashStatus.OK
    raw.expect(m.FileSyncFinish)
    raw.close()
    assert read_back(server, "big.bin")[0] == data


def test_hasher_killed_during_a_streamed_upload(server_factory):
    """The hasher digesting an upload dies half-way: the worker falls back to a one-shot job
    on the replacement hasher, and the upload still verifies."""
    server = server_factory("--store-size", "64MiB", "--hash-workers", "1")
    data = os.urandom(32 * 1024 * 1024)
    half = len(data) // 2
    raw = RawClient(server.address)
    raw.send(m.FileSyncInit(1, len(data), 0, 0o644, ANY_VERSION, None, "big.bin"))
    assert raw.expect(m.FileSyncInitResponse).status is m.InitStatus.ACCEPTED
    raw.send_raw(raw.conn.frame_data(1, memoryview(data)[:half]))
    raw.send(m.Ping(1, reply=False))  # round trip: the first half has been taken in
    raw.expect(m.Ping)
    server.kill_child("hasher-0")
    raw.send_raw(raw.conn.frame_data(1, memoryview(data)[half:]))
    raw.send(m.FileSyncCheckHash(1, xxhash.xxh3_128_digest(data)))
    assert raw.expect(m.FileSyncCheckHashResponse, timeout=30).status is m.HashStatus.OK
    raw.expect(m.FileSyncFinish)
    raw.close()
    assert read_back(server, "big.bin")[0] == data
