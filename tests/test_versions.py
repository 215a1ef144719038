"""Kept versions (``--keep-versions``, ``--keep-days``): ``fsclient history``, ``restore`` and
``ls --deleted`` against real servers, a restore reaching a live sync client, retention by
count, age, quota and room, and the versions surviving a restart with a data dir."""

from __future__ import annotations

import json

import pytest
import xxhash

from common.errors import InvalidPath, NotFound, PermissionDenied
from common.limits import ANY_VERSION
from fsclient import Client
from fsclient.access import Access
from fsserver.store import Refused, Reserved, Store
from tests.cli import fsclient
from tests.conftest import run
from tests.secured import add_token
from tests.serverproc import start_server, wait_for
from tests.syncproc import SyncProcess, files


def content(i: int) -> bytes:
    return f"version {i} of the report\n".encode() * (i + 1)


def history(server, path: str, *auth: str) -> list[dict]:
    done = fsclient("history", path, "--json", *auth, server=server)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def put_all(address: str, items: list[tuple[str, bytes]], token: str = "") -> None:
    async def go() -> None:
        async with await Client.connect(address, access=Access(token)) as client:
            for path, data in items:
                await client.put_bytes(data, path)

    run(go())


def test_twelve_overwrites_and_a_delete_keep_the_last_ten_and_restore_reaches_a_sync_client(
    tmp_path, server_factory
):
    tokens = tmp_path / "tokens.toml"
    token = add_token(tokens, "laptop", "default")
    server = server_factory("--store-size", "16MiB", "--tokens", str(tokens))
    auth = ("--token", token)
    put_all(server.address, [("docs/report.txt", content(i)) for i in range(13)], token)
    assert fsclient("rm", "docs/report.txt", *auth, server=server).returncode == 0

    shown = history(server, "docs/report.txt", *auth)
    assert shown[0]["state"] == "deleted" and shown[0]["size"] == 0
    kept = shown[1:]
    assert len(kept) == 10 and all(v["state"] == "kept" for v in kept)
    assert [v["digest"] for v in kept] == [xxhash.xxh3_128_digest(content(i)).hex()
                                           for i in range(12, 2, -1)]  # fmt: skip
    assert all(v["writer"] == "laptop" and v["written"] != "-" for v in shown)
    versions = [v["version"] for v in shown]
    assert versions == sorted(versions, reverse=True)

    deleted = fsclient("ls", "--deleted", *auth, server=server)
    assert deleted.returncode == 0 and deleted.stdout.split("\t")[0] == "docs/report.txt"

    (tmp_path / "laptop").mkdir()
    sync = SyncProcess(tmp_path / "laptop", server.address, extra=auth).start()
    try:
        wait_for(lambda: not files(sync.folder), 5, "the first sync pass")
        chosen = kept[4]  # content(8)
        restored = fsclient("restore", "docs/report.txt", "--version", str(chosen["version"]),
                            *auth, server=server)  # fmt: skip
        assert restored.returncode == 0, restored.stderr
        assert f"version {chosen['version']} as version" in restored.stdout
        after = history(server, "docs/report.txt", *auth)
        assert after[0]["state"] == "current" and after[0]["digest"] == chosen["digest"]
        assert after[0]["version"] > versions[0]  # a new version, not the old one in place
        wait_for(lambda: files(sync.folder).get("docs/report.txt") == content(8), 20,
                 "the sync client to receive the restored file")  # fmt: skip
    finally:
        sync.stop()

    to = tmp_path / "old.txt"
    back = fsclient("restore", "docs/report.txt", "--version", str(kept[-1]["version"]),
                    "--to", str(to), *auth, server=server)  # fmt: skip
    assert back.returncode == 0, back.stderr
    assert to.read_bytes() == content(3)
    assert history(server, "docs/report.txt", *auth)[0]["version"] == after[0]["version"]


def test_count_age_and_quota_each_give_up_old_versions(server_factory):
    server = server_factory("--store-size", "16MiB", "--keep-versions", "3",
                            "--share-quota", "100KiB")  # fmt: skip
    big = [bytes([i]) * (20 << 10) for i in range(5)]
    put_all(server.address, [("a.bin", data) for data in big])  # 5 writes: 1 current, 3 kept
    shown = history(server, "a.bin")
    assert [v["digest"] for v in shown] == [
        xxhash.xxh3_128_digest(data).hex() for data in big[::-1][:4]
    ]
    assert server.metric('fs_share_kept_versions{share="default"}') == 3
    assert server.metric('fs_share_kept_bytes{share="default"}') == 3 * (20 << 10)

    # 20 KiB live + 60 KiB kept; 50 KiB more passes the 100 KiB quota by 30 KiB: the two
    # oldest kept versions give way
    put_all(server.address, [("b.bin", b"b" * (50 << 10))])
    assert [v["state"] for v in history(server, "a.bin")] == ["current", "kept"]
    assert server.metric('fs_share_kept_bytes{share="default"}') == 20 << 10

    aged = server_factory("--store-size", "16MiB", "--keep-days", "0.0001")  # 8.6 s
    put_all(aged.address, [("c.txt", b"one"), ("c.txt", b"two")])
    assert len(history(aged, "c.txt")) == 2
    wait_for(lambda: "gave up 1 versions" in aged.log.text(), 30, "the version aged out")
    assert [v["state"] for v in history(aged, "c.txt")] == ["current"]


def test_a_full_store_gives_up_kept_versions_for_new_files(server_factory):
    server = server_factory("--store-size", "8MiB")
    put_all(server.address, [("a.bin", b"1" * (3 << 20)), ("a.bin", b"2" * (3 << 20))])
    assert len(history(server, "a.bin")) == 2
    put_all(server.address, [("b.bin", b"3" * (3 << 20))])  # fits only without the old a.bin
    assert [v["state"] for v in history(server, "a.bin")] == ["current"]


def test_versions_survive_a_restart_with_a_data_dir(tmp_path):
    args = ("--store-size", "16MiB", "--data-dir", str(tmp_path / "data"))
    server = start_server(*args)
    try:
        put_all(server.address, [("n.txt", b"first"), ("n.txt", b"second"), ("gone.txt", b"x")])
        assert fsclient("rm", "gone.txt", server=server).returncode == 0
        before = history(server, "n.txt"), history(server, "gone.txt")
        server.stop()
        server = start_server(*args)
        assert (history(server, "n.txt"), history(server, "gone.txt")) == before
        restored = fsclient("restore", "gone.txt", server=server)
        assert restored.returncode == 0, restored.stderr
        out = tmp_path / "gone.txt"
        assert fsclient("get", "gone.txt", str(out), server=server).returncode == 0
        assert out.read_bytes() == b"x"
        server.stop()
        server = start_server(*args)  # the restore, and the deletion it replaced, stay too
        assert [v["state"] for v in history(server, "gone.txt")] == ["current", "kept"]
    finally:
        server.stop()
        server.kill_group()


def test_bad_version_requests_get_typed_refusals(tmp_path, server_factory):
    tokens = tmp_path / "tokens.toml"
    writer = add_token(tokens, "writer", "default")
    reader = add_token(tokens, "reader", "default", read_only=True)
    server = server_factory("--store-size", "16MiB", "--tokens", str(tokens))
    put_all(server.address, [("f.txt", b"one"), ("f.txt", b"two")], writer)

    async def go() -> None:
        async with await Client.connect(server.address, access=Access(reader)) as client:
            first = (await client.history("f.txt"))[1].version
            with pytest.raises(PermissionDenied):
                await client.restore("f.txt", first)
            with pytest.raises(NotFound):
                await client.history("never.txt")
            with pytest.raises(NotFound):
                await client.get("f.txt", tmp_path / "x", version=first + 100)
            with pytest.raises(InvalidPath):
                await client.history("../etc/passwd")
            await client.get("f.txt", tmp_path / "old", version=first)  # reading is allowed
            assert (tmp_path / "old").read_bytes() == b"one"
        async with await Client.connect(server.address, access=Access(writer)) as client:
            with pytest.raises(NotFound):
                await client.restore("f.txt", first + 100)

    run(go())
    usage = fsclient("restore", "f.txt", "--version", "0", "--token", writer, server=server)
    assert usage.returncode == 2 and "not a version number" in usage.stderr
    missing = fsclient("restore", "f.txt", "--version", "99", "--token", writer, server=server)
    assert missing.returncode == 1 and "has no version 99" in missing.stderr


def _put(store: Store, path: str, size: int, fill: int) -> None:
    """A verified upload of *size* bytes of content *fill* (a digest of its own)."""
    reserved = store.reserve(0, "s", path, size, 0, 0o644, None, ANY_VERSION)
    assert isinstance(reserved, Reserved), reserved
    store.commit(0, reserved.ticket, "s", path, 0, 0o644, bytes([fill]) * 16, ANY_VERSION)


def test_kept_versions_give_way_only_when_that_makes_the_room():
    """A full 768-byte arena: 256 live in a.bin and b.bin each, 256 kept of a.bin. An upload
    of 512 bytes could not fit even without the kept version: it is refused and the history
    stays. One of 256 fits once the kept version goes, and takes its place."""
    store = Store(768, keep_versions=10)
    _put(store, "a.bin", 256, 1)
    _put(store, "a.bin", 256, 2)
    _put(store, "b.bin", 256, 3)
    refused = store.reserve(0, "s", "c.bin", 512, 0, 0o644, None, ANY_VERSION)
    assert isinstance(refused, Refused)
    assert len(store.history("s", "a.bin", 0, 10)[0]) == 2  # current + kept: nothing lost
    _put(store, "c.bin", 256, 4)
    assert len(store.history("s", "a.bin", 0, 10)[0]) == 1


def test_a_write_cut_short_costs_no_kept_version():
    """Kept versions give way to the quota when a write is made, not when it is admitted."""
    store = Store(1 << 20, quota=1000, keep_versions=10)
    _put(store, "a.bin", 400, 1)
    _put(store, "a.bin", 400, 2)  # 400 live + 400 kept
    reserved = store.reserve(0, "s", "b.bin", 500, 0, 0o644, None, ANY_VERSION)
    assert isinstance(reserved, Reserved)  # 900 live: fits; 1,300 with the kept version
    store.abort(0, reserved.ticket)
    assert len(store.history("s", "a.bin", 0, 10)[0]) == 2
    _put(store, "b.bin", 500, 3)
    assert len(store.history("s", "a.bin", 0, 10)[0]) == 1
