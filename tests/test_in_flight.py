"""A client keeps within the in-flight limit the server announces in its handshake
(docs/PROTOCOL.md 3.3 type 11, 5.5, 5.7): transfers of many files, and many calls sharing one
connection, succeed against a server whose --max-in-flight is below the client's windows."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from fsclient import Client
from tests.conftest import run
from tests.serverproc import ROOT

FILES = 300
SESSION_FILE = 100 * 1024
"""Over the small-file batch limit (64 KiB): each such file takes a file session."""


def test_put_many_fits_a_limit_below_its_window(server_factory, tmp_path):
    server = server_factory("--max-in-flight", "100", "--store-size", "128MiB")
    pairs = []
    for n in range(FILES):
        big, small = tmp_path / f"{n:03d}.bin", tmp_path / f"{n:03d}.txt"
        big.write_bytes(os.urandom(SESSION_FILE))
        small.write_bytes(os.urandom(1024))
        pairs += [(big, big.name), (small, small.name)]

    async def main() -> None:
        async with await Client.connect(server.address) as client:
            assert client.max_in_flight == 100
            results = await client.put_many(pairs)  # a window of 256 sessions by default
            assert [r.path for r in results] == [remote for _, remote in pairs]
            assert len(await client.ls()) == 2 * FILES

    run(main())


def test_sync_once_of_many_files_fits_a_limit_below_its_window(server_factory, tmp_path):
    """The command line of the issue: ``fsclient sync --once`` of 300 files of 100 KiB against
    --max-in-flight 100 used to end with LIMIT_EXCEEDED; now the client waits for its slots."""
    server = server_factory("--max-in-flight", "100", "--store-size", "128MiB")
    folder = tmp_path / "f"
    folder.mkdir()
    for n in range(FILES):
        (folder / f"{n:03d}.bin").write_bytes(os.urandom(SESSION_FILE))
    result = subprocess.run(
        [sys.executable, "-m", "fsclient", "sync", str(folder), "--once", "--server",
         server.address], cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "error" not in result.stderr.lower(), result.stderr

    async def count() -> int:
        async with await Client.connect(server.address) as client:
            return len(await client.ls())

    assert run(count()) == FILES


def test_calls_sharing_a_connection_wait_for_a_free_slot(server_factory, tmp_path):
    """With one session and one request allowed, uploads (sessions and batches), downloads,
    listings and stats all started at once on one connection each wait for their turn."""
    server = server_factory("--workers", "1", "--max-in-flight", "1", "--store-size", "64MiB")
    pairs = []
    for n in range(20):
        path = tmp_path / f"in{n}"
        path.write_bytes(os.urandom(SESSION_FILE if n % 2 else 100))
        pairs.append((path, f"f{n}"))

    async def main() -> None:
        async with await Client.connect(server.address) as client:
            assert client.max_in_flight == 1
            await client.put_bytes(b"seed", "seed")
            calls = [client.put_many(pairs), client.put_many(pairs[:5], window=3)]
            calls += [client.get("seed", tmp_path / f"out{n}") for n in range(5)]
            calls += [client.stat("seed") for _ in range(5)] + [client.ls() for _ in range(5)]
            calls += [client.put_bytes(b"x" * n, f"b{n}") for n in range(5)]
            await asyncio.wait_for(asyncio.gather(*calls), 60)
            assert len(await client.ls()) == 1 + len(pairs) + 5

    run(main())
    assert all((tmp_path / f"out{n}").read_bytes() == b"seed" for n in range(5))
