"""Acceptance: round trips are byte-identical, and ``ls`` shows the right sizes and digests.

Real server processes, real sockets; both the seed's 4096-byte packets and the largest size the
handshake allows; through the Python API and through the ``fsclient`` command line.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import xxhash

from fsclient import Client
from tests.conftest import run

SIZES = [0, 1, 4095, 4096, 4097, 50 * 1024 * 1024]
NAMES = {
    0: "empty.bin",
    1: "one.bin",
    4095: "ünïcødé/файл 文件.txt",
    4096: "a/b/c/d/e/nested-4096.bin",
    4097: "a/b/sibling-4097.bin",
    50 * 1024 * 1024: "big/random-50MiB.bin",
}


@pytest.fixture
def big_server(server_factory):
    return server_factory("--workers", "2", "--store-size", "256MiB")


@pytest.mark.parametrize("max_packet", [4096, None], ids=["packets-4096", "negotiated"])
def test_roundtrip_sizes_names_and_listing(big_server, tmp_path, max_packet):
    sources = {}
    for size in SIZES:
        local = tmp_path / f"src-{size}"
        local.write_bytes(os.urandom(size))
        sources[NAMES[size]] = local

    async def main():
        async with await Client.connect(big_server.address, max_packet=max_packet) as client:
            if max_packet:
                assert client.max_packet == 4096
            else:
                assert client.max_packet == 1 << 20
            for remote, local in sources.items():
                entry = await client.put(local, remote)
                assert entry.size == local.stat().st_size
            listing = {e.path: e for e in await client.ls()}
            assert sorted(listing) == sorted(sources)
            for remote, local in sources.items():
                data = local.read_bytes()
                assert listing[remote].size == len(data)
                assert listing[remote].digest == xxhash.xxh3_128_digest(data)
                back = tmp_path / "back" / remote
                back.parent.mkdir(parents=True, exist_ok=True)
                got = await client.get(remote, back)
                assert got.digest == listing[remote].digest
                assert back.read_bytes() == data
                assert back.stat().st_mtime_ns == local.stat().st_mtime_ns

    run(main())


def fsclient(server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fsclient", *args, "--server", server.address],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_cli_put_ls_get_rm(server, tmp_path):
    local = tmp_path / "notes.txt"
    local.write_bytes(b"hello from the command line\n" * 100)
    remote = "docs/ünïcødé notes.txt"

    put = fsclient(server, "put", str(local), remote)
    assert put.returncode == 0, put.stderr
    ls = fsclient(server, "ls")
    assert ls.returncode == 0, ls.stderr
    path, size, version, digest, mtime = ls.stdout.rstrip("\n").rsplit("\t", 4)
    assert path == remote
    assert int(size) == local.stat().st_size
    assert int(version) >= 1
    assert digest == xxhash.xxh3_128_hexdigest(local.read_bytes())
    assert mtime.startswith("20")

    back = tmp_path / "back.txt"
    get = fsclient(server, "--max-packet", "4096", "get", remote, str(back))
    assert get.returncode == 0, get.stderr
    assert back.read_bytes() == local.read_bytes()
    assert not [p for p in tmp_path.iterdir() if ".fs-tmp-" in p.name]

    as_json = fsclient(server, "ls", "docs/", "--json")
    assert '"size": 2800' in as_json.stdout
    rm = fsclient(server, "rm", remote)
    assert rm.returncode == 0, rm.stderr
    assert fsclient(server, "ls").stdout == ""
    missing = fsclient(server, "get", remote, str(tmp_path / "x"))
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"fsclient: error: not found: {remote}"
    assert not (tmp_path / "x").exists()
