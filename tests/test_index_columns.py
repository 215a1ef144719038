"""The compact parts of the store's index (issue 13): ``VersionLog`` answers "what changed
since N" like the sorted dict it replaced, under random adds and removes; ``BlobTable`` finds
contents by (share, digest, size) like the dict it replaced, digest collisions included;
``Entry`` packs its fields without losing any."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsserver.store.blobtable import BlobTable
from fsserver.store.records import Blob, NamedBlob
from fsserver.store.share import Entry
from fsserver.store.versionlog import CHUNK, VersionLog


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 3000)), max_size=3000))
def test_the_version_log_holds_each_paths_latest_version_in_order(steps):
    """Each step writes a path (a new version) or, for an odd number, deletes one the log
    holds; ``since`` then agrees with a plain dict at every cut."""
    log, model = VersionLog(), {}
    latest: dict[str, int] = {}
    seq = 0
    for path_no, pick in steps:
        path = f"p{path_no}"
        if pick % 7 == 0 and latest:
            gone = sorted(latest)[pick % len(latest)]
            log.remove(latest.pop(gone))
            del model[next(v for v, p in model.items() if p == gone)]
            continue
        seq += 1
        if path in latest:
            log.remove(latest[path])
            del model[latest[path]]
        log.add(seq, path)
        latest[path] = seq
        model[seq] = path
    assert len(log) == len(model)
    assert log.last == max(model, default=0)
    for cut in (0, seq // 3, seq // 2, seq - 1, seq):
        assert list(log.since(cut)) == sorted((v, p) for v, p in model.items() if v > cut)


def test_the_version_log_keeps_few_chunks_when_most_versions_move_on():
    """Rewriting the same paths again and again leaves holes behind; compaction and merging
    keep the chunks about as many as the live versions need."""
    log = VersionLog()
    for version in range(1, 10 * CHUNK + 1):
        log.add(version, f"p{version % 100}")
        if version > 100:
            log.remove(version - 100)
    assert len(log) == 100
    assert len(log._chunks) <= 3
    assert [v for v, _ in log.since(0)] == list(range(10 * CHUNK - 99, 10 * CHUNK + 1))


def test_the_version_log_refuses_a_version_it_does_not_hold():
    log = VersionLog([(1, "a"), (2, "b")])
    log.remove(1)
    for version in (0, 1, 3):
        with pytest.raises(KeyError):
            log.remove(version)


def test_the_blob_table_finds_contents_by_share_digest_and_size():
    table = BlobTable()
    a = NamedBlob(b"d" * 16, 10, 0, share="s")
    twin = NamedBlob(b"d" * 16, 11, 64, share="s")  # same digest, another size: a collision
    other = NamedBlob(b"d" * 16, 10, 128, share="t")  # same content, another share: never shared
    for blob in (a, twin, other):
        table[blob.key] = blob
    assert len(table) == 3
    assert table[("s", b"d" * 16, 10)] is a and table.get(("s", b"d" * 16, 11)) is twin
    assert table.get(("t", b"d" * 16, 10)) is other and table.get(("u", b"d" * 16, 10)) is None
    assert sorted(b.offset for b in table.values()) == [0, 64, 128]
    del table[a.key]
    assert table.get(a.key) is None and table.get(twin.key) is twin and len(table) == 2
    del table[twin.key], table[other.key]
    assert len(table) == 0 and list(table.values()) == []
    with pytest.raises(KeyError):
        del table[a.key]


def test_a_memory_only_store_pays_four_slots_a_blob():
    """Its share is the one the index finds it under, and it has no name on disk: a blob of
    a memory-only store is 64 bytes, one with a data dir keeps both (80)."""
    assert sys.getsizeof(Blob(b"d" * 16, 5, 0)) <= 64 < sys.getsizeof(NamedBlob(b"d" * 16, 5, 0))
    assert Blob(b"d" * 16, 5, 0).id == 0 and NamedBlob(b"d" * 16, 5, 0, share="s", id=7).key == (
        "s", b"d" * 16, 5,
    )  # fmt: skip


@pytest.mark.parametrize("mtime_ns", [0, -1, 1_765_000_000 * 10**9, -(1 << 63), (1 << 63) - 1])
def test_an_entry_packs_its_fields_without_loss(mtime_ns):
    blob = Blob(b"d" * 16, 5, 0)
    entry = Entry((1 << 48) - 1, mtime_ns, 0o100755, blob)
    assert (entry.version, entry.mtime_ns, entry.mode, entry.blob) == (
        (1 << 48) - 1, mtime_ns, 0o100755, blob,
    )  # fmt: skip
    record = entry.record("a/b")
    assert (record.size, record.version, record.mtime_ns, record.mode, record.digest) == (
        5, (1 << 48) - 1, mtime_ns, 0o100755, b"d" * 16,
    )  # fmt: skip
    assert Entry(1, mtime_ns, 0o644, None).record("x").digest == bytes(16)
