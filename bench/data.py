"""The bytes every benchmark moves: one big random file and a folder of small random files.

The big file is written once and read back once so it sits in the page cache. FS deduplicates
by digest, so before each FS upload ``retag`` overwrites its first bytes with a run-unique tag:
the content is new to the server every time (and the page cache stays warm). The small files
get fresh random content each round for the same reason.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from common.digest import StreamingDigest, digest_of

WRITE_CHUNK = 8 << 20
TAG_BYTES = 16


def file_digest(path: Path) -> bytes:
    """XXH3-128 of a file, read in chunks (the FS digest, for checks outside the timing)."""
    hasher = StreamingDigest()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(WRITE_CHUNK):
            hasher.update(chunk)
    return hasher.digest()


def empty_dir(path: Path) -> None:
    """Remove everything inside *path* (creating it if missing)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)


@dataclass
class Workload:
    big: Path
    big_size: int
    small_dir: Path
    small_count: int
    small_size: int

    @classmethod
    def create(cls, workdir: Path, big_size: int, small_count: int, small_size: int) -> Workload:
        big = workdir / "big.bin"
        with open(big, "wb", buffering=0) as f:
            left = big_size
            while left:
                chunk = os.urandom(min(WRITE_CHUNK, left))
                f.write(chunk)
                left -= len(chunk)
        work = cls(big, big_size, workdir / "small", small_count, small_size)
        file_digest(big)  # read it once: page-cached from now on
        work.refresh_small()
        return work

    def retag(self) -> bytes:
        """Make the big file's content new to the server (random first bytes); returns its
        digest."""
        with open(self.big, "r+b", buffering=0) as f:
            f.write(os.urandom(TAG_BYTES))
        return file_digest(self.big)

    def read_big(self) -> bytes:
        return self.big.read_bytes()

    def small_names(self) -> list[str]:
        return [f"f{i:05d}.bin" for i in range(self.small_count)]

    def refresh_small(self) -> dict[str, bytes]:
        """New random content for every small file; returns name -> digest."""
        empty_dir(self.small_dir)
        digests: dict[str, bytes] = {}
        for name in self.small_names():
            data = os.urandom(self.small_size)
            (self.small_dir / name).write_bytes(data)
            digests[name] = digest_of(data)
        return digests
