"""Memory metrics that tell the truth: each process's own memory (USS) leaves out the shared
arena that every process's RSS counts again (issue 13)."""

from __future__ import annotations

import os

from tests.serverproc import wait_for
from tests.test_metrics import parse_metrics, upload_4k

MIB = 1 << 20
STORE = 64 * MIB
ROLES = {"acceptor", "worker", "hasher", "persister"}
MAPPERS = ("worker", "hasher", "persister")
"""The roles that map every page of the arena (``arena.populate``), so count it in their RSS."""


def by_process(samples: dict[str, float], name: str) -> dict[str, float]:
    """``{labels}`` -> value, for each series of *name*."""
    return {k[len(name) :]: v for k, v in samples.items() if k.startswith(name + "{")}


def test_unique_memory_leaves_the_shared_arena_out(server_factory, tmp_path):
    """After 20 MiB of uploads, the USS of all server processes adds up to far less than their
    RSS minus the arena's used bytes counted once per extra process; every role has a USS of
    its own (> 0)."""
    server = server_factory("--workers", "2", "--hash-workers", "1", "--store-size", "64MiB",
                            "--data-dir", str(tmp_path / "data"))  # fmt: skip
    upload_4k(server, {f"f{n}.bin": os.urandom(MIB) for n in range(20)})

    def published() -> dict[str, float] | None:
        """Every process sampled, each mapper after it mapped the arena, 20 MiB used."""
        samples = parse_metrics(server.http_get("/metrics")[1])
        uss = by_process(samples, "fs_process_unique_memory_bytes")
        rss = by_process(samples, "process_resident_memory_bytes")
        mapped = [v >= STORE for k, v in rss.items() if any(f'"{r}"' in k for r in MAPPERS)]
        used = samples.get("fs_store_used_bytes", 0) >= 20 * MIB
        return samples if used and len(uss) == len(rss) == 5 and all(mapped) else None

    def unshared(samples: dict[str, float]) -> bool:
        """Each mapper's USS leaves most of the arena out: its share is not its own. (A USS is
        read less often than RSS, ``USS_BUDGET``: one read before another process mapped the
        arena rightly counts those pages as the reader's alone, until the next read.)"""
        uss = by_process(samples, "fs_process_unique_memory_bytes")
        rss = by_process(samples, "process_resident_memory_bytes")
        return all(uss[key] < rss[key] - STORE / 2 for key in uss
                   if any(f'"{role}"' in key for role in MAPPERS))  # fmt: skip

    samples = wait_for(
        lambda: (s := published()) and unshared(s) and s,
        30,
        "every process's USS read with the arena mapped by all, leaving it out",
    )
    uss = by_process(samples, "fs_process_unique_memory_bytes")
    rss = by_process(samples, "process_resident_memory_bytes")
    used = samples["fs_store_used_bytes"]
    assert uss.keys() == rss.keys()
    assert {key.split('role="')[1].rstrip('"}') for key in uss} == ROLES
    assert all(value > 0 for value in uss.values()), uss
    shared_once = sum(rss.values()) - (len(rss) - 1) * used
    assert sum(uss.values()) < shared_once - STORE, (uss, rss, used)  # far below: by > the arena
