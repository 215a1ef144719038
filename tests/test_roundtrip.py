"""Acceptance: round trips are byte-identical, and ``ls`` shows the right sizes and digests.

Real server processes, real sockets; both the seed's 4096-byte packets and the largest size the
handshake allows; through the Python API and through the ``fsclient`` command line.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest
import xxhash

from fsclient import Client
from tests.cli import cli_env, fsclient, fsclient_command
from tests.conftest import run
from tests.serverproc import ROOT

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


def test_cli_put_ls_get_rm(server, tmp_path):
    local = tmp_path / "notes.txt"
    local.write_bytes(b"hello from the command line\n" * 100)
    remote = "docs/ünïcødé notes.txt"

    put = fsclient("put", str(local), remote, server=server)
    assert put.returncode == 0, put.stderr
    ls = fsclient("ls", server=server)
    assert ls.returncode == 0, ls.stderr
    path, size, version, digest, mtime = ls.stdout.rstrip("\n").rsplit("\t", 4)
    assert path == remote
    assert int(size) == local.stat().st_size
    assert int(version) >= 1
    assert digest == xxhash.xxh3_128_hexdigest(local.read_bytes())
    assert mtime.startswith("20")

    back = tmp_path / "back.txt"
    get = fsclient("--max-packet", "4096", "get", remote, str(back), server=server)
    assert get.returncode == 0, get.stderr
    assert back.read_bytes() == local.read_bytes()
    assert not [p for p in tmp_path.iterdir() if ".fs-tmp-" in p.name]

    as_json = fsclient("ls", "docs/", "--json", server=server)
    assert '"size": 2800' in as_json.stdout
    rm = fsclient("rm", remote, server=server)
    assert rm.returncode == 0, rm.stderr
    assert fsclient("ls", server=server).stdout == ""
    missing = fsclient("get", remote, str(tmp_path / "x"), server=server)
    assert missing.returncode == 1
    assert missing.stderr.strip() == f"fsclient: error: not found: {remote}"
    assert not (tmp_path / "x").exists()


def peak_rss_mib(args: list[str]) -> tuple[int, float]:
    """Run the CLI; return its exit code and its peak resident memory in MiB.

    VmHWM is read while the process runs (it only grows). ``ru_maxrss`` from wait4 would not
    do: it includes the RSS of this test process, which the child was forked from.
    """
    proc = subprocess.Popen(fsclient_command(*args), cwd=ROOT, env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    peak_kib = 0
    status = f"/proc/{proc.pid}/status"
    while proc.poll() is None:
        try:
            with open(status) as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peak_kib = max(peak_kib, int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError):
            break
        time.sleep(0.005)  # sampling, not synchronisation: poll() ends the loop
    return proc.wait(60), peak_kib / 1024


@pytest.mark.parametrize("max_packet", ["4096", "1048576"])
def test_large_files_stream_in_bounded_memory(big_server, tmp_path, max_packet):
    size = 200 * 1024 * 1024
    local = tmp_path / "large.bin"
    with open(local, "wb") as f:
        for _ in range(size // (8 << 20)):
            f.write(os.urandom(8 << 20))
    common = ["--server", big_server.address, "--max-packet", max_packet]
    code, put_peak = peak_rss_mib(["put", str(local), "large.bin", *common])
    assert code == 0
    code, get_peak = peak_rss_mib(["get", "large.bin", str(tmp_path / "back.bin"), *common])
    assert code == 0
    assert xxhash.xxh3_128_digest((tmp_path / "back.bin").read_bytes()) == (
        xxhash.xxh3_128_digest(local.read_bytes())
    )
    # The whole file is 200 MiB; the client's footprint must not grow with it.
    assert put_peak < 100, f"upload peaked at {put_peak:.0f} MiB"
    assert get_peak < 100, f"download peaked at {get_peak:.0f} MiB"
