"""Acceptance: transfers cut short go on from where they stopped (docs/PROTOCOL.md, section 5.13).

Real servers, real sockets; connections are cut by a relay (``tests.relay``) after a given
count of bytes, or by killing the worker that serves them. The server's byte counters show how
much each attempt sent."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil
import pytest
import xxhash

from common import messages as m
from common.limits import ANY_VERSION
from fsclient import Client
from fsclient.protocol import ConnectionLost
from tests.cli import cli_env, fsclient, fsclient_command
from tests.conftest import run
from tests.rawclient import RawClient
from tests.relay import Relay
from tests.serverproc import ROOT, ServerProcess, eventually, server_children, wait_for
from tests.syncproc import SyncProcess

MiB = 1 << 20
BIG = 200 * MiB
RECEIVED = 'fs_received_bytes_total{packet_type="file_sync_data"}'
SENT = 'fs_sent_bytes_total{packet_type="file_sync_data"}'


def random_file(path: Path, size: int) -> bytes:
    """Write *size* random bytes to *path*; their digest."""
    hasher = xxhash.xxh3_128()
    with open(path, "wb") as f:
        for _ in range(size // MiB):
            chunk = os.urandom(MiB)
            hasher.update(chunk)
            f.write(chunk)
    return hasher.digest()


def file_digest(path: Path) -> bytes:
    hasher = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(4 * MiB):
            hasher.update(chunk)
    return hasher.digest()


def quiet(server: ServerProcess) -> None:
    """Wait until no connection is open: each one's byte counts are in the metrics then."""
    wait_for(lambda: server.metric_total("fs_connections_active") == 0, 10, "no connection")


def temp_files(folder: Path) -> list[str]:
    return [name for name in os.listdir(folder) if ".fs-tmp-" in name]


async def cut_short(address: str, transfer: Callable[[Client], Awaitable[object]],
                    **cut: int) -> None:  # fmt: skip
    """Run *transfer* on a client whose connection a relay cuts (``cut_up`` or ``cut_down``
    bytes): it fails with ConnectionLost. The client does not reconnect: this test sees each
    attempt on its own."""
    with Relay(address, **cut) as relay:  # type: ignore[arg-type]
        client = await Client.connect(relay.address)
        client.dial = None
        with pytest.raises(ConnectionLost):
            await transfer(client)
        await client.close()


@pytest.fixture
def big_server(server_factory):
    return server_factory("--workers", "2", "--store-size", "512MiB")


def test_a_cut_upload_resumes_and_sends_about_half(big_server, tmp_path):
    """A 200 MiB upload cut after 100 MiB: the next upload of the file to the same path is
    told how many bytes the server holds, and sends only the rest."""
    server = big_server
    local = tmp_path / "big.bin"
    digest = random_file(local, BIG)

    async def main():
        await cut_short(server.address, lambda c: c.put(local, "big.bin"), cut_up=BIG // 2)
        quiet(server)
        wait_for(lambda: server.metric("fs_store_parked_bytes") == BIG, 10, "the upload parked")
        first = server.metric(RECEIVED, 0.0)
        async with await Client.connect(server.address) as client:
            entry = await client.put(local, "big.bin")
        assert entry.digest == digest
        quiet(server)
        return first, server.metric(RECEIVED, 0.0) - first

    first, second = run(main())
    assert 0.45 * BIG < first <= 0.5 * BIG + MiB
    assert 0.45 * BIG < second < 0.55 * BIG, "the second attempt sent about half"
    assert server.metric("fs_store_parked_bytes") == 0
    assert server.metric("fs_store_used_bytes") == BIG


def test_a_cut_download_resumes_and_sends_about_half(big_server, tmp_path):
    """A 200 MiB download cut after 100 MiB keeps its temp file; the next download of the
    file asks for the rest, and the whole file's digest checks out."""
    server = big_server
    local = tmp_path / "big.bin"
    digest = random_file(local, BIG)
    back = tmp_path / "back"
    back.mkdir()
    dest = back / "big.bin"

    async def main():
        async with await Client.connect(server.address) as client:
            await client.put(local, "big.bin")
        quiet(server)
        before = server.metric(SENT, 0.0)
        await cut_short(server.address, lambda c: c.get("big.bin", dest), cut_down=BIG // 2)
        assert not dest.exists()
        assert len(temp_files(back)) == 1, "the part received is kept"
        quiet(server)
        first = server.metric(SENT, 0.0) - before
        async with await Client.connect(server.address) as client:
            entry = await client.get("big.bin", dest)
        assert entry.digest == digest
        quiet(server)
        return first, server.metric(SENT, 0.0) - before - first

    first, second = run(main())
    assert first >= 0.5 * BIG
    assert 0.4 * BIG < second < 0.55 * BIG, "the second attempt sent about half"
    assert file_digest(dest) == digest
    assert temp_files(back) == []


def test_a_download_resumes_only_the_same_content(server, tmp_path):
    """Changed on the server meanwhile: the digest the request names no longer matches, so
    the server sends the whole new file, and the kept part is not used."""
    old, new = os.urandom(8 * MiB), os.urandom(8 * MiB)
    dest = tmp_path / "f.bin"

    async def main():
        async with await Client.connect(server.address) as client:
            await client.put_bytes(old, "f.bin")
        await cut_short(server.address, lambda c: c.get("f.bin", dest), cut_down=3 * MiB)
        assert len(temp_files(tmp_path)) == 1
        quiet(server)
        before = server.metric(SENT, 0.0)
        async with await Client.connect(server.address) as client:
            await client.put_bytes(new, "f.bin")
            await client.get("f.bin", dest)
        quiet(server)
        return server.metric(SENT, 0.0) - before

    assert run(main()) >= len(new), "the whole new file was sent"
    assert dest.read_bytes() == new
    assert temp_files(tmp_path) == []


def test_the_cli_resumes_a_cut_put_and_get_by_itself(big_server, tmp_path):
    """``fsclient put`` and ``fsclient get`` through connections cut at half: each reconnects,
    resumes, and exits 0; the server received and sent each file about 1.5 times, not 2."""
    server = big_server
    local = tmp_path / "big.bin"
    digest = random_file(local, BIG)
    with Relay(server.address, cut_up=BIG // 2) as relay:
        done = fsclient("put", str(local), "big.bin", server=relay.address)
        assert done.returncode == 0, done.stderr
        assert len(relay.up) == 2, "one reconnection"
        assert relay.up[1] < 0.55 * BIG
    quiet(server)
    assert server.metric(RECEIVED, 0.0) < 1.05 * BIG
    dest = tmp_path / "back.bin"
    with Relay(server.address, cut_down=BIG // 2) as relay:
        done = fsclient("get", "big.bin", str(dest), server=relay.address)
        assert done.returncode == 0, done.stderr
        assert len(relay.down) == 2
        assert relay.down[1] < 0.55 * BIG
    quiet(server)
    assert server.metric(SENT, 0.0) < 1.2 * BIG  # (the first connection's buffers count as sent)
    assert file_digest(dest) == digest
    assert temp_files(tmp_path) == []


def started_at(pid: int) -> float:
    """When process *pid* started, on the clock of ``CLOCK_BOOTTIME``, to 10 ms (what the
    kernel keeps; psutil's ``create_time`` is off by up to a second)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    ticks = int(stat.rsplit(")", 1)[1].split()[19])
    return ticks / os.sysconf("SC_CLK_TCK")


def worker_serving(server: ServerProcess, port: int) -> psutil.Process:
    """The worker process holding the server end of the connection from local *port*."""
    for child in server_children(server.pid):
        if not child.name().startswith("fs-worker"):
            continue
        if any(c.raddr and c.raddr.port == port for c in child.net_connections("tcp")):
            return child
    raise AssertionError(f"no worker serves the connection from port {port}")


def test_kill_9_of_the_worker_serving_a_put(server_factory, tmp_path):
    """A 64 MiB ``fsclient put`` (slowed to 16 MiB/s) loses its worker to SIGKILL half-way: a
    new worker is started at once, the command reconnects, resumes and exits 0, and clients
    transferring on the other worker meanwhile are not disturbed."""
    server = server_factory("--workers", "2", "--store-size", "256MiB")
    size = 64 * MiB
    local = tmp_path / "big.bin"
    digest = random_file(local, size)

    async def others(victim: int, stop: asyncio.Event, after_kill: asyncio.Event) -> int:
        """Upload and download 4 MiB files on the other worker until *stop*; how many
        transfers finished after the kill."""
        client = await Client.connect(server.address)
        while client.worker_id == victim:
            await client.close()
            client = await Client.connect(server.address)
        proto, rounds, later = client.proto, 0, 0
        while not stop.is_set():
            data = os.urandom(4 * MiB)
            name = f"other-{id(client)}-{rounds}.bin"
            await client.put_bytes(data, name)
            await client.get(name, tmp_path / name)
            assert (tmp_path / name).read_bytes() == data
            await client.rm(name)
            (tmp_path / name).unlink()
            rounds += 1
            later += after_kill.is_set()
        assert client.proto is proto, "the other client never lost its connection"
        await client.close()
        return later

    async def main(relay: Relay) -> tuple[float, psutil.Process, str]:
        put = await asyncio.create_subprocess_exec(
            *fsclient_command("put", str(local), "big.bin", server=relay.address),
            cwd=ROOT, env=cli_env(), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            await eventually(lambda: relay.up and relay.up[0] > 4 * MiB, 30, "the upload going")
            victim = worker_serving(server, relay.upstream_ports[0])
            name = victim.name()
            stop, after_kill = asyncio.Event(), asyncio.Event()
            index = int(name.rsplit("-", 1)[1])
            tasks = [asyncio.create_task(others(index, stop, after_kill)) for _ in range(2)]
            await eventually(lambda: relay.up[0] > size // 2, 30, "half the upload")
            killed_at = time.clock_gettime(time.CLOCK_BOOTTIME)
            victim.kill()
            after_kill.set()
            _, err = await asyncio.wait_for(put.communicate(), 120)
            stop.set()
            assert put.returncode == 0, err.decode()
            assert all(later >= 1 for later in await asyncio.gather(*tasks))
            return killed_at, victim, name
        finally:
            if put.returncode is None:
                put.kill()
                await put.wait()

    with Relay(server.address, rate=16 * MiB) as relay:
        killed_at, victim, name = run(main(relay))
    assert len(relay.up) == 2, "the put reconnected once"
    assert relay.up[1] < 0.75 * size, "and resumed: it sent less than the whole file again"

    def replacement() -> psutil.Process | None:
        found = [p for p in server_children(server.pid)
                 if p.name() == name and p.pid != victim.pid]  # fmt: skip
        return found[0] if found else None

    new = wait_for(replacement, 10, "a replacement worker")
    assert started_at(new.pid) - killed_at < 1.0, "the worker was replaced within a second"
    wait_for(lambda: server.http_get("/readyz")[0] == 200, 10, "readiness")

    async def check():
        async with await Client.connect(server.address) as client:
            assert (await client.stat("big.bin")).digest == digest

    run(check())


def test_kept_bytes_that_are_not_the_file_cost_a_retry_not_a_wrong_file(server, tmp_path,
                                                                         monkeypatch):  # fmt: skip
    """The file changed after the cut, keeping its size, mtime and mode: the upload resumes,
    the whole file's digest does not match, and the retry sends all of it. Likewise a kept
    download whose bytes were changed: it is done again from the start."""
    import fsclient.transfer as transfer

    monkeypatch.setattr(transfer, "PREHASH_MAX", 0)  # no Init digest: only the hash can tell
    size = 8 * MiB
    local = tmp_path / "f.bin"
    random_file(local, size)
    stamp = local.stat().st_mtime_ns

    async def main():
        await cut_short(server.address, lambda c: c.put(local, "f.bin"), cut_up=size // 2)
        quiet(server)
        before = server.metric(RECEIVED, 0.0)
        random_file(local, size)  # (new content, same size) ...
        os.utime(local, ns=(stamp, stamp))  # ... and same mtime
        digest = file_digest(local)
        async with await Client.connect(server.address) as client:
            entry = await client.put(local, "f.bin")
        quiet(server)
        assert entry.digest == digest
        return server.metric(RECEIVED, 0.0) - before

    assert run(main()) > 1.3 * size, "the rest, then the whole file again"


def test_a_kept_download_that_was_changed_is_done_again(server, tmp_path):
    data = os.urandom(8 * MiB)
    folder = tmp_path / "down"
    folder.mkdir()

    async def main():
        async with await Client.connect(server.address) as client:
            await client.put_bytes(data, "f.bin")
        await cut_short(server.address, lambda c: c.get("f.bin", folder / "f.bin"),
                        cut_down=4 * MiB)  # fmt: skip
        [temp] = temp_files(folder)
        with open(folder / temp, "r+b") as f:  # a byte of the kept part changed
            f.write(b"\xff" if f.read(1) != b"\xff" else b"\x00")
        async with await Client.connect(server.address) as client:
            await client.get("f.bin", folder / "f.bin")

    run(main())
    assert (folder / "f.bin").read_bytes() == data
    assert temp_files(folder) == []


def test_sync_resumes_its_uploads_and_downloads(server_factory, tmp_path):
    """A live ``fsclient sync`` whose connection is cut mid-transfer reconnects by itself;
    its next upload of the file resumes on the server, its next download from the part it
    kept (the reconcile at the start of its next session leaves that temp file alone)."""
    server = server_factory("--workers", "2", "--store-size", "256MiB")
    size = 48 * MiB
    up, down = tmp_path / "up", tmp_path / "down"
    up.mkdir()
    down.mkdir()
    digest = random_file(up / "big.bin", size)
    with Relay(server.address, cut_up=size // 2) as relay:
        sync = SyncProcess(up, relay.address).start()
        try:
            wait_for(lambda: server_digest(server, "big.bin") == digest, 60, "the upload")
        finally:
            sync.stop()
        assert len(relay.up) >= 2 and relay.up[1] < 0.75 * size, relay.up
    with Relay(server.address, cut_down=size // 2) as relay:
        sync = SyncProcess(down, relay.address).start()
        try:
            wait_for(lambda: (down / "big.bin").exists() and file_digest(down / "big.bin")
                     == digest, 60, "the download")  # fmt: skip
        finally:
            sync.stop()
        assert len(relay.down) >= 2 and relay.down[1] < 0.75 * size, relay.down
    assert temp_files(down) == []


def server_digest(server: ServerProcess, path: str) -> bytes | None:
    async def look() -> bytes | None:
        async with await Client.connect(server.address) as client:
            return next((e.digest for e in await client.ls() if e.path == path), None)

    return run(look())


def test_an_upload_that_meets_the_same_one_in_progress_waits_for_it_then_resumes(server):
    """The second FileSyncInit of the same file to the same path, while the first upload's
    connection is still open: the answer waits for that one to end, then resumes its bytes.
    If it does not end (two clients uploading the same file), a fresh upload starts."""
    size = 8 * MiB
    data = os.urandom(size)
    init = m.FileSyncInit(1, size, 5, 0o644, ANY_VERSION, None, "same.bin")
    first = RawClient(server.address, max_packet=1 << 20)
    first.send(init)
    assert first.expect(m.FileSyncInitResponse).offset == 0
    first.send_raw(first.conn.frame_data(1, memoryview(data)[: 3 * MiB]))
    second = RawClient(server.address, max_packet=1 << 20)
    second.send(init)
    first.close()  # (a connection that ends while the second one waits)
    resumed = second.expect(m.FileSyncInitResponse)
    assert (resumed.status, resumed.offset) == (m.InitStatus.ACCEPTED, 3 * MiB)
    third = RawClient(server.address, max_packet=1 << 20)
    third.send(init)  # the second is in progress, and stays: after a while, a fresh start
    fresh = third.expect(m.FileSyncInitResponse)
    assert (fresh.status, fresh.offset) == (m.InitStatus.ACCEPTED, 0)
    for client, start in ((second, 3 * MiB), (third, 0)):
        client.send_raw(client.conn.frame_data(1, memoryview(data)[start:]))
        client.send(m.FileSyncCheckHash(1, xxhash.xxh3_128_digest(data)))
        assert client.expect(m.FileSyncCheckHashResponse).status is m.HashStatus.OK
        assert client.expect(m.FileSyncFinish).version
        client.close()


def test_resuming_works_with_the_seeds_4096_byte_packets(server, tmp_path):
    size = 6 * MiB
    local = tmp_path / "f.bin"
    digest = random_file(local, size)
    dest = tmp_path / "back.bin"

    async def main():
        for cut in ({"cut_up": size // 2}, {"cut_down": size // 2}):
            # paced: at 4096-byte packets a client lags, and what it had not read when the
            # reset came is lost with its socket (a resume then starts further back)
            with Relay(server.address, rate=16 * MiB, **cut) as relay:  # type: ignore[arg-type]
                client = await Client.connect(relay.address, max_packet=4096)
                assert client.max_packet == 4096
                if "cut_up" in cut:
                    assert (await client.put(local, "f.bin")).digest == digest
                    assert len(relay.up) == 2 and relay.up[1] < 0.6 * size
                else:
                    assert (await client.get("f.bin", dest)).digest == digest
                    assert len(relay.down) == 2 and relay.down[1] < 0.6 * size
                await client.close()

    run(main())
    assert file_digest(dest) == digest
