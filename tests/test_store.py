"""The store index and the allocator as pure logic: invariants under random operations, and the
cases that once broke them."""

from __future__ import annotations

import random
import time

import pytest

from common.limits import ANY_VERSION
from common.messages import InitStatus
from fsserver.store import Committed, Linked, Opened, Refused, Reserved, Store
from fsserver.store.allocator import aligned

D1, D2 = b"\x01" * 16, b"\x02" * 16


def check_invariants(store: Store) -> None:
    """Free extents, blobs, reservations and parked uploads tile the arena exactly; every
    blob's reference count is the number of entries and leases that point at it."""
    spans = [(off, length) for off, length in store.allocator._by_offset.items()]
    spans += [(b.offset, aligned(b.size)) for b in store.blobs.values() if b.size]
    spans += [
        (h.offset, aligned(h.size)) for h in store.holds.values() if h.blob is None and h.size
    ]
    spans += [(p.offset, aligned(p.size)) for p in store.parked.values()]
    pos = 0
    for off, length in sorted(spans):
        assert off == pos, f"gap or overlap at {pos}: {sorted(spans)}"
        pos = off + length
    assert pos == store.allocator.capacity
    refs: dict[int, int] = {}
    for share in store.shares.values():
        for entry in share.entries.values():
            if entry.blob is not None:
                refs[id(entry.blob)] = refs.get(id(entry.blob), 0) + 1
        for kept in share.history.values():
            for old in kept:
                refs[id(old.entry.blob)] = refs.get(id(old.entry.blob), 0) + 1
        assert share.kept_bytes == sum(k.entry.blob.size for ks in share.history.values()
                                       for k in ks)  # fmt: skip
        assert share.kept_count == sum(map(len, share.history.values()))
    for hold in store.holds.values():
        if hold.blob is not None:
            refs[id(hold.blob)] = refs.get(id(hold.blob), 0) + 1
    for blob in store.blobs.values():
        assert blob.refs == refs.get(id(blob), 0) > 0
    assert store.new_paths == sum(h.new_path for h in store.holds.values())
    assert store.blob_bytes == sum(b.size for b in store.blobs.values())
    assert store.parked_bytes == sum(p.size for p in store.parked.values())
    assert set(store.resumable) <= set(store.holds)
    keys: dict[tuple, int] = {}
    for upload in store.resumable.values():
        keys[upload.key] = keys.get(upload.key, 0) + 1
    assert store.live_keys == keys


def upload(store: Store, share: str, path: str, size: int, digest: bytes) -> int:
    result = store.reserve(0, share, path, size, 0, 0o644, digest, ANY_VERSION)
    if isinstance(result, Linked):
        return result.version
    assert isinstance(result, Reserved), result
    committed = store.commit(0, result.ticket, share, path, 0, 0o644, digest, ANY_VERSION)
    assert isinstance(committed, Committed)
    return committed.version


def test_uploading_the_same_content_to_the_same_path_keeps_it():
    store = Store(64 * 1024)
    upload(store, "s", "notes.txt", 1000, D1)
    used = store.allocator.used_bytes
    upload(store, "s", "notes.txt", 1000, D1)  # links to itself (the digest is known)
    assert store.allocator.used_bytes == used
    opened = store.open(0, "s", "notes.txt")
    assert isinstance(opened, Opened) and opened.entry.digest == D1
    store.release(0, opened.lease)
    check_invariants(store)
    assert isinstance(store.delete("s", "notes.txt", ANY_VERSION), Committed)
    assert store.allocator.used_bytes == 0


def test_content_is_shared_within_a_share_only():
    store = Store(64 * 1024)
    upload(store, "alice", "id_rsa", 1000, D1)
    # Knowing the digest and size must not give bob alice's bytes.
    result = store.reserve(0, "bob", "stolen", 1000, 0, 0o644, D1, ANY_VERSION)
    assert isinstance(result, Reserved)
    # Within one share, identical content is stored once.
    assert isinstance(store.reserve(0, "alice", "copy", 1000, 0, 0o644, D1, ANY_VERSION), Linked)
    check_invariants(store)


def test_the_index_has_a_limit_even_for_empty_files():
    store = Store(64 * 1024, max_entries=3)
    for n in range(3):
        upload(store, "s", f"empty{n}", 0, D2)
    refused = store.reserve(0, "s", "one-more", 0, 0, 0o644, D2, ANY_VERSION)
    assert isinstance(refused, Refused) and refused.status == InitStatus.NO_SPACE
    assert "--max-files" in refused.message
    upload(store, "s", "empty0", 0, D2)  # rewriting a known path needs no new entry


def test_uploads_in_progress_to_new_paths_count_against_the_index_limit():
    """Pipelined uploads reserve many new paths at once: they must not overshoot --max-files."""
    store = Store(64 * 1024, max_entries=3)
    upload(store, "s", "known", 10, D1)
    results = [store.reserve(0, "s", f"new{n}", 10, 0, 0o644, None, ANY_VERSION)
               for n in range(50)]  # fmt: skip
    assert [type(r) for r in results] == [Reserved, Reserved] + [Refused] * 48
    assert isinstance(store.reserve(0, "s", "known", 10, 0, 0o644, None, ANY_VERSION), Reserved)
    store.abort(0, results[0].ticket)  # a new path given up frees its place
    assert isinstance(store.reserve(0, "s", "new49", 10, 0, 0o644, None, ANY_VERSION), Reserved)
    assert store.drop_owner(0) == 3 and store.new_paths == 0
    check_invariants(store)


@pytest.mark.parametrize("keep", [0, 2], ids=["no-versions", "2-versions-and-a-quota"])
@pytest.mark.parametrize("seed", range(20))
def test_invariants_hold_under_random_operations(seed, keep):
    rng = random.Random(seed)
    store = Store(64 * 64 * 8, quota=1600 if keep else 0, keep_versions=keep)
    tickets: list[tuple[int, int, str, str, bytes]] = []
    leases: list[tuple[int, int]] = []
    for _ in range(400):
        op = rng.random()
        owner, share = rng.randrange(2), rng.choice(["a", "b"])
        path = f"p{rng.randrange(6)}"
        digest = bytes([rng.randrange(3)]) * 16
        if op < 0.3:
            size = rng.choice([0, 1, 64, 65, 200, 700])
            result = store.reserve(owner, share, path, size, 0, 0, rng.choice([None, digest]),
                                   ANY_VERSION)  # fmt: skip
            if isinstance(result, Reserved):
                tickets.append((owner, result.ticket, share, path, digest))
        elif op < 0.5 and tickets:
            owner, ticket, share, path, digest = tickets.pop(rng.randrange(len(tickets)))
            store.commit(owner, ticket, share, path, 0, 0, digest,
                         rng.choice([ANY_VERSION, 0, 1, 2]))  # fmt: skip
        elif op < 0.55 and tickets:
            owner, ticket, *_ = tickets.pop(rng.randrange(len(tickets)))
            store.abort(owner, ticket)
        elif op < 0.7:
            result = store.open(owner, share, path)
            if isinstance(result, Opened):
                leases.append((owner, result.lease))
        elif op < 0.8 and leases:
            store.release(*leases.pop(rng.randrange(len(leases))))
        elif op < 0.84 and keep:
            found = store.history(share, path, 0, 100)
            if not isinstance(found, Refused):
                versions = [v.version for v in found[0] if v.size]
                if versions:
                    store.restore_version(share, path, rng.choice(versions), ANY_VERSION)
        elif op < 0.85 and keep:
            store.prune_versions(rng.choice([0.0, time.time() + 1]))
        elif op < 0.9:
            store.delete(share, path, rng.choice([ANY_VERSION, 1, 2, 3]))
        else:
            store.drop_owner(owner)
            tickets = [t for t in tickets if t[0] != owner]
            leases = [lease for lease in leases if lease[0] != owner]
        check_invariants(store)
