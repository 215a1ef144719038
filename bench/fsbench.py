"""FS measurements through ``fsclient.Client`` against a running fsserver.

Only the ``put``/``get``/``put_many`` call is timed, on a client that is already connected.
Everything else (tagging the content, checks against ``ls`` and the store metrics, hashing the
downloaded file, deleting the remote copy) happens outside the clock, and any mismatch aborts the
benchmark: a number is only reported for bytes that really went through.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.data import Workload, file_digest
from bench.procs import FsServer
from common.messages import FileEntry
from fsclient.client import Client

SHARE = "bench"
Hook = Callable[[Callable[[], Awaitable[Any]]], Awaitable[Any]]


class BenchCheckFailed(AssertionError):
    """The server did not store (or return) what was sent: the timing would be meaningless."""


@dataclass
class BigRun:
    upload_s: float
    download_s: float
    packet: int


async def timed(call: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = await call()
    return time.perf_counter() - start, result


async def _entry(client: Client, path: str) -> FileEntry:
    prefix = path.rsplit("/", 1)[0] + "/" if "/" in path else ""
    for entry in await client.ls(prefix):
        if entry.path == path:
            return entry
    raise BenchCheckFailed(f"{path} is not listed by the server after its upload")


def _check_no_dedup(server: FsServer) -> None:
    saved = server.metric("fs_store_dedup_saved_bytes")
    if saved:
        raise BenchCheckFailed(f"the server deduplicated {saved:.0f} bytes: upload skipped data")


async def big_round(
    server: FsServer,
    work: Workload,
    scratch: Path,
    max_packet: int | None,
    name: str,
    *,
    do_download: bool = True,
    hook: Hook | None = None,
) -> BigRun:
    """Upload the big file (new content) as *name*, download it back, verify, delete it."""
    digest = work.retag()
    dest = scratch / "fs-download.bin"
    dest.unlink(missing_ok=True)
    run: Hook = hook or timed
    async with await Client.connect(server.address, SHARE, max_packet=max_packet) as client:
        upload_s, _ = await run(lambda: client.put(work.big, name))
        entry = await _entry(client, name)
        if entry.size != work.big_size or entry.digest != digest:
            raise BenchCheckFailed(f"{name}: server holds {entry.size} B {entry.digest.hex()}")
        _check_no_dedup(server)
        download_s = 0.0
        if do_download:
            download_s, _ = await run(lambda: client.get(name, dest))
            got = dest.stat().st_size
            if got != work.big_size or file_digest(dest) != digest:
                raise BenchCheckFailed(f"{name}: downloaded {got} B with the wrong digest")
            dest.unlink()
        await client.rm(name)
        return BigRun(upload_s, download_s, client.max_packet)


async def small_round(
    server: FsServer,
    work: Workload,
    digests: dict[str, bytes],
    prefix: str,
    *,
    hook: Hook | None = None,
) -> float:
    """Upload every small file under *prefix*/ with one ``put_many``; returns the seconds."""
    pairs = [(work.small_dir / name, f"{prefix}/{name}") for name in work.small_names()]
    run: Hook = hook or timed
    async with await Client.connect(server.address, SHARE) as client:
        elapsed, results = await run(lambda: client.put_many(pairs))
        failed = [r for r in results if not isinstance(r, FileEntry)]
        if failed:
            raise BenchCheckFailed(f"{len(failed)} small uploads failed, first: {failed[0]!r}")
        listed = {e.path.rsplit("/", 1)[1]: e for e in await client.ls(prefix + "/")}
    wrong = [
        name
        for name, digest in digests.items()
        if name not in listed
        or listed[name].digest != digest
        or listed[name].size != work.small_size
    ]
    if wrong or len(listed) != len(digests):
        raise BenchCheckFailed(f"{prefix}: {len(wrong)} files missing or wrong on the server")
    _check_no_dedup(server)
    return float(elapsed)
