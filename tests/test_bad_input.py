"""Acceptance: bad input gets an Error packet or a closed connection, the server keeps serving
everyone else, nothing stored is lost, and the CLI prints a clear error."""

from __future__ import annotations

import asyncio
import os
import struct
import threading

import pytest

from common import messages as m
from common.errors import ErrorCode, InvalidPath
from common.limits import ANY_VERSION
from fsclient import Client
from tests.cli import fsclient
from tests.conftest import run
from tests.rawclient import RawClient
from tests.serverproc import wait_for

HEADER = struct.Struct(">IB")


def header(length: int, ptype: int) -> bytes:
    return HEADER.pack(length, ptype)


FATAL_CASES = {
    "garbage-before-handshake": (False, os.urandom(64) + b"\xff" * 64, None),
    "garbage-after-handshake": (True, b"\xff\xff\xff\xff\x00garbage", ErrorCode.PACKET_TOO_LARGE),
    "packet-over-maximum": (True, header(5000, 1) + bytes(4995), ErrorCode.PACKET_TOO_LARGE),
    "short-length": (True, header(2, 1), ErrorCode.MALFORMED),
    "unknown-type": (True, header(5, 200), ErrorCode.UNKNOWN_TYPE),
    "data-before-init": (True, header(13, 5) + struct.pack(">I", 7) + b"abcd",
                         ErrorCode.UNKNOWN_FILE),
    "seed-data-packet": (True, header(9, 2) + b"abcd", ErrorCode.UNEXPECTED_PACKET),
    "request-before-handshake": (
        False, header(19, 14) + struct.pack(">IH", 1, 8) + b"abc.txt!", ErrorCode.UNEXPECTED_PACKET
    ),
    "truncated-init": (True, header(12, 3) + bytes(7), ErrorCode.MALFORMED),
}  # fmt: skip


class HonestClient:
    """Keeps uploading and verifying in the background while the bad clients do their worst."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.stop = threading.Event()
        self.rounds = 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def loop():
            async with await Client.connect(self.address, client_id="honest") as client:
                while not self.stop.is_set():
                    data = os.urandom(3000 + self.rounds)
                    entry = await client.put_bytes(data, f"honest/{self.rounds % 10}.bin")
                    assert entry.size == len(data)
                    got = await client.stat(f"honest/{self.rounds % 10}.bin")
                    assert got.digest == entry.digest
                    self.rounds += 1

        try:
            asyncio.run(loop())
        except BaseException as exc:
            self.error = exc

    def __enter__(self) -> HonestClient:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)
        assert self.error is None, f"the honest client failed: {self.error!r}"
        assert self.rounds > 0


def test_each_kind_of_bad_input_is_refused_while_others_are_served(server):
    run(put(server, "precious.txt", b"stored before the attack\n"))
    with HonestClient(server.address) as honest:
        for name, (handshake, payload, code) in FATAL_CASES.items():
            raw = RawClient(server.address, handshake=handshake)
            raw.send_raw(payload)
            error = raw.error_or_close()
            raw.close()
            if code is not None:
                assert error is not None, f"{name}: closed without an Error packet"
                assert error.code is code, f"{name}: {error}"
                assert error.file_id == 0xFFFFFFFF
        before = honest.rounds
        wait_for(lambda: honest.rounds > before + 3, 30, "the honest client to keep going")
    assert run(get_bytes(server, "precious.txt")) == b"stored before the attack\n"


@pytest.mark.parametrize("path", ["../escape.txt", "a/../../b", "/etc/passwd", "nul\x00byte",
                                  "ctl\x01char", "a//b", ""])  # fmt: skip
def test_bad_paths_end_only_their_session(server, path):
    raw = RawClient(server.address)
    raw.send(m.FileSyncInit(3, 4, 0, 0o644, ANY_VERSION, None, path))
    error = raw.expect(m.Error)
    assert (error.code, error.file_id) == (ErrorCode.INVALID_PATH, 3)
    raw.send(m.DownloadRequest(4, 0, None, path))
    error = raw.expect(m.Error)
    assert (error.code, error.file_id) == (ErrorCode.INVALID_PATH, 4)
    raw.send(m.StatRequest(5, path))
    assert raw.expect(m.StatResponse).status is m.LookupStatus.INVALID_PATH
    raw.send(m.DeleteRequest(6, ANY_VERSION, path))
    assert raw.expect(m.DeleteResponse).status is m.LookupStatus.INVALID_PATH
    # The same connection goes on working, and nothing was written anywhere.
    raw.send(m.ListRequest(7, 100, "", ""))
    listing = raw.expect(m.ListResponse)
    assert listing.entries == ()
    raw.close()


def test_client_refuses_bad_paths_before_sending(server):
    async def main():
        async with await Client.connect(server.address) as client:
            for path in ["../x", "/abs", "a\x00b"]:
                with pytest.raises(InvalidPath):
                    await client.put_bytes(b"x", path)

    run(main())


@pytest.mark.parametrize(
    ("remote", "expected"),
    [("../x", "path segment '..' not allowed"), ("/etc/x", "absolute path not allowed")],
)
def test_cli_prints_a_clear_one_line_error(server, tmp_path, remote, expected):
    local = tmp_path / "f.txt"
    local.write_text("x")
    result = fsclient("put", str(local), remote, server=server)
    assert result.returncode == 1
    assert result.stderr.startswith("fsclient: error: ")
    assert expected in result.stderr
    assert result.stderr.count("\n") == 1


def test_cli_errors_for_unreachable_server_and_bad_arguments():
    result = fsclient("ls", server="127.0.0.1:1")
    assert result.returncode == 1
    assert result.stderr.startswith("fsclient: error: cannot connect to 127.0.0.1:1")
    result = fsclient("ls", server="127.0.0.1:no-port")
    assert result.returncode == 1
    assert "expected HOST or HOST:PORT" in result.stderr
    result = fsclient("frobnicate")
    assert result.returncode == 2


async def put(server, path: str, data: bytes) -> None:
    async with await Client.connect(server.address) as client:
        await client.put_bytes(data, path)


async def get_bytes(server, path: str) -> bytes:
    async with await Client.connect(server.address) as client:
        target = f"/tmp/fs-bad-input-{os.getpid()}"
        await client.get(path, target)
        try:
            with open(target, "rb") as f:
                return f.read()
        finally:
            os.unlink(target)


def test_a_reused_file_id_gets_its_own_store_answer(server):
    """Init, Error for that file id, Init again with the same id: the first store answer
    arrives for a session that is gone and must not be applied to the second one."""
    raw = RawClient(server.address)
    data = b"second file content"
    # One write, so the server reads all three before the store answers the first.
    raw.send_raw(
        raw.conn.send(m.FileSyncInit(1, 10, 0, 0o644, ANY_VERSION, None, "first.txt"))
        + raw.conn.send(m.Error(ErrorCode.INTERNAL, 1, "changed my mind"))
        + raw.conn.send(m.FileSyncInit(1, len(data), 0, 0o644, ANY_VERSION, None, "second.txt"))
    )
    reply = raw.expect(m.FileSyncInitResponse)
    assert reply.status is m.InitStatus.ACCEPTED
    raw.send_raw(raw.conn.frame_data(1, memoryview(data)))
    import xxhash

    raw.send(m.FileSyncCheckHash(1, xxhash.xxh3_128_digest(data)))
    assert raw.expect(m.FileSyncCheckHashResponse).status is m.HashStatus.OK
    raw.expect(m.FileSyncFinish)
    raw.send(m.ListRequest(2, 10, "", ""))
    assert [e.path for e in raw.expect(m.ListResponse).entries] == ["second.txt"]
    raw.close()


def test_the_longest_path_works_with_seed_packets(server, tmp_path):
    from common.limits import MAX_PATH_BYTES

    path = "/".join(["s" * 199] * 19)
    path += "/" + "t" * (MAX_PATH_BYTES - len(path) - 1)
    assert len(path.encode()) == MAX_PATH_BYTES

    async def main():
        watcher = await Client.connect(server.address, max_packet=4096)
        stream = await watcher.subscribe()  # (a client is not sent its own changes)
        async with await Client.connect(server.address, max_packet=4096) as client:
            await client.put_bytes(b"deep", path)
            assert (await client.stat(path)).size == 4
            assert [e.path for e in await client.ls()] == [path]
            note = await anext(stream)
            assert note.entry.path == path
            await client.get(path, tmp_path / "deep.txt")
            with pytest.raises(InvalidPath, match="longer than 4000 bytes"):
                await client.put_bytes(b"x", path + "u")
        await watcher.close()

    run(main())
    assert (tmp_path / "deep.txt").read_bytes() == b"deep"
