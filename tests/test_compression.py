"""zstd payloads against real servers (issue 14; docs/PROTOCOL.md 5.14): round trips are byte
for byte whatever either peer's ``--compress``, a peer without zstd still works, data that
does not shrink goes as it is, and a corrupt compressed payload ends its connection with a
protocol error while the server stays up and stores nothing."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest
import zstandard

from common import messages as m
from common.codec import DATA_HEADER, encode
from common.digest import digest_of
from common.errors import ErrorCode
from common.limits import ANY_VERSION, MAGIC, PROTOCOL_VERSION
from fsclient import Client
from fsclient.access import Access
from tests.cli import cli_env, fsclient, fsserver_tool
from tests.conftest import run
from tests.rawclient import RawClient
from tests.served import listing
from tests.serverproc import ServerProcess, wait_for

STORE = ("--workers", "1", "--hash-workers", "1", "--store-size", "128MiB")
LOG = b"".join(b"2026-12-07 09:%02d:%02d INFO worker[%d] GET /api/items/%d 200 %d ms\n"
               % (i // 60 % 60, i % 60, i % 4, i * 7919 % 100_000, i % 250)
               for i in range(20_000))  # fmt: skip
"""About 1.2 MB of log lines: zstd makes them several times smaller."""
CLIENT_MODES = ("off", "auto", "3")


def dataset(tag: str) -> dict[str, bytes]:
    """Text, random data, an empty file, files of exactly one packet's payload (seed size)
    and one zstd block, and small files that travel in batches; *tag* keeps each round's
    content its own (no upload is skipped as content the server has)."""
    text = LOG + tag.encode()
    files = {
        "log.txt": text,
        "random.bin": os.urandom(300_000),
        "empty": b"",
        "one-packet.txt": text[: 4096 - 9],
        "one-block.txt": text[: 128 * 1024],
    }
    for i in range(40):
        files[f"small/{i}.txt"] = text[i * 1000 : i * 1000 + 2000]
    return files


@pytest.fixture(scope="module")
def servers() -> dict[str, ServerProcess]:
    from tests.serverproc import start_server

    started = {mode: start_server(*STORE, "--compress", mode) for mode in ("on", "off")}
    yield started
    for server in started.values():
        try:
            server.stop()
        finally:
            server.kill_group()
        assert server.shm_segments() == []


async def put_all(client: Client, files: dict[str, bytes], tmp: Path) -> None:
    for name, data in files.items():
        local = tmp / name
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)
    small = [(tmp / n, n) for n in files if n.startswith("small/")]
    results = await client.put_many(small)
    assert all(isinstance(r, m.FileEntry) for r in results), results
    for name in files:
        if not name.startswith("small/"):
            await client.put(tmp / name, name)


async def get_all(client: Client, files: dict[str, bytes], tmp: Path) -> dict[str, bytes]:
    got = {}
    tmp.mkdir(parents=True, exist_ok=True)
    for name in files:
        dest = tmp / name.replace("/", "_")
        await client.get(name, dest)
        got[name] = dest.read_bytes()
    return got


@pytest.mark.parametrize("server_mode", ["on", "off"])
def test_round_trips_are_byte_identical_for_every_pair_of_settings(servers, server_mode,
                                                                   tmp_path):  # fmt: skip
    """Upload with one client setting, download with another: every pair, both servers; the
    seed's 4096-byte packets too."""
    server = servers[server_mode]
    pairs = [(up, down, None) for up, down in itertools.product(CLIENT_MODES, CLIENT_MODES)]
    pairs.append(("3", "3", 4096))

    async def main() -> None:
        for up, down, packet in pairs:
            share = f"s{server_mode}-{up}-{down}-{packet or 0}"
            files = dataset(share)
            async with await Client.connect(server.address, share, max_packet=packet,
                                            access=Access(compress=up)) as client:  # fmt: skip
                assert client.proto.conn.coding.agreed is (server_mode == "on" and up != "off")
                await put_all(client, files, tmp_path / share / "up")
            async with await Client.connect(server.address, share, max_packet=packet,
                                            access=Access(compress=down)) as client:  # fmt: skip
                got = await get_all(client, files, tmp_path / share / "down")
            assert got == files, (up, down, packet)

    run(main())


def wire_and_payload(server: ServerProcess) -> tuple[float, float]:
    return (server.metric('fs_payload_wire_bytes_total{direction="received"}', 0.0),
            server.metric('fs_payload_bytes_total{direction="received"}', 0.0))  # fmt: skip


def test_data_that_does_not_shrink_goes_as_it_is(servers):
    """With --compress 3 a log file goes compressed and random data does not: the flag of
    each FileSyncInit says so, and the server's wire-byte counter shows it."""
    server = servers["on"]
    text, noise = LOG + b"shrinks", os.urandom(1 << 20)
    inits: list[m.FileSyncInit] = []

    async def upload(data: bytes, path: str) -> None:
        async with await Client.connect(server.address, "flags",
                                        access=Access(compress="3")) as client:  # fmt: skip
            send = client.proto.send

            def spy(msg: m.Message) -> None:
                if isinstance(msg, m.FileSyncInit):
                    inits.append(msg)
                send(msg)

            client.proto.send = spy  # type: ignore[method-assign]
            await client.put_bytes(data, path)

    for data, path in ((text, "a.log"), (noise, "b.bin")):
        before = wire_and_payload(server)
        run(upload(data, path))
        wait_for(lambda: wire_and_payload(server)[1] >= before[1] + len(data), 10,  # noqa: B023
                 "the payload counter")  # fmt: skip
        wire, payload = (a - b for a, b in zip(wire_and_payload(server), before, strict=True))
        if path == "a.log":
            assert inits[-1].flags == m.PayloadFlags.ZSTD
            assert wire < 0.3 * payload
        else:
            assert inits[-1].flags == 0
            assert wire >= payload
    assert server.metric_total("fs_compression_cpu_seconds_total") > 0


@pytest.fixture
def no_zstd(tmp_path) -> dict[str, str]:
    """An environment whose Python cannot import zstandard (a peer without it)."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "zstandard.py").write_text("raise ImportError('zstandard left out for this test')\n")
    return {"PYTHONPATH": str(shim)}


def test_a_server_without_zstd_serves_a_client_that_asks_for_it(server_factory, no_zstd,
                                                                tmp_path):  # fmt: skip
    server = server_factory(*STORE, env=no_zstd)
    files = dataset("plain")

    async def main() -> dict[str, bytes]:
        async with await Client.connect(server.address, "p",
                                        access=Access(compress="19")) as client:  # fmt: skip
            assert not client.proto.conn.coding.agreed
            await put_all(client, files, tmp_path / "up")
            return await get_all(client, files, tmp_path / "down")

    assert run(main()) == files


def test_a_client_without_zstd_works_with_a_server_that_has_it(servers, no_zstd, tmp_path):
    server = servers["on"]
    src = tmp_path / "src"
    src.mkdir()
    (src / "log.txt").write_bytes(LOG + b"no zstd here")
    env = {**no_zstd, "FS_COMPRESS": "3"}
    put = fsclient("put", str(src / "log.txt"), "nz/log.txt", server=server, env=env)
    assert put.returncode == 0, put.stderr
    get = fsclient("get", "nz/log.txt", str(tmp_path / "back.txt"), server=server, env=env)
    assert get.returncode == 0, get.stderr
    assert (tmp_path / "back.txt").read_bytes() == LOG + b"no zstd here"


def test_the_cli_takes_a_level_and_syncs_compressed(servers, tmp_path):
    server = servers["on"]
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "app.log").write_bytes(LOG + b"sync")
    (folder / "photo.jpg").write_bytes(os.urandom(50_000))
    done = fsclient("--compress", "7", "sync", "--once", str(folder), "--share", "cli",
                    "--create-share", server=server)  # fmt: skip
    assert done.returncode == 0, done.stderr
    back = tmp_path / "back"
    back.mkdir()
    done = fsclient("sync", "--once", str(back), "--share", "cli", server=server,
                    env={"FS_COMPRESS": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr
    for name in ("app.log", "photo.jpg"):
        assert (back / name).read_bytes() == (folder / name).read_bytes()


@pytest.mark.parametrize(("given", "env"), [(["--compress", "fast"], {}),
                                            (["--compress", "0"], {}),
                                            ([], {"FS_COMPRESS": "20"})])  # fmt: skip
def test_a_bad_compress_setting_is_a_clear_error(given, env):
    done = fsclient(*given, "ls", server="127.0.0.1:9", env=cli_env(env))
    assert done.returncode == (1 if env else 2)  # (2: argparse's usage error)
    assert "auto, off or a zstd level from 1 to 19" in done.stderr
    assert ("FS_COMPRESS '20'" if env else "--compress") in done.stderr
    assert "Traceback" not in done.stderr


def raw_compressed_upload(server: ServerProcess, size: int, path: str) -> RawClient:
    """A raw connection that agreed on zstd and opened a compressed upload of *size* bytes
    to *path* (from byte 0: nothing of it is parked to resume)."""
    raw = RawClient(server.address, max_packet=1 << 20, handshake=False)
    raw.send(m.VersionHandshake(MAGIC, PROTOCOL_VERSION, 1 << 20, "raw", "bad", b"",
                                m.HandshakeFlags.ZSTD))  # fmt: skip
    hello = raw.expect(m.VersionHandshakeResponse)
    assert hello.flags == m.HandshakeFlags.ZSTD
    raw.send(m.FileSyncInit(1, size, 0, 0o644, ANY_VERSION, None, path, m.PayloadFlags.ZSTD))
    answer = raw.expect(m.FileSyncInitResponse)
    assert (answer.status, answer.offset) == (m.InitStatus.ACCEPTED, 0)
    return raw


def data_packet(payload: bytes) -> bytes:
    return DATA_HEADER.pack(9 + len(payload), m.PacketType.FILE_SYNC_DATA, 1) + payload


@pytest.mark.parametrize("case", ["flipped bits", "truncated frame", "zip bomb"])
def test_a_corrupt_compressed_payload_is_refused_and_nothing_is_stored(servers, case):
    server = servers["on"]
    size = len(LOG)
    frame = zstandard.ZstdCompressor(write_checksum=True).compress(LOG)
    if case == "flipped bits":
        frame = frame[:100] + bytes([frame[100] ^ 0x40]) + frame[101:]
        wire, code = data_packet(frame), ErrorCode.MALFORMED
    elif case == "truncated frame":
        wire = data_packet(frame[: len(frame) // 2]) + encode(
            m.FileSyncCheckHash(1, digest_of(LOG))
        )
        code = ErrorCode.UNEXPECTED_PACKET
    else:
        wire = data_packet(zstandard.ZstdCompressor(level=19).compress(bytes(64 << 20)))
        code = ErrorCode.LIMIT_EXCEEDED
    path = f"victim-{case.replace(' ', '-')}.txt"
    raw = raw_compressed_upload(server, size, path)
    try:
        raw.send_raw(wire)
        error = raw.error_or_close()
    finally:
        raw.close()
    assert error is not None and error.code is code
    assert path not in listing(server, "bad")
    assert server.proc.poll() is None


@pytest.mark.parametrize(("given", "env"), [(["--compress", "maybe"], {}),
                                            ([], {"FS_SERVER_COMPRESS": "yes"})])  # fmt: skip
def test_the_server_refuses_a_compress_setting_it_does_not_know(given, env):
    done = fsserver_tool("--port", "0", "--metrics-port", "0", *given, env=env)
    assert done.returncode == 2
    assert "--compress must be on or off" in done.stderr


def test_put_says_what_compression_sent(servers, tmp_path):
    """``put`` of a log with a level ends saying how many bytes went on the wire; with
    compression off, or for data that does not shrink, it says nothing of it."""
    server = servers["on"]
    (tmp_path / "app.log").write_bytes(LOG + b"said")
    (tmp_path / "noise.bin").write_bytes(os.urandom(200_000))
    tree = tmp_path / "logs"
    tree.mkdir()
    for i in range(30):
        (tree / f"{i}.log").write_bytes(LOG[i * 3000 : i * 3000 + 20_000])

    def put(*args: str, mode: str) -> str:
        done = fsclient("--compress", mode, "put", *args, server=server)
        assert done.returncode == 0, done.stderr
        return done.stdout

    said = put(str(tmp_path / "app.log"), "said/app.log", mode="3")
    assert "on the wire (zstd, " in said and said.startswith("uploaded said/app.log (")
    assert "on the wire" not in put(str(tmp_path / "app.log"), "said/off.log", mode="off")
    assert "on the wire" not in put(str(tmp_path / "noise.bin"), "said/noise.bin", mode="3")
    summary = put("-r", str(tree), "said/logs", mode="3")
    assert summary.startswith("uploaded 30 files") and "on the wire (zstd, " in summary
