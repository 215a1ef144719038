"""A randomized, seeded run of three live sync folders: creates, edits, atomic saves, renames,
deletes, big files and offline periods, in a random order and at random moments. Whatever
happened, once the users stop, the three folders and the server agree, nothing is pending,
and the last content written to each path survives (under its name or as a conflict copy).

A failure prints the seed and the operations; ``FS_SYNC_SEEDS=7,8`` runs other seeds."""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import xxhash

from fsclient import Client
from fsclient.sync.folders import is_mark
from tests.conftest import run
from tests.serverproc import ServerProcess, wait_for
from tests.syncproc import SyncProcess, digests, status

SEEDS = [int(s) for s in os.environ.get("FS_SYNC_SEEDS", "1,2").split(",")]
OPERATIONS = 45
PATHS = ["a.txt", "b.txt", "c.bin", "d/e.txt", "d/f.txt", "g/h/i.txt"]
CONVERGE_WITHIN = 90.0


@dataclass
class Model:
    """What the users did, in order: the last write to each path must survive."""

    rng: random.Random
    last: dict[str, bytes | None] = field(default_factory=dict)
    """Path -> the content its last operation wrote (None: deleted or moved away)."""
    log: list[str] = field(default_factory=list)
    counter: int = 0

    def content(self, big: bool = False) -> bytes:
        self.counter += 1
        tag = f"content {self.counter}\n".encode()
        size = self.rng.randint(16, 64) * 1024 * 1024 if big else self.rng.randint(0, 3000)
        return tag + self.rng.randbytes(size)


def write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def edit_during_download(model: Model, who: SyncProcess, other: SyncProcess, name: str) -> None:
    """A big new version of *name* in one folder, and an edit of it in another while that
    one downloads the big version (if its download is seen in time)."""
    big = model.content(big=True)
    write(who.folder / name, big)
    model.last[name] = big
    target = other.folder / name
    temp = f".{target.name}.fs-tmp-"
    try:
        wait_for(lambda: any(temp in p.name for p in target.parent.iterdir()), 5, "download")
        seen = "during its download"
    except (AssertionError, FileNotFoundError):
        seen = "(no download seen)"
    edit = model.content()
    write(target, edit)
    model.last[name] = edit  # the later write; the big one may end up as the conflict copy
    model.log.append(f"{who.folder.name}: big {name}; {other.folder.name}: edit it {seen}")


def one_operation(model: Model, who: SyncProcess, name: str) -> None:
    """Do one random thing in *who*'s folder, and note it in the model."""
    rng = model.rng
    target = who.folder / name
    exists = target.is_file()
    kind = rng.choices(["write", "big", "append", "atomic", "rename", "delete"],
                       weights=[5, 1, 2, 2, 2, 2])[0]  # fmt: skip
    if kind in ("append", "rename", "delete") and not exists:
        kind = "write"
    try:
        if kind in ("write", "big"):
            data = model.content(big=kind == "big")
            write(target, data)
        elif kind == "append":
            data = target.read_bytes() + model.content()
            write(target, data)
        elif kind == "atomic":  # an editor's save: a temp file renamed over the file
            data = model.content()
            write(target.with_name(f".{target.name}.swp"), data)
            os.replace(target.with_name(f".{target.name}.swp"), target)
        elif kind == "rename":
            dest = rng.choice([p for p in PATHS if p != name])
            data = target.read_bytes()
            (who.folder / dest).parent.mkdir(parents=True, exist_ok=True)
            os.replace(target, who.folder / dest)
            model.last[name] = None
            model.last[dest] = data
            model.log.append(f"{who.folder.name}: rename {name} -> {dest}")
            return
        else:
            target.unlink()
            data = None
    except FileNotFoundError:  # the client moved or deleted it just now: nothing happened
        model.log.append(f"{who.folder.name}: {kind} {name} raced with the client; skipped")
        return
    model.last[name] = data
    model.log.append(f"{who.folder.name}: {kind} {name}")


def server_digests(server: ServerProcess) -> dict[str, bytes]:
    async def listing() -> dict[str, bytes]:
        async with await Client.connect(server.address) as client:
            # (not the marks of empty folders: ``files`` has no folders; test_sync_modes)
            return {e.path: e.digest for e in await client.ls() if not is_mark(e.path)}

    return run(listing())


@pytest.mark.parametrize("seed", SEEDS)
def test_three_live_folders_converge_whatever_happens(server_factory, tmp_path, seed):
    server = server_factory("--workers", "2", "--store-size", "512MiB")
    clients = []
    for name in "ABC":
        (tmp_path / name).mkdir()
        clients.append(SyncProcess(tmp_path / name, server.address, debounce=0.3).start())
    model = Model(random.Random(seed))
    rng = model.rng
    offline: SyncProcess | None = None
    try:
        for _ in range(OPERATIONS):
            if rng.random() < 0.08:  # a client goes offline, or comes back
                if offline is None:
                    offline = rng.choice(clients)
                    offline.stop()
                    model.log.append(f"{offline.folder.name}: offline")
                else:
                    offline.start()
                    model.log.append(f"{offline.folder.name}: online")
                    offline = None
            who, name = rng.choice(clients), rng.choice(PATHS)
            if rng.random() < 0.1:
                other = rng.choice([c for c in clients if c is not who and c is not offline])
                edit_during_download(model, who, other, name)
            else:
                one_operation(model, who, name)
            time.sleep(rng.uniform(0, 0.3))  # the users' pace, not a wait for the sync
        if offline is not None:
            offline.start()
            model.log.append(f"{offline.folder.name}: online")
        story = f"seed {seed}:\n" + "\n".join(model.log)

        def converged() -> bool:
            first = digests(clients[0].folder)
            return all(digests(c.folder) == first for c in clients[1:]) and (
                server_digests(server) == first
            )

        wait_for(converged, CONVERGE_WITHIN, f"the folders and the server to agree; {story}",
                 interval=0.2)  # fmt: skip
        final = set(digests(clients[0].folder).values())
        for path, data in model.last.items():
            if data is not None:
                assert xxhash.xxh3_128_digest(data) in final, (
                    f"the last write to {path} was lost; {story}"
                )
        for c in clients:
            assert "pending changes: 0" in status(c.folder), story
            assert not [p for p in c.folder.rglob("*") if ".fs-tmp-" in p.name], story
            assert "Traceback" not in c.log.text(), c.log.text()
    finally:
        for c in clients:
            c.stop()
