"""``--data-dir``: the server survives kill -9 of every process and restarts with every file it
acknowledged (``--fsync always``), or all but the last moments (``interval``); deletes survive;
damage on disk is sorted into a torn tail (the valid prefix starts) and damage in the middle (a
clear error, or ``--repair``). Real servers, real kills, real files on disk."""

from __future__ import annotations

import asyncio
import math
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import xxhash

from common.errors import FSError, StoreFull
from fsclient import Client
from tests.conftest import run
from tests.serverproc import ServerProcess, eventually, start_server, wait_for

SMALL = (0, 64 * 1024)
BIG = 3 * 1024 * 1024
ROUND_BYTES = 20 * 1024 * 1024
"""Uploaded in a round at most (then it goes on with reads until the kill): ten rounds fill no
more than their store, however fast this machine stores them."""


@dataclass
class Acked:
    """What the server acknowledged: path -> (version, digest, when)."""

    files: dict[str, tuple[int, bytes, float]] = field(default_factory=dict)
    tried: set[str] = field(default_factory=set)


def durable_server(data_dir: Path, *args: str) -> ServerProcess:
    return start_server("--data-dir", str(data_dir), "--workers", "2", "--store-size", "320MiB",
                        *args)  # fmt: skip


def kill_everything(server: ServerProcess) -> None:
    """kill -9 of the supervisor and every child at once (its own process group)."""
    os.killpg(server.pid, signal.SIGKILL)
    server.proc.wait(10)


async def upload_until_killed(address: str, acked: Acked, rng: random.Random, tag: str,
                              limit: float = ROUND_BYTES) -> None:  # fmt: skip
    """Files big and small, one by one and in pipelined batches, until the connection dies
    (after *limit* bytes, reads only)."""
    count = sent = 0
    name = ""
    try:
        async with await Client.connect(address) as client:
            client.dial = None  # no reconnecting: the kill ends the round
            while True:
                count += 1
                if sent > limit:  # the store holds every round: only reads from here on
                    await client.stat(name)
                elif count % 3:
                    name = f"{tag}/one-{count}.bin"
                    size = BIG if count % 7 == 0 else rng.randint(*SMALL)
                    data = rng.randbytes(size)
                    acked.tried.add(name)
                    entry = await client.put_bytes(data, name)
                    acked.files[name] = (entry.version, xxhash.xxh3_128_digest(data), time.time())
                    sent += size
                else:
                    await upload_batch(client, acked, rng, f"{tag}/batch-{count}")
    except (FSError, OSError):
        return  # the server is gone


async def upload_batch(client: Client, acked: Acked, rng: random.Random, prefix: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        pairs, blobs = [], {}
        for n in range(20):
            name = f"{prefix}-{n}.bin"
            data = rng.randbytes(rng.randint(0, 8192))
            path = Path(folder) / str(n)
            path.write_bytes(data)
            pairs.append((str(path), name))
            blobs[name] = data
            acked.tried.add(name)

        def done(index: int, result: object) -> None:
            name = pairs[index][1]
            if hasattr(result, "version"):
                data = blobs[name]
                acked.files[name] = (result.version, xxhash.xxh3_128_digest(data), time.time())

        await client.put_many(pairs, on_result=done)


def server_state(server: ServerProcess, fetch: str = "") -> dict[str, tuple[int, bytes, bytes]]:
    """Every file the server lists: path -> (version, listed digest, digest of what it sends
    for the paths under *fetch*; for the others the listed one, which the server checked
    against the bytes it loaded)."""

    async def look() -> dict[str, tuple[int, bytes, bytes]]:
        found = {}
        async with await Client.connect(server.address) as client:
            for entry in await client.ls():
                got = entry.digest
                if entry.path.startswith(fetch):
                    target = f"/tmp/fs-durability-{os.getpid()}"
                    await client.get(entry.path, target)
                    with open(target, "rb") as f:
                        got = xxhash.xxh3_128_digest(f.read())
                    os.unlink(target)
                found[entry.path] = (entry.version, entry.digest, got)
        return found

    return run(look())


def kill_rounds(tmp_path: Path, fsync: str, rounds: int, seed: int) -> int:
    """Upload, kill -9 at a random moment, restart on the same data dir, check; repeated.
    Returns how many acknowledged files were missing (``interval`` allows the last moments)."""
    rng = random.Random(seed)
    data_dir = tmp_path / "data"
    acked = Acked()
    missing_late = 0
    server = durable_server(data_dir, "--fsync", fsync)
    try:
        for round_no in range(rounds):
            killed_at = run(upload_and_kill(server, acked, rng, f"r{round_no}"))
            server = durable_server(data_dir, "--fsync", fsync)
            state = server_state(server, fetch=f"r{round_no}/")
            for path, (_version, listed, sent) in state.items():
                assert path in acked.tried, f"{path} was never uploaded"
                assert listed == sent, f"{path}: what is sent does not match its digest"
            for path, (version, digest, when) in list(acked.files.items()):
                found = state.get(path)
                if found == (version, digest, digest):
                    continue
                late = fsync == "interval" and found is None and when > killed_at - LATE_WINDOW
                assert late, (f"round {round_no}: acknowledged {path} v{version} is "
                              f"{'missing' if found is None else f'v{found[0]}'}")  # fmt: skip
                missing_late += 1
                del acked.files[path]
    finally:
        server.stop()
        server.kill_group()
    return missing_late


async def upload_and_kill(server: ServerProcess, acked: Acked, rng: random.Random,
                          tag: str) -> float:  # fmt: skip
    """Uploads until a random kill point, then kill -9 of the whole server; when it was."""
    task = asyncio.ensure_future(upload_until_killed(server.address, acked, rng, tag))
    await eventually(lambda: any(p.startswith(f"{tag}/") for p in acked.files), 30,
                     "a first upload")  # fmt: skip
    await asyncio.sleep(rng.uniform(0.0, 1.0))  # the users' pace up to the kill point
    killed_at = time.time()
    kill_everything(server)
    await task
    return killed_at


LATE_WINDOW = 0.5
"""``interval``: 100 ms of entries gathered, plus the write itself, on a loaded machine."""


def test_kill_9_of_every_process_loses_no_acknowledged_upload(tmp_path):
    semaphores = set(Path("/dev/shm").glob("sem.*"))
    kill_rounds(tmp_path, "always", rounds=10, seed=11)
    # ten killed servers leave no named semaphore behind (a multiprocessing Event would)
    assert set(Path("/dev/shm").glob("sem.*")) <= semaphores


def test_kill_9_with_fsync_interval_loses_at_most_the_last_moments(tmp_path):
    kill_rounds(tmp_path, "interval", rounds=5, seed=12)


def test_a_killed_persister_is_replaced_and_nothing_is_lost(tmp_path):
    data_dir = tmp_path / "data"
    server = durable_server(data_dir)
    acked = Acked()
    rng = random.Random(5)
    try:

        async def work() -> None:
            task = asyncio.ensure_future(
                upload_until_killed(server.address, acked, rng, "p", limit=math.inf)
            )
            await asyncio.sleep(0.5)
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: server.kill_child("persister-0")
            )
            count = len(acked.files)
            deadline = time.monotonic() + 30
            while len(acked.files) < count + 20:  # uploads go on with the new persister
                assert time.monotonic() < deadline, "no upload acknowledged after the kill"
                await asyncio.sleep(0.05)
            server.stop()
            await task

        run(work())
    finally:
        server.stop()
        server.kill_group()
    server = durable_server(data_dir)
    try:
        state = server_state(server)
        for path, (version, digest, _) in acked.files.items():
            assert state.get(path) == (version, digest, digest), path
    finally:
        server.stop()
        server.kill_group()


def test_deletes_survive_a_restart_and_an_offline_client_does_not_bring_one_back(tmp_path):
    from tests.syncproc import files, started, status

    data_dir = tmp_path / "data"
    server = durable_server(data_dir)
    a, b = started(tmp_path, server.address, "A", "B")
    try:
        (a.folder / "keep.txt").write_text("kept")
        (a.folder / "gone.txt").write_text("deleted on A while B is away")
        wait_for(lambda: sorted(files(b.folder)) == ["gone.txt", "keep.txt"], 15, "B in sync")
        wait_for(lambda: "files in sync:   2" in status(b.folder), 15, "B's state")
        b.stop()
        (a.folder / "gone.txt").unlink()

        def deleted() -> bool:
            return "gone.txt" not in listing(server)

        wait_for(deleted, 15, "the delete on the server")
        a.stop()
        kill_everything(server)
        server = durable_server(data_dir)
        a.rebind(server.address)
        b.rebind(server.address)
        b.start()
        wait_for(lambda: sorted(files(b.folder)) == ["keep.txt"], 15, "B to apply the delete")
        assert sorted(server_state(server)) == ["keep.txt"]
    finally:
        a.stop()
        b.stop()
        server.stop()
        server.kill_group()


# -- damage on disk --------------------------------------------------------------------------


def three_files(tmp_path: Path) -> tuple[Path, list[bytes]]:
    """A data dir holding three files in one segment, in order; the server stopped."""
    data_dir = tmp_path / "data"
    contents = [os.urandom(50_000 + n) for n in range(3)]
    server = durable_server(data_dir)
    try:

        async def put() -> None:
            async with await Client.connect(server.address) as client:
                for n, data in enumerate(contents):
                    await client.put_bytes(data, f"f{n}.bin")

        run(put())
    finally:
        server.stop()
    [segment] = sorted((data_dir / "segments").glob("*.seg"))
    return segment, contents


def flip_bit(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x10]))


def listing(server: ServerProcess) -> list[str]:
    """The paths the server lists, without fetching them: safe to poll while a sync client
    deletes (a path listed and then fetched can be gone in between)."""

    async def look() -> list[str]:
        async with await Client.connect(server.address) as client:
            return sorted(entry.path for entry in await client.ls())

    return run(look())


@pytest.mark.parametrize("damage", ["truncated", "bit-flipped"])
def test_a_damaged_tail_starts_with_the_valid_prefix_and_a_warning(tmp_path, damage):
    segment, _ = three_files(tmp_path)
    if damage == "truncated":
        os.truncate(segment, segment.stat().st_size - 100)
    else:
        flip_bit(segment, segment.stat().st_size - 10)
    server = durable_server(segment.parent.parent)
    try:
        assert listing(server) == ["f0.bin", "f1.bin"]
        wait_for(lambda: "a torn tail" in server.log.text(), 10, "the warning")
        assert server.metric("fs_recovery_damaged_records_total") == 1
        assert str(segment) in server.log.text().split("a torn tail")[1]
    finally:
        server.stop()


def test_damage_in_the_middle_stops_the_start_unless_repair(tmp_path):
    segment, _ = three_files(tmp_path)
    flip_bit(segment, 60)  # inside the first file's content
    arenas = set(Path("/dev/shm").glob("fs-*"))
    with pytest.raises(AssertionError, match="exited with 1") as failed:
        durable_server(segment.parent.parent)
    # the children, started while the data dir loaded, went with it, and so did the arena
    assert set(Path("/dev/shm").glob("fs-*")) <= arenas
    message = str(failed.value)
    assert "damaged data in the middle" in message and str(segment) in message
    assert "--repair" in message
    server = durable_server(segment.parent.parent, "--repair")
    try:
        assert listing(server) == ["f1.bin", "f2.bin"]
        assert server.metric("fs_recovery_damaged_records_total") == 1
    finally:
        server.stop()


@pytest.fixture
def small_disk(tmp_path):
    """A 48 MiB tmpfs of its own: a disk that fills up (root only)."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)],
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_refuses_uploads_with_no_space_and_keeps_what_is_stored(small_disk):
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (12 << 20))
    server = durable_server(small_disk / "data")
    stored: dict[str, bytes] = {}
    try:

        async def fill() -> str:
            async with await Client.connect(server.address) as client:
                for n in range(100):
                    data = os.urandom(2 << 20)
                    try:
                        await client.put_bytes(data, f"f{n}.bin")
                    except StoreFull as exc:
                        return exc.message
                    stored[f"f{n}.bin"] = data
                    await client.ping()
            return "never full"

        refusal = run(fill())
        assert "no space" in refusal and "disk" in refusal, refusal
        assert len(stored) >= 3
        state = server_state(server, fetch="f")
        assert {p: s[2] for p, s in state.items()} == {
            p: xxhash.xxh3_128_digest(d) for p, d in stored.items()
        }
        filler.unlink()  # the operator frees space: uploads work again

        async def more() -> int:
            async with await Client.connect(server.address) as client:
                return (await client.put_bytes(os.urandom(2 << 20), "after.bin")).size

        wait_for(lambda: try_upload(more), 15, "an upload to go through again")
    finally:
        server.stop()
        server.kill_group()


def try_upload(upload) -> bool:
    try:
        return run(upload()) > 0
    except StoreFull:
        return False


def segment_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in (data_dir / "segments").glob("*.seg"))


def test_space_of_deleted_and_overwritten_files_is_given_back(tmp_path):
    """Disk use stays at most about twice the live data: segments that are mostly dead are
    compacted in the background (a restart starts a new segment, so the first one is closed)."""
    data_dir = tmp_path / "data"
    contents = {f"f{n}.bin": os.urandom(1 << 20) for n in range(20)}
    server = durable_server(data_dir, "--keep-versions", "0")
    try:

        async def put(names: list[str]) -> None:
            async with await Client.connect(server.address) as client:
                for name in names:
                    await client.put_bytes(contents[name], name)

        run(put(sorted(contents)))
    finally:
        server.stop()
    first = sorted((data_dir / "segments").glob("*.seg"))
    assert len(first) == 1 and segment_bytes(data_dir) >= 20 << 20
    server = durable_server(data_dir, "--keep-versions", "0")
    try:

        async def churn() -> None:
            async with await Client.connect(server.address) as client:
                for n in range(16):  # 4 of 20 MiB stay live: the first segment is mostly dead
                    if n % 2:
                        await client.rm(f"f{n}.bin")
                    else:
                        contents[f"f{n}.bin"] = os.urandom(1 << 20)
                        await client.put_bytes(contents[f"f{n}.bin"], f"f{n}.bin")

        run(churn())
        live = sum(len(contents[p]) for p in server_state(server))
        wait_for(lambda: not first[0].exists(), 20, "the mostly dead segment to be compacted")
        assert segment_bytes(data_dir) <= 2 * live
        state = server_state(server, fetch="f")
        assert {p: s[2] for p, s in state.items()} == {
            p: xxhash.xxh3_128_digest(contents[p]) for p in state
        }
    finally:
        server.stop()
    server = durable_server(data_dir, "--keep-versions", "0")  # and the compacted store loads
    try:
        assert sorted(server_state(server)) == sorted(state)
    finally:
        server.stop()


def test_an_entry_applied_again_by_a_restarted_persister_changes_nothing(tmp_path):
    """The supervisor sends a new persister every entry the catalog lacks; one it applied
    just before it died may come again: applying it twice must leave the same catalog."""
    from fsserver.store.catalog import Catalog
    from fsserver.store.segments import Placed

    digest = bytes(range(16))
    records = [("blob", 1, "s", digest, 10, 0, 0), ("put", "s", "a.txt", 1, 0, 0o644, 1)]
    first = Catalog(tmp_path)
    first.apply(records, {1: Placed(1, 0)}, lsn=1)  # then the persister dies
    first.close()
    catalog = Catalog(tmp_path)  # the next one is sent the entry again, and writes it again
    catalog.apply(records, {1: Placed(2, 0)}, lsn=1)
    assert catalog.blobs() == [(1, "s", digest, 10, 2, 0)]
    live = dict(catalog.db.execute("SELECT id, live_bytes FROM segments"))
    assert live == {1: 0, 2: 58}  # the first copy is dead bytes, for compaction
    assert list(catalog.entries()) == [("s", "a.txt", 1, 0, 0o644, 1, None, None, "")]
    assert catalog.lsn == 1
    catalog.close()
