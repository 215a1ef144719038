"""The pieces of the small-file batch path as pure logic: a worker's staging area, the hasher's
digest of a run of files, and ``Store.store_many`` copying staged files into place."""

from __future__ import annotations

import random

import pytest
import xxhash

from common.limits import ANY_VERSION, NO_VERSION
from common.messages import InitStatus
from fsserver.hasher import hash_jobs
from fsserver.store import BatchStored, Store
from fsserver.store.allocator import aligned
from fsserver.store.staging import STAGING_BYTES, Staging, arena_size, staging_base
from tests.test_store import check_invariants

CAPACITY = 64 * 1024


def staged_store(capacity: int = CAPACITY, **kwargs) -> tuple[Store, memoryview]:
    """A store whose arena has one staging area after its capacity, like a one-worker server."""
    arena = memoryview(bytearray(arena_size(capacity, 1)))
    store = Store(capacity, **kwargs)
    store.arena = arena
    return store, arena


def stage(arena: memoryview, files: list[tuple[str, bytes]], base_version: int = ANY_VERSION
          ) -> list[tuple]:  # fmt: skip
    """Put *files* one after another in the staging area; their ``store_many`` items."""
    at = staging_base(CAPACITY, 0)
    items = []
    for path, data in files:
        arena[at : at + len(data)] = data
        digest = xxhash.xxh3_128_digest(data)
        items.append((at, path, len(data), 7, 0o600, digest, base_version))
        at += len(data)
    return items


def outcomes(done: BatchStored) -> list[str]:
    """Each file's fate: stored (new content), linked (content held already) or refused."""
    return [
        "refused" if at in done.refused else "linked" if at in done.reused else "stored"
        for at in range(len(done.versions))
    ]


def stored_bytes(store: Store, arena: memoryview, share: str, path: str) -> bytes:
    entry = store.shares[share].entries[path]
    return bytes(arena[entry.blob.offset : entry.blob.offset + entry.blob.size])


def test_store_many_copies_each_file_into_an_extent_of_its_own():
    store, arena = staged_store()
    files = [(f"f{n}", random.randbytes(100 * n + 1)) for n in range(5)]
    done = store.store_many(0, "s", stage(arena, files))
    assert outcomes(done) == ["stored"] * 5
    assert done.versions == [1, 2, 3, 4, 5]  # in the order sent
    for path, data in files:
        assert stored_bytes(store, arena, "s", path) == data
    arena[staging_base(CAPACITY, 0) :] = bytes(STAGING_BYTES)  # the staging area is reused
    assert stored_bytes(store, arena, "s", "f3") == files[3][1]
    assert store.allocator.used_bytes == sum(aligned(len(d)) for _, d in files)
    check_invariants(store)
    for path, _ in files:  # each file frees its own part of the batch's allocation
        store.delete("s", path, ANY_VERSION)
    assert store.allocator.used_bytes == 0
    check_invariants(store)


def test_store_many_links_known_content_and_refuses_file_by_file():
    store, arena = staged_store(max_entries=4)
    [first] = store.store_many(0, "s", stage(arena, [("a", b"same")])).versions
    files = [("b", b"same"), ("c", b"other"), ("d", b"other"), ("e", b"x"), ("f", b"y")]
    items = stage(arena, files)
    items[0] = (*items[0][:6], first)  # "b" must be at a's version: a conflict
    done = store.store_many(0, "s", items)
    assert outcomes(done) == ["refused", "stored", "linked", "stored", "refused"]
    assert done.versions == [0, 2, 3, 4, 0]
    conflict, full = done.refused[0], done.refused[4]
    assert conflict.status == InitStatus.CONFLICT and conflict.version == NO_VERSION
    assert full.status == InitStatus.NO_SPACE and "--max-files" in full.message
    # "other" is stored once for c and d; the batch's unused room went back
    assert store.allocator.used_bytes == aligned(4) + aligned(5) + aligned(1)
    check_invariants(store)


def test_store_many_keeps_the_quota_exactly():
    store, arena = staged_store(quota=1000)
    files = [(f"f{n}", random.randbytes(300)) for n in range(5)]
    done = store.store_many(0, "s", stage(arena, files))
    assert outcomes(done) == ["stored"] * 3 + ["refused"] * 2
    assert "quota" in done.refused[3].message
    check_invariants(store)


def test_store_many_fills_a_fragmented_store_file_by_file():
    """No single extent holds the whole batch: each file takes what space there is."""
    store, arena = staged_store(capacity=8 * 1024)
    for n in range(8):
        store.store_many(0, "s", stage(arena, [(f"pad{n}", bytes([n]) * 1024)]))
    for n in range(0, 8, 2):
        store.delete("s", f"pad{n}", ANY_VERSION)  # four free 1 KiB holes, none adjacent
    files = [(f"f{n}", random.randbytes(1000)) for n in range(5)]
    done = store.store_many(0, "s", stage(arena, files))
    assert outcomes(done) == ["stored"] * 4 + ["refused"]
    assert done.refused[4].status == InitStatus.NO_SPACE
    for path, data in files[:4]:
        assert stored_bytes(store, arena, "s", path) == data
    check_invariants(store)


def test_the_hasher_digests_a_run_of_files_in_one_job():
    pieces = [random.randbytes(n) for n in (0, 1, 4096, 777)]
    arena = memoryview(bytearray(100) + b"".join(pieces))
    job = (9, 100, sum(map(len, pieces)), tuple(map(len, pieces)))
    [(job_id, digests)] = hash_jobs(arena, [job])
    assert job_id == 9
    assert digests == b"".join(xxhash.xxh3_128_digest(p) for p in pieces)
    [(_, one)] = hash_jobs(arena, [(3, 101, 4096)])  # a one-shot job is unchanged
    assert one == xxhash.xxh3_128_digest(pieces[2])


def test_staging_hands_out_room_first_come_first_served():
    staging = Staging(base=1000, size=4096)
    got: list[tuple[str, int]] = []
    staging.take(3000, lambda at: got.append(("a", at)))
    staging.take(2000, lambda at: got.append(("b", at)))  # does not fit yet: waits
    staging.take(64, lambda at: got.append(("c", at)))  # fits, but waits behind b
    assert got == [("a", 1000)]
    staging.give(1000, 3000)
    assert got == [("a", 1000), ("b", 1000), ("c", 1000 + aligned(2000))]
    with pytest.raises(ValueError, match="do not fit"):
        staging.take(4097, lambda at: None)


def test_each_worker_slot_has_its_own_staging_area_after_the_store():
    assert staging_base(1000, 0) == aligned(1000)
    assert staging_base(1000, 1) - staging_base(1000, 0) == STAGING_BYTES
    assert arena_size(1000, 2) == staging_base(1000, 2)


def test_store_many_copies_only_from_the_callers_own_staging_area():
    """A worker names where its files wait: anywhere else (the store's blobs, another worker's
    area) is refused before anything is stored or allocated."""
    store, arena = staged_store()
    [secret] = stage(arena, [("secret", b"another share's bytes")])
    store.store_many(0, "other", [secret])
    blob_offset = store.shares["other"].entries["secret"].blob.offset
    thief = (blob_offset, "copy", *secret[2:])  # points into the store itself
    with pytest.raises(ValueError, match="outside the staging area"):
        store.store_many(0, "mine", [thief])
    [ok] = stage(arena, [("ok", b"x" * 100)])
    with pytest.raises(ValueError, match="outside the staging area of worker 1"):
        store.store_many(1, "mine", [ok])  # worker 0's area, named by worker 1
    assert "mine" not in store.shares
    assert store.allocator.used_bytes == aligned(len(b"another share's bytes"))
    check_invariants(store)
