"""Fan-out latency: one writer, many subscribed connections that fetch each new file.

Subscribers run in a few processes (``python -m bench.fanout ADDRESS SHARE COUNT FOLDER
[SINCE]``: from version SINCE on, as clients in sync with the share would),
each with COUNT ``fsclient.Client`` connections on one uvloop loop. Each connection does what a
sync client does with a change notification: it downloads the file (``Client.get``: a temp
file, its digest checked, fsync, rename, folder fsync) into a folder of its own. When every
connection of the process holds a version, the process prints
``held VERSION T1 T2 ...``: the ``time.monotonic()`` at which each one's download returned.

The writer (``measure``, in the benchmark's process) uploads one file of new random bytes at a
time; the clock starts when its ``put_bytes`` returns (the server's hash OK and the version),
and the change's latency is the last subscriber's time minus that. Notification and reply
leave the server together, so a subscriber may hold a file a little before the writer hears
of it. ``CLOCK_MONOTONIC`` is one clock for every process of the machine. The next change
waits until every subscriber holds this one, plus a short pause: the samples do not overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.fsbench import BenchCheckFailed
from bench.procs import Child

READY = re.compile(r"fanout ready (\d+)")
FILE = "news.bin"


@dataclass
class FanoutResult:
    subscribers: int
    processes: int
    file_size: int
    share_files: int
    last: list[float] = field(default_factory=list)
    """Per change: seconds from the writer's reply to the last subscriber holding the file."""
    each: list[float] = field(default_factory=list)
    """Per change and subscriber: seconds from the writer's reply to that one holding it."""


class Subscribers(Child):
    """One process of COUNT subscribed connections (see the module's docstring)."""

    def __init__(self, address: str, share: str, count: int, folder: Path,
                 since: int = 0) -> None:  # fmt: skip
        cmd = [sys.executable, "-m", "bench.fanout", address, share, str(count), str(folder),
               str(since)]  # fmt: skip
        super().__init__(f"fan-out subscribers {folder.name}", cmd)
        self.count = count
        self.read = 0
        try:
            self.wait_until(lambda: self.search(READY), 120.0, "ready line")
        except BaseException:
            self.stop(timeout=2.0)
            raise

    def held(self, version: int) -> list[float] | None:
        """The times at which each connection held *version*, once all of them do."""
        with self.lock:
            for line in self.lines[self.read :]:
                self.read += 1
                parts = line.split()
                if parts[:2] == ["held", str(version)]:
                    return [float(t) for t in parts[2:]]
        if self.proc.poll() is not None:
            raise BenchCheckFailed(f"{self.name} exited:\n{self.output()}")
        return None


async def measure(address: str, share: str, groups: list[Subscribers], out: FanoutResult,
                  changes: int, pause: float = 0.02, timeout: float = 30.0) -> None:  # fmt: skip
    """*changes* uploads of new random bytes, one at a time, each timed to the last holder."""
    from fsclient.client import Client

    async with await Client.connect(address, share=share) as writer:
        for _ in range(changes):
            entry = await writer.put_bytes(os.urandom(out.file_size), FILE)
            start = time.monotonic()
            if entry.size != out.file_size:
                raise BenchCheckFailed(f"the writer's put stored {entry.size} bytes")
            times = await held_by_all(groups, entry.version, start + timeout)
            each = [t - start for t in times]
            out.last.append(max(each))
            out.each += each
            await asyncio.sleep(pause)


async def held_by_all(groups: list[Subscribers], version: int, deadline: float) -> list[float]:
    times: list[float] = []
    for group in groups:
        while (got := group.held(version)) is None:
            if time.monotonic() > deadline:
                raise BenchCheckFailed(f"version {version} is not held by every subscriber")
            await asyncio.sleep(0.001)
        if len(got) != group.count:
            raise BenchCheckFailed(f"{group.name}: {len(got)} of {group.count} hold {version}")
        times += got
    return times


# -- the subscriber process --------------------------------------------------------------------


async def follow(client: object, stream: object, folder: Path, held: dict[int, list[float]],
                 count: int) -> None:  # fmt: skip
    from fsclient.client import ChangeStream, Client

    assert isinstance(client, Client) and isinstance(stream, ChangeStream)
    last = 0
    async for note in stream:
        if note.deleted or note.entry.version <= last:
            raise SystemExit(f"unexpected notification {note}")
        last = note.entry.version
        entry = await client.get(note.entry.path, folder / FILE)
        times = held.setdefault(entry.version, [])
        times.append(time.monotonic())
        if len(times) == count:
            print(f"held {entry.version} " + " ".join(f"{t:.6f}" for t in held.pop(last)),
                  flush=True)  # fmt: skip


async def subscribe_all(address: str, share: str, count: int, root: Path, since: int) -> None:
    from fsclient.client import Client

    clients = await asyncio.gather(*(Client.connect(address, share=share) for _ in range(count)))
    streams = await asyncio.gather(*(c.subscribe(since) for c in clients))
    held: dict[int, list[float]] = {}
    tasks = []
    for i, (client, stream) in enumerate(zip(clients, streams, strict=True)):
        folder = root / f"c{i}"
        folder.mkdir()
        tasks.append(asyncio.ensure_future(follow(client, stream, folder, held, count)))
    print(f"fanout ready {count}", flush=True)
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        task.result()


def main(argv: list[str]) -> int:
    import uvloop

    address, share, count, folder, since = argv
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(subscribe_all(address, share, int(count), root, int(since)))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main(sys.argv[1:]))
