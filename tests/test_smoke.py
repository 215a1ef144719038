"""The shortest path through a real server: it starts, answers /healthz, and round-trips."""

from fsclient import Client
from tests.conftest import run


def test_server_starts_and_roundtrips(server):
    status, body = server.http_get("/healthz")
    assert (status, body) == (200, "ok\n")

    async def main():
        async with await Client.connect(server.address) as client:
            entry = await client.put_bytes(b"hello", "a/b.txt")
            assert entry.size == 5
            assert [e.path for e in await client.ls()] == ["a/b.txt"]

    run(main())
