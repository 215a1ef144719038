"""XXH3-128 digests: the one hash FS uses to verify and to deduplicate content.

The wire form is the canonical big-endian 16 bytes that ``xxh3_128_digest`` returns (seed 0).
xxhash hashes any buffer-protocol object, so callers pass memoryviews, never copies.
"""

from typing import Final, TypeAlias

import xxhash

from common.limits import DIGEST_SIZE

StreamingDigest = xxhash.xxh3_128
"""Incremental form: ``StreamingDigest()``, ``.update(view)``, ``.digest()``."""

EMPTY_DIGEST: Final = xxhash.xxh3_128_digest(b"")
assert len(EMPTY_DIGEST) == DIGEST_SIZE

Buffer: TypeAlias = bytes | bytearray | memoryview


def digest_of(data: Buffer) -> bytes:
    """One-shot XXH3-128 of a buffer (bytes, memoryview, mmap slice) without copying it."""
    return xxhash.xxh3_128_digest(data)


def digest_hex(digest: bytes) -> str:
    return digest.hex()
