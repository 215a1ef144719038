from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.serverproc import ServerProcess, start_server


@pytest.fixture
def server_factory() -> Iterator[Callable[..., ServerProcess]]:
    """Start servers with custom flags; each is stopped and checked for leftovers after."""
    started: list[ServerProcess] = []

    def make(*args: str, **kwargs: Any) -> ServerProcess:
        server = start_server(*args, **kwargs)
        started.append(server)
        return server

    yield make
    for server in started:
        try:
            server.stop()
        finally:
            server.kill_group()
        assert server.shm_segments() == [], "server left shared memory behind"


@pytest.fixture
def server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    """A server with 2 workers, 1 hasher and a 64 MiB store."""
    return server_factory("--workers", "2", "--hash-workers", "1", "--store-size", "64MiB")


def run(coro: Any) -> Any:
    """Run a coroutine to completion on a fresh event loop (the tests are synchronous)."""
    return asyncio.run(coro)
