"""Helpers over a running test server: stop one a test started itself, and list a share."""

from __future__ import annotations

from fsclient import Client
from tests.conftest import run
from tests.serverproc import ServerProcess


def stop_cleanly(server: ServerProcess) -> None:
    """Stop a server started outside ``server_factory`` the way it stops its own: SIGTERM,
    the process group killed whatever happens, and no shared memory left behind."""
    try:
        server.stop()
    finally:
        server.kill_group()
    assert server.shm_segments() == [], "server left shared memory behind"


def listing(server: ServerProcess, share: str = "default") -> list[str]:
    """The paths of a share, sorted."""

    async def main() -> list[str]:
        async with await Client.connect(server.address, share) as client:
            return sorted(e.path for e in await client.ls())

    return run(main())
