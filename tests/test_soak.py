"""A bounded soak (about 45 s): 20 clients put, delete and rename files while workers and the
persisting process are killed at random (SIGKILL), and the whole server once. At the end the
server's state equals a model of every acknowledged operation (an operation cut by a kill,
never acknowledged, may have happened or not)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from dataclasses import dataclass, field

import xxhash

from common.errors import FSError
from fsclient import Client
from tests.serverproc import ServerProcess, start_server

CLIENTS = 20
SECONDS = 45.0
PATHS_EACH = 6


@dataclass
class Model:
    """Path -> the digest its last acknowledged operation left (None: deleted), and the paths
    whose last operation was cut short (either outcome is right)."""

    files: dict[str, bytes | None] = field(default_factory=dict)
    maybe: dict[str, set[bytes | None]] = field(default_factory=dict)

    def acked(self, path: str, digest: bytes | None) -> None:
        self.files[path] = digest
        self.maybe.pop(path, None)

    def cut(self, path: str, digest: bytes | None) -> None:
        self.maybe.setdefault(path, {self.files.get(path)}).add(digest)


@dataclass
class Soak:
    server: ServerProcess
    args: tuple[str, ...]
    model: Model = field(default_factory=Model)
    rng: random.Random = field(default_factory=lambda: random.Random(17))
    done: bool = False
    kills: list[str] = field(default_factory=list)
    ops: int = 0

    async def user(self, n: int) -> None:
        rng = random.Random(n)
        paths = [f"c{n}/f{k}.bin" for k in range(PATHS_EACH)]
        client: Client | None = None
        while not self.done:
            try:
                if client is None:
                    client = await Client.connect(self.server.address)
                await self.one_op(client, rng, paths)
                self.ops += 1
            except (FSError, OSError):
                if client is not None:
                    await client.close()
                client = None
                await asyncio.sleep(0.2)
        if client is not None:
            await client.close()

    async def one_op(self, client: Client, rng: random.Random, paths: list[str]) -> None:
        path = rng.choice(paths)
        have = self.model.files.get(path)
        kind = rng.choice(["put", "put", "rm", "rename"]) if have else "put"
        if kind == "put":
            data = rng.randbytes(rng.randint(0, 200_000))
            digest = xxhash.xxh3_128_digest(data)
            await self.attempt(path, digest, client.put_bytes(data, path))
        elif kind == "rm":
            await self.attempt(path, None, client.rm(path))
        else:  # rename: the content under a new name (the server links it), the old one goes
            dest = rng.choice([p for p in paths if p != path])
            data = await self.read(client, path)
            await self.attempt(dest, xxhash.xxh3_128_digest(data), client.put_bytes(data, dest))
            await self.attempt(path, None, client.rm(path))

    async def attempt(self, path: str, digest: bytes | None, op) -> None:
        try:
            await op
        except (FSError, OSError):
            self.model.cut(path, digest)
            raise
        self.model.acked(path, digest)

    @staticmethod
    async def read(client: Client, path: str) -> bytes:
        target = f"/tmp/fs-soak-{os.getpid()}-{path.replace('/', '-')}"
        try:
            await client.get(path, target)
            with open(target, "rb") as f:
                return f.read()
        finally:
            if os.path.exists(target):
                os.unlink(target)

    async def killer(self) -> None:
        started = time.monotonic()
        whole_at = SECONDS / 2
        whole_done = False
        loop = asyncio.get_running_loop()
        while time.monotonic() - started < SECONDS:
            await asyncio.sleep(self.rng.uniform(3, 6))
            if not whole_done and time.monotonic() - started > whole_at:
                whole_done = True
                port = str(self.server.port)
                os.killpg(self.server.pid, signal.SIGKILL)
                await loop.run_in_executor(None, self.server.proc.wait)
                # started on this thread (the loop pauses meanwhile): the server's
                # PR_SET_PDEATHSIG is tied to the thread that starts it
                self.server = start_server(*self.args, "--port", port)
                self.kills.append("server")
                continue
            victim = self.rng.choice(["worker-0", "worker-1", "persister-0"])
            await loop.run_in_executor(None, self.server.kill_child, victim)
            self.kills.append(victim)
        self.done = True


def server_files(server: ServerProcess) -> dict[str, bytes]:
    async def ls() -> dict[str, bytes]:
        async with await Client.connect(server.address) as client:
            return {e.path: e.digest for e in await client.ls()}

    return asyncio.run(ls())


def test_a_soak_with_kills_ends_with_every_acknowledged_operation(tmp_path):
    args = ("--data-dir", str(tmp_path / "data"), "--workers", "2", "--store-size", "256MiB")
    soak = Soak(start_server(*args), args)
    try:

        async def run() -> None:
            await asyncio.gather(soak.killer(), *(soak.user(n) for n in range(CLIENTS)))

        asyncio.run(run())
        assert "server" in soak.kills and len(soak.kills) >= 5, soak.kills
        assert soak.ops > 200, soak.ops
        found = server_files(soak.server)
        model = soak.model
        for path in set(model.files) | set(found):
            got = found.get(path)
            if path in model.maybe:
                assert got in model.maybe[path], f"{path}: {got} not one of {model.maybe[path]}"
            else:
                assert got == model.files.get(path), f"{path}: the server lost an acknowledged op"
    finally:
        soak.server.stop()
        soak.server.kill_group()
