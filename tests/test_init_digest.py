"""The digest in ``FileSyncInit`` is only a hint for deduplication (docs/PROTOCOL.md 3.3 type 3,
5.2, 5.3): it decides ALREADY_HAVE_CONTENT and nothing else. The bytes are verified against the
CheckHash digest, even when that differs from the Init digest on the first attempt, and what is
committed carries the digest the server computed; the Init digest is never stored."""

from __future__ import annotations

import os

import xxhash

from common import messages as m
from common.limits import ANY_VERSION
from fsclient import Client
from tests.conftest import run
from tests.rawclient import RawClient


def test_the_init_digest_decides_deduplication_only(server, tmp_path):
    announced, sent = os.urandom(5000), os.urandom(5000)
    claimed, actual = xxhash.xxh3_128_digest(announced), xxhash.xxh3_128_digest(sent)
    raw = RawClient(server.address)
    try:
        raw.send(m.FileSyncInit(1, len(sent), 0, 0o644, ANY_VERSION, claimed, "a.bin"))
        assert raw.expect(m.FileSyncInitResponse).status is m.InitStatus.ACCEPTED
        raw.send_raw(raw.conn.frame_data(1, memoryview(sent)))
        raw.send(m.FileSyncCheckHash(1, actual))  # not the digest the Init gave
        assert raw.expect(m.FileSyncCheckHashResponse) == m.FileSyncCheckHashResponse(
            1, m.HashStatus.OK, actual
        )
        version = raw.expect(m.FileSyncFinish).version
        # nothing is stored under the Init's digest: it is not deduplicated ...
        raw.send(m.FileSyncInit(2, len(sent), 0, 0o644, ANY_VERSION, claimed, "b.bin"))
        assert raw.expect(m.FileSyncInitResponse).status is m.InitStatus.ACCEPTED
        raw.send(m.FileSyncCancel(2))
        # ... while the digest of the bytes the server verified is
        raw.send(m.FileSyncInit(3, len(sent), 0, 0o644, ANY_VERSION, actual, "c.bin"))
        assert raw.expect(m.FileSyncInitResponse).status is m.InitStatus.ALREADY_HAVE_CONTENT
        assert raw.expect(m.FileSyncFinish).version > version
    finally:
        raw.close()

    async def read_back() -> m.FileEntry:
        async with await Client.connect(server.address) as client:
            entry = await client.stat("a.bin")
            await client.get("a.bin", tmp_path / "a.bin")
            assert [e.path for e in await client.ls()] == ["a.bin", "c.bin"]
            return entry

    entry = run(read_back())
    assert (entry.version, entry.digest) == (version, actual)
    assert (tmp_path / "a.bin").read_bytes() == sent
