"""Acceptance: SIGTERM stops every server process within 5 s and leaves nothing in /dev/shm.
Also: stale segments of a killed server are cleaned at the next start, a restarted server binds
its port at once, and a crashed worker is replaced without losing stored files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from common import messages as m
from common.limits import ANY_VERSION
from fsclient import Client
from tests.conftest import run
from tests.rawclient import RawClient
from tests.serverproc import (
    ServerProcess,
    free_port,
    server_children,
    start_server,
    wait_for,
    worker_pids,
)


def server_family(pid: int) -> list[psutil.Process]:
    return [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]


def gone(procs: list[psutil.Process]) -> bool:
    for proc in procs:
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_every_process_within_5s_and_frees_shm(server_factory, sig):
    server = server_factory("--workers", "3", "--hash-workers", "2", "--store-size", "32MiB")
    family = server_family(server.pid)
    # supervisor + 3 workers + 2 hashers + multiprocessing's resource tracker
    assert len(family) >= 6
    assert len(server.shm_segments()) == 1

    async def busy():
        async with await Client.connect(server.address) as client:
            await client.put_bytes(os.urandom(20 << 20), "x.bin")

    run(busy())
    # At the signal: a client that downloads but never reads, and one half-way through an
    # upload. Neither may hold the server up.
    stalled = RawClient(server.address, max_packet=1 << 20)
    stalled.send(m.DownloadRequest(1, 0, None, "x.bin"))
    uploading = RawClient(server.address)
    uploading.send(m.FileSyncInit(1, 1 << 20, 0, 0o644, ANY_VERSION, None, "y.bin"))
    assert uploading.expect(m.FileSyncInitResponse).status is m.InitStatus.ACCEPTED
    uploading.send_raw(uploading.conn.frame_data(1, memoryview(os.urandom(1 << 19))))
    took = server.stop(sig)
    stalled.close()
    uploading.close()
    assert took < 5.0
    wait_for(lambda: gone(family), 5.0, "every server process to exit")
    assert server.proc.returncode == 0
    assert server.shm_segments() == []
    log = server.log.text()
    assert "fsserver stopped" in log
    assert "leaked shared_memory" not in log
    assert "resource_tracker" not in log


def test_stale_segments_of_a_killed_server_are_removed_at_start(server_factory):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = Path(f"/dev/shm/fs-{dead.pid}-0123456789ab")
    stale.write_bytes(b"left by a server killed with SIGKILL")
    try:
        server = server_factory("--store-size", "8MiB")
        assert not stale.exists()
        assert f"removed stale shared memory segment {stale.name}" in server.log.text()
    finally:
        stale.unlink(missing_ok=True)


def test_killed_supervisor_takes_its_children_and_segment_with_it():
    server = start_server("--workers", "2", "--store-size", "8MiB")
    try:
        family = server_family(server.pid)
        segment = Path("/dev/shm") / server.shm_segments()[0]
        os.kill(server.pid, signal.SIGKILL)
        server.proc.wait(5)
        wait_for(lambda: gone(family[1:]), 10.0, "children to follow the supervisor")
        # multiprocessing's resource tracker unlinks what the dead supervisor registered
        wait_for(lambda: not segment.exists(), 10.0, "the arena to be unlinked")
    finally:
        server.kill_group()


def round_trips(server: ServerProcess, folder: Path, names: list[str]) -> list[bytes]:
    """Each name put and got back, a connection each (round robin: every worker)."""

    async def round_trip(name: str) -> bytes:
        async with await Client.connect(server.address) as client:
            await client.put_bytes(name.encode(), name)
            await client.get(name, folder / name)
        return (folder / name).read_bytes()

    return [run(round_trip(name)) for name in names]


def fork_server_of(server: ServerProcess) -> psutil.Process:
    """The supervisor's own child named so (a child just forked has its name for a moment)."""
    found = [p for p in psutil.Process(server.pid).children() if p.name() == "fs-forkserver"]
    assert len(found) == 1, found
    return found[0]


def test_a_sigterm_to_every_process_leaves_the_fork_server_be(server_factory, tmp_path):
    """systemd's default stop sends SIGTERM to every process of the service. The fork server
    ignores it: were it gone, its children would have to go too. (Its pipe was also the
    supervisor's word of a child's end: every child would have looked dead at once.)"""
    server = server_factory("--workers", "2", "--store-size", "16MiB")
    workers = worker_pids(server.pid)
    fork_server = fork_server_of(server)
    fork_server.send_signal(signal.SIGTERM)
    names = [f"f{n}" for n in range(4)]
    assert round_trips(server, tmp_path, names) == [name.encode() for name in names]
    assert fork_server.is_running() and fork_server.status() != psutil.STATUS_ZOMBIE
    assert worker_pids(server.pid) == workers
    assert "exited with code" not in server.log.text()


def test_a_fork_server_killed_takes_its_children_and_all_are_started_again(server_factory,
                                                                          tmp_path):  # fmt: skip
    """The OOM killer, say, kills the fork server: its children get SIGTERM (their parent's
    death), end, and are started again, by a new fork server; the server serves again."""
    server = server_factory("--workers", "2", "--store-size", "16MiB")
    names = [f"f{n}" for n in range(4)]
    assert round_trips(server, tmp_path, names) == [name.encode() for name in names]
    workers = worker_pids(server.pid)
    fork_server = fork_server_of(server)
    fork_server.kill()
    fork_server.wait(5)

    def started_again() -> bool:
        now = worker_pids(server.pid)
        return len(now) == 2 and not now & workers and len(server_children(server.pid)) >= 5

    wait_for(started_again, 20, "two new workers, from a new fork server")
    wait_for(lambda: server.http_get("/readyz")[0] == 200, 10, "readiness")
    assert fork_server_of(server).pid != fork_server.pid
    more = [f"g{n}" for n in range(4)]
    assert round_trips(server, tmp_path, more) == [name.encode() for name in more]
    assert round_trips(server, tmp_path, names) == [name.encode() for name in names]  # kept


def test_restarted_server_binds_the_same_port_at_once(server_factory):
    port = str(free_port())
    first = server_factory("--port", port, "--store-size", "8MiB")

    async def touch(address: str):
        async with await Client.connect(address) as client:
            await client.put_bytes(b"x", "x")

    run(touch(first.address))  # leaves TIME_WAIT sockets behind on the server's port
    first.stop()
    second = server_factory("--port", port, "--store-size", "8MiB")
    assert second.port == int(port)
    run(touch(second.address))


def test_crashed_worker_is_replaced_and_files_survive(server_factory):
    server = server_factory("--workers", "2", "--store-size", "16MiB")
    data = os.urandom(100_000)

    async def put_and_find_worker():
        async with await Client.connect(server.address) as client:
            await client.put_bytes(data, "kept.bin")
            return client.worker_id

    run(put_and_find_worker())
    # A reservation held on the worker about to die: 3 MiB half-uploaded.
    holder = None
    for _ in range(4):  # round robin: one of the first connections lands on worker 1
        candidate = RawClient(server.address)
        if candidate.hello is not None and candidate.hello.worker_id == 1:
            holder = candidate
            break
        candidate.close()
    assert holder is not None
    holder.send(m.FileSyncInit(1, 3 << 20, 0, 0o644, ANY_VERSION, None, "held.bin"))
    assert holder.expect(m.FileSyncInitResponse).status is m.InitStatus.ACCEPTED
    assert server.metric("fs_store_used_bytes") > 3 << 20
    children = server_children(server.pid)
    names = sorted(p.name() for p in children if p.name().startswith("fs-"))
    assert names == ["fs-forkserver", "fs-hasher-0", "fs-worker-0", "fs-worker-1"]
    victim = server.kill_child("worker-1")

    def replaced() -> bool:
        current = server_children(server.pid)
        return victim.pid not in [p.pid for p in current] and "fs-worker-1" in [
            p.name() for p in current
        ]

    wait_for(replaced, 10, "a replacement worker")  # and the dead one reaped, no zombie
    wait_for(lambda: server.http_get("/readyz")[0] == 200, 10, "readiness")
    # what the dead worker held (its connections' reservations, leases) is given back
    wait_for(lambda: server.metric("fs_store_used_bytes") == 100_032, 10, "held space back")
    holder.close()

    async def check():
        seen = set()
        for _ in range(6):
            async with await Client.connect(server.address) as client:
                seen.add(client.worker_id)
                target = f"/tmp/fs-crash-{os.getpid()}"
                await client.get("kept.bin", target)
                with open(target, "rb") as f:
                    assert f.read() == data
                os.unlink(target)
        assert seen == {0, 1}

    run(check())
