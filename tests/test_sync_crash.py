"""A sync client killed with SIGKILL while it downloads, again and again, loses nothing and
brings nothing back: no file is ever seen half-written under its name, and after its restart
the folder, the server and a model of every change made agree, byte for byte.

Each round: the server gets new files (big and small, some in new folders), a changed file
and a delete; the folder gets a local delete and a new file (while the client is stopped,
so that they all come in at once; or while it is down, so that its first pass on starting
does them); the client is killed at a random point while downloads are in flight (once a random
number of the round's files landed), the folder is checked for partial files, and
the client restarts.
"""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import xxhash

from fsclient import Client
from tests.conftest import run
from tests.serverproc import ServerProcess, wait_for
from tests.syncproc import SyncProcess, digests, files, status
from tests.test_sync_recovery import server_digests

ROUNDS = 10
SMALL_PER_ROUND = 24
BIG_PER_ROUND = 2
BIG = (8 << 20, 32 << 20)
DEADLINE = 60.0

Digest = bytes


def digest(data: bytes) -> Digest:
    return xxhash.xxh3_128_digest(data)


class Model:
    """What every side must hold at the end (path -> digest), and every content each path
    ever had (a file seen under its name must be one of them, whole)."""

    def __init__(self) -> None:
        self.want: dict[str, Digest] = {}
        self.ever: dict[str, set[Digest]] = {}

    def wrote(self, path: str, data: bytes) -> None:
        self.want[path] = digest(data)
        self.ever.setdefault(path, set()).add(self.want[path])

    def deleted(self, path: str) -> None:
        del self.want[path]


def server_puts(server: ServerProcess, uploads: dict[str, bytes]) -> None:
    async def send() -> None:
        async with await Client.connect(server.address) as client:
            for path, data in uploads.items():
                await client.put_bytes(data, path)

    run(send())


def server_rm(server: ServerProcess, path: str) -> None:
    async def remove() -> None:
        async with await Client.connect(server.address) as client:
            await client.rm(path)

    run(remove())


def no_partial_file(folder: Path, model: Model) -> None:
    """Every file under its own name is whole: one of the contents that path ever had."""
    for path, data in files(folder).items():
        assert digest(data) in model.ever.get(path, set()), f"{path}: not a content it had"


def round_of_changes(server: ServerProcess, b: SyncProcess, model: Model, rng: random.Random,
                     untouched: set[str], r: int) -> dict[str, bytes]:  # fmt: skip
    """Change both sides; what B has to download this round. Each seed file is used once
    (a file deleted here must be one B holds as the server does, else its news wins)."""
    changed, gone_there, gone_here = rng.sample(sorted(untouched), 3)
    untouched -= {changed, gone_there, gone_here}
    uploads = {f"r{r}/big{i}.bin": os.urandom(rng.randrange(*BIG)) for i in range(BIG_PER_ROUND)}
    uploads |= {f"r{r}/sub{i % 3}/s{i}.txt": os.urandom(rng.randrange(1, 64 << 10))
                for i in range(SMALL_PER_ROUND)}  # fmt: skip
    uploads[changed] = f"changed in round {r}".encode()
    for path, data in uploads.items():
        model.wrote(path, data)
    model.deleted(gone_there)
    model.deleted(gone_here)
    (b.folder / gone_here).unlink()  # a local delete: must reach the server, not come back
    mine = b.folder / f"local/r{r}.txt"
    mine.parent.mkdir(exist_ok=True)
    mine.write_bytes(f"made here in round {r}".encode())
    model.wrote(f"local/r{r}.txt", mine.read_bytes())
    server_rm(server, gone_there)
    server_puts(server, uploads)
    return uploads


def kill_mid_download(b: SyncProcess, fetching: dict[str, bytes], rng: random.Random) -> bool:
    """SIGKILL B once a random number of *fetching* landed and then a download was seen in
    flight (a temp file) a few times; True if one was in flight (else all had landed)."""
    landed_first = rng.randrange(len(fetching) - BIG_PER_ROUND)  # the big ones land last
    sightings = rng.randrange(1, 4)
    seen = 0
    folders = {(b.folder / path).parent for path in fetching}

    def in_flight() -> bool:
        return any(".fs-tmp-" in entry.name for folder in folders if folder.is_dir()
                   for entry in os.scandir(folder))  # fmt: skip

    def landed() -> int:  # by size: the content is checked after the restart
        return sum((b.folder / p).is_file() and (b.folder / p).stat().st_size == len(d)
                   for p, d in fetching.items())  # fmt: skip

    def downloading() -> bool:
        nonlocal seen
        if in_flight():
            seen += 1
            return seen >= sightings
        return landed() == len(fetching)

    wait_for(lambda: landed() >= landed_first, DEADLINE, f"{landed_first} files on B",
             interval=0.002)  # fmt: skip
    wait_for(downloading, DEADLINE, "B downloading", interval=0.002)
    b.stop(signal.SIGKILL)
    return seen >= sightings


def temp_files_anywhere(folder: Path) -> list[str]:
    return [name for parent, _, names in os.walk(folder) for name in names
            if ".fs-tmp-" in name]  # fmt: skip


def test_kill_9_while_downloading_loses_and_resurrects_nothing(server_factory, tmp_path):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    server = server_factory("--workers", "2", "--store-size", "1GiB")
    b = SyncProcess(tmp_path / "B", server.address)
    b.folder.mkdir()
    model = Model()
    seed_files = {f"keep/k{i:02d}.txt": f"kept file {i}".encode() for i in range(3 * ROUNDS)}
    server_puts(server, seed_files)
    for path, data in seed_files.items():
        model.wrote(path, data)
    b.start()
    try:
        wait_for(lambda: digests(b.folder) == model.want, DEADLINE, "B to hold the first files")
        in_flight = 0
        untouched = set(seed_files)
        for r in range(ROUNDS):
            live = r % 2 == 0
            if live:  # the changes come in at once while it runs: its settlers download
                b.proc.send_signal(signal.SIGSTOP)
            else:  # the changes come in while it is down: its first pass downloads
                b.stop(signal.SIGKILL)
            fetching = round_of_changes(server, b, model, rng, untouched, r)
            if live:
                b.proc.send_signal(signal.SIGCONT)
            else:
                b.start(wait=False)
            in_flight += kill_mid_download(b, fetching, rng)
            no_partial_file(b.folder, model)
            b.start()
        assert in_flight >= ROUNDS // 2, f"only {in_flight} kills hit a download (seed {seed})"

        def agreed() -> bool:
            return digests(b.folder) == model.want == server_digests(server)

        wait_for(agreed, DEADLINE, f"B, the server and the model to agree (seed {seed})", 0.5)
        assert not temp_files_anywhere(b.folder), "a temp file was left behind"
        assert "pending changes: 0" in status(b.folder)
        assert "Traceback" not in b.log.text(), b.log.text()
    finally:
        b.stop()
