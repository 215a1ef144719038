"""``BlobTable``: the stored contents of every share, found by (share, digest, size).

A dict keyed by that tuple paid a 64-byte tuple per blob. Here each share has a dict keyed by
the digest alone (the very bytes object the ``Blob`` holds); the size is checked on lookup.
Two contents with one digest and different sizes (an XXH3 collision) would both be kept: the
second in a small dict keyed by the whole tuple, looked at only when not empty.
"""

from __future__ import annotations

from collections.abc import Iterator

from fsserver.store.records import Blob, BlobKey

SHARED_SIZES = 1 << 16
"""Sizes below this are one int object each, shared by every blob of that size: small files
are where a per-file cost shows, and each int above 256 is 32 bytes of its own."""
_sizes: dict[int, int] = {}


def shared_size(size: int) -> int:
    """*size*, as the one int object of that value when it is small."""
    return _sizes.setdefault(size, size) if size < SHARED_SIZES else size


class BlobTable:
    __slots__ = ("_count", "_odd", "_shares")

    def __init__(self) -> None:
        self._shares: dict[str, dict[bytes, Blob]] = {}
        self._odd: dict[BlobKey, Blob] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def get(self, key: BlobKey) -> Blob | None:
        share, digest, size = key
        by_digest = self._shares.get(share)
        blob = by_digest.get(digest) if by_digest is not None else None
        if blob is not None and blob.size == size:
            return blob
        return self._odd.get(key) if self._odd else None

    def __getitem__(self, key: BlobKey) -> Blob:
        blob = self.get(key)
        if blob is None:
            raise KeyError(key)
        return blob

    def __contains__(self, key: BlobKey) -> bool:
        return self.get(key) is not None

    def __setitem__(self, key: BlobKey, blob: Blob) -> None:
        share, digest, _ = key
        by_digest = self._shares.setdefault(share, {})
        held = by_digest.get(digest)
        if held is None:
            by_digest[digest] = blob
        elif held.size == blob.size:
            by_digest[digest] = blob
            return
        else:
            if key in self._odd:
                self._odd[key] = blob
                return
            self._odd[key] = blob
        self._count += 1

    def __delitem__(self, key: BlobKey) -> None:
        share, digest, size = key
        by_digest = self._shares.get(share)
        held = by_digest.get(digest) if by_digest is not None else None
        if held is not None and held.size == size:
            del by_digest[digest]  # type: ignore[union-attr]
            if not by_digest:
                del self._shares[share]
        else:
            del self._odd[key]
        self._count -= 1

    def values(self) -> Iterator[Blob]:
        for by_digest in self._shares.values():
            yield from by_digest.values()
        yield from self._odd.values()
