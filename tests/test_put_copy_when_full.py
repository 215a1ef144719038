"""A copy of stored content fits even when the store has no room for a second copy: a big
file streams unhashed, so after a ``NO_SPACE`` the client hashes it and offers it again, and
the server links the content it holds (issue 12)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.cli import fsclient

BIG = 80 << 20
"""Over the client's prehash limit (64 MiB): hashed while it streams."""


def listed(server, path: str) -> list[str]:
    result = fsclient("ls", path, "--json", server=server)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if f'"{path}"' in line]


def test_a_copy_of_a_stored_big_file_is_linked_when_the_store_has_no_room_for_it(
    tmp_path: Path, server_factory
):
    server = server_factory("--workers", "1", "--hash-workers", "1", "--store-size", "128MiB")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(BIG))
    first = fsclient("put", str(big), "big.bin", server=server)
    assert first.returncode == 0, first.stderr

    copy = fsclient("put", str(big), "big-copy.bin", server=server)

    assert copy.returncode == 0, copy.stderr
    assert "uploaded big-copy.bin" in copy.stdout
    digest = listed(server, "big.bin")[0].split('"digest": "')[1][:32]
    assert f'"digest": "{digest}"' in listed(server, "big-copy.bin")[0]
    back = tmp_path / "back.bin"
    got = fsclient("get", "big-copy.bin", str(back), server=server)
    assert got.returncode == 0, got.stderr
    assert back.read_bytes() == big.read_bytes()


def test_a_different_big_file_is_still_refused_for_lack_of_room(tmp_path: Path, server_factory):
    server = server_factory("--workers", "1", "--hash-workers", "1", "--store-size", "128MiB")
    first, other = tmp_path / "a.bin", tmp_path / "b.bin"
    first.write_bytes(os.urandom(BIG))
    other.write_bytes(os.urandom(BIG))
    assert fsclient("put", str(first), "a.bin", server=server).returncode == 0

    refused = fsclient("put", str(other), "b.bin", server=server)

    assert refused.returncode == 1
    assert "no space" in refused.stderr.lower() or "room" in refused.stderr.lower(), refused.stderr
    assert listed(server, "b.bin") == []
    assert len(listed(server, "a.bin")) == 1
