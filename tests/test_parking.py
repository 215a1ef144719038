"""Uploads cut short, parked in the store to be resumed (fsserver/store/parking.py), as pure
logic: what resumes what, what is given up and when, and the store's invariants throughout."""

from __future__ import annotations

import random

import pytest

from common.limits import ANY_VERSION
from common.messages import InitStatus
from fsserver.store import Busy, Committed, Linked, Refused, Reserved, Store
from fsserver.store.parking import RESUME_MIN
from fsserver.store.staging import arena_size, staging_base
from tests.test_store import check_invariants

MiB = 1 << 20
D1, D2 = b"\x01" * 16, b"\x02" * 16


def reserve(store: Store, path: str = "big.bin", size: int = 4 * MiB, mtime: int = 7,
            digest: bytes | None = None, owner: int = 0, share: str = "s",
            resume: bool = True) -> Reserved | Linked | Refused | Busy:  # fmt: skip
    return store.reserve(owner, share, path, size, mtime, 0o644, digest, ANY_VERSION, 0, resume)


def cut(store: Store, done: int, **kwargs: object) -> Reserved:
    """An upload that received *done* bytes, then lost its connection."""
    reserved = reserve(store, **kwargs)  # type: ignore[arg-type]
    assert isinstance(reserved, Reserved)
    store.park(0, reserved.ticket, done)
    check_invariants(store)
    return reserved


def test_the_same_upload_takes_its_parked_extent_back():
    store = Store(16 * MiB)
    first = cut(store, 3 * MiB)
    assert store.parked_bytes == 4 * MiB == store.allocator.used_bytes
    assert store.reserved == {}, "a parked upload counts against no quota"
    again = reserve(store)
    assert isinstance(again, Reserved)
    assert (again.offset, again.held) == (first.offset, 3 * MiB)
    assert store.parked_bytes == 0 and store.reserved == {"s": 4 * MiB}
    committed = store.commit(0, again.ticket, "s", "big.bin", 7, 0o644, D1, ANY_VERSION)
    assert isinstance(committed, Committed)
    check_invariants(store)
    assert store.allocator.used_bytes == 4 * MiB


@pytest.mark.parametrize(
    "other",
    [{"path": "other.bin"}, {"size": 5 * MiB}, {"mtime": 8}, {"share": "t"}],
    ids=["path", "size", "mtime", "share"],
)
def test_another_file_does_not_resume_it(other):
    store = Store(16 * MiB)
    cut(store, 3 * MiB)
    fresh = reserve(store, **other)
    assert isinstance(fresh, Reserved) and fresh.held == 0
    assert store.parked_bytes == 4 * MiB  # still there for the right upload
    check_invariants(store)


def test_digests_that_differ_give_the_parked_bytes_up():
    store = Store(16 * MiB)
    cut(store, 3 * MiB, digest=D1)
    fresh = reserve(store, digest=D2)
    assert isinstance(fresh, Reserved) and fresh.held == 0
    assert store.parked_bytes == 0 and store.allocator.used_bytes == 4 * MiB
    check_invariants(store)


@pytest.mark.parametrize(("before", "after"), [(D1, None), (None, D1), (D1, D1)])
def test_a_digest_given_once_or_alike_resumes(before, after):
    store = Store(16 * MiB)
    cut(store, 3 * MiB, digest=before)
    again = reserve(store, digest=after)
    assert isinstance(again, Reserved) and again.held == 3 * MiB


def test_content_already_stored_drops_the_parked_bytes():
    store = Store(16 * MiB)
    cut(store, 3 * MiB, digest=D1)
    done = reserve(store, path="a.bin", digest=D1)  # meanwhile, the same content elsewhere
    assert isinstance(done, Reserved)
    store.commit(0, done.ticket, "s", "a.bin", 7, 0o644, D1, ANY_VERSION)
    assert isinstance(reserve(store, digest=D1), Linked)
    assert store.parked_bytes == 0 and store.allocator.used_bytes == 4 * MiB
    check_invariants(store)


def test_small_uploads_and_empty_ones_are_not_parked():
    store = Store(16 * MiB)
    cut(store, RESUME_MIN // 2, size=RESUME_MIN - 64)
    cut(store, 0)
    assert store.parked == {} and store.allocator.used_bytes == 0


def test_while_the_same_upload_is_in_progress_the_answer_is_busy():
    """The old connection may have ended without its worker telling the store yet."""
    store = Store(16 * MiB)
    live = reserve(store)
    assert isinstance(live, Reserved)
    assert reserve(store) == Busy()
    fresh = reserve(store, resume=False)  # the worker's last try: a fresh upload
    assert isinstance(fresh, Reserved) and fresh.offset != live.offset
    store.park(0, live.ticket, 2 * MiB)
    store.abort(0, fresh.ticket)
    again = reserve(store)
    assert isinstance(again, Reserved) and again.held == 2 * MiB
    check_invariants(store)


def test_a_dead_worker_leaves_what_it_last_reported():
    store = Store(16 * MiB)
    live = reserve(store, owner=1)
    assert isinstance(live, Reserved)
    store.progress(1, live.ticket, 2 * MiB)
    store.progress(0, live.ticket, 3 * MiB)  # not its worker: ignored
    assert store.drop_owner(1) == 1
    again = reserve(store)
    assert isinstance(again, Reserved) and again.held == 2 * MiB
    store.progress(0, again.ticket, 0)  # a mismatch: the retry starts over
    assert store.drop_owner(0) == 1
    assert store.parked == {} and store.allocator.used_bytes == 0, "nothing known: freed"


def test_of_two_cut_uploads_of_the_same_file_the_one_further_along_is_kept():
    store = Store(16 * MiB)
    first = reserve(store)
    second = reserve(store, resume=False)
    assert isinstance(first, Reserved) and isinstance(second, Reserved)
    store.park(0, first.ticket, 1 * MiB)
    store.park(0, second.ticket, 3 * MiB)
    assert store.allocator.used_bytes == 4 * MiB
    again = reserve(store)
    assert isinstance(again, Reserved) and (again.offset, again.held) == (second.offset, 3 * MiB)
    check_invariants(store)


def test_parked_extents_are_given_up_oldest_first_when_space_is_needed():
    store = Store(10 * MiB)
    old = cut(store, MiB, path="old.bin")
    cut(store, MiB, path="new.bin")
    needed = reserve(store, path="third.bin", size=3 * MiB)
    assert isinstance(needed, Reserved) and needed.offset == old.offset
    assert [key[1] for key in store.parked] == ["new.bin"]
    check_invariants(store)
    full = reserve(store, path="huge.bin", size=8 * MiB)
    assert isinstance(full, Refused) and full.status == InitStatus.NO_SPACE
    assert store.parked == {}, "all given up, and still no room"
    check_invariants(store)


def test_a_batch_of_small_files_may_take_parked_space():
    store = Store(5 * MiB)
    store.arena = memoryview(bytearray(arena_size(store.size, 1)))
    cut(store, MiB)
    items = [(staging_base(store.size, 0), f"f{n}", 64 * 1024, 0, 0o644, bytes([n]) * 16,
              ANY_VERSION) for n in range(20)]  # fmt: skip
    done = store.store_many(0, "s", items)
    assert done.refused == {} and store.parked == {}
    check_invariants(store)


def test_parked_extents_expire():
    store = Store(16 * MiB, park_seconds=60)
    cut(store, MiB)
    assert store.expire_parked(now=0) == 0
    assert store.expire_parked(now=store.parked[next(iter(store.parked))].since + 60) == 1
    assert store.parked == {} and store.allocator.used_bytes == 0


@pytest.mark.parametrize("seed", range(10))
def test_invariants_hold_with_parking_under_random_operations(seed):
    rng = random.Random(seed)
    store = Store(24 * MiB)
    live: list[tuple[int, int]] = []
    for _ in range(300):
        op = rng.random()
        owner = rng.randrange(2)
        if op < 0.35:
            result = reserve(store, path=f"p{rng.randrange(3)}", size=rng.choice([MiB, 3 * MiB]),
                             digest=rng.choice([None, D1]), owner=owner,
                             resume=rng.random() < 0.8)  # fmt: skip
            if isinstance(result, Reserved):
                live.append((owner, result.ticket))
        elif op < 0.5 and live:
            owner, ticket = live[rng.randrange(len(live))]
            store.progress(owner, ticket, rng.randrange(3 * MiB))
        elif op < 0.7 and live:
            owner, ticket = live.pop(rng.randrange(len(live)))
            store.park(owner, ticket, rng.randrange(3 * MiB + 1))
        elif op < 0.8 and live:
            owner, ticket = live.pop(rng.randrange(len(live)))
            store.abort(owner, ticket)
        elif op < 0.9 and live:
            owner, ticket = live.pop(rng.randrange(len(live)))
            store.commit(owner, ticket, "s", "x", 0, 0, bytes([rng.randrange(3)]) * 16,
                         ANY_VERSION)  # fmt: skip
        elif op < 0.95:
            store.drop_owner(owner)
            live = [t for t in live if t[0] != owner]
        else:
            store.expire_parked(now=rng.choice([0.0, 1e12]))
        check_invariants(store)
