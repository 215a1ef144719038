"""Acceptance: 8 clients upload 200 files each at once through 2 workers; everything arrives
intact, and connections were served by more than one worker."""

from __future__ import annotations

import asyncio
import hashlib

import xxhash

from fsclient import Client
from tests.conftest import run

CLIENTS = 8
FILES = 200


def content(client: int, index: int) -> bytes:
    """Distinct, reproducible content of 1 to 9 KiB per file."""
    seed = hashlib.sha256(f"{client}/{index}".encode()).digest()
    size = 1024 + (index * 37 % 8192)
    return (seed * (size // len(seed) + 1))[:size]


def test_eight_clients_two_hundred_files_each(server_factory, tmp_path):
    server = server_factory("--workers", "2", "--hash-workers", "2", "--store-size", "64MiB")

    async def one_client(number: int) -> int:
        folder = tmp_path / f"c{number}"
        folder.mkdir()
        pairs = []
        for index in range(FILES):
            local = folder / f"{index}.bin"
            local.write_bytes(content(number, index))
            pairs.append((local, f"client{number}/dir{index % 7}/{index}.bin"))
        async with await Client.connect(server.address, client_id=f"c{number}") as client:
            results = await client.put_many(pairs, window=64)
            failures = [r for r in results if isinstance(r, Exception)]
            assert not failures, failures[:3]
            return client.worker_id

    async def main() -> list[int]:
        return list(await asyncio.gather(*(one_client(n) for n in range(CLIENTS))))

    workers = run(main())
    assert len(set(workers)) >= 2, f"all connections went to worker {workers[0]}"

    async def verify() -> None:
        async with await Client.connect(server.address) as client:
            listing = {entry.path: entry for entry in await client.ls()}
            assert len(listing) == CLIENTS * FILES
            for number in range(CLIENTS):
                for index in range(FILES):
                    entry = listing[f"client{number}/dir{index % 7}/{index}.bin"]
                    data = content(number, index)
                    assert (entry.size, entry.digest) == (len(data), xxhash.xxh3_128_digest(data))
            # Download a slice of them back, concurrently on one connection.
            sample = [(n, i) for n in range(CLIENTS) for i in range(0, FILES, 25)]
            targets = [tmp_path / f"back-{n}-{i}" for n, i in sample]
            await asyncio.gather(*(
                client.get(f"client{n}/dir{i % 7}/{i}.bin", target)
                for (n, i), target in zip(sample, targets, strict=True)
            ))  # fmt: skip
            for (n, i), target in zip(sample, targets, strict=True):
                assert target.read_bytes() == content(n, i)

    run(verify())
