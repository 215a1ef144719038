"""Issue 12: shares. ``fsclient shares`` lists them; a share that does not exist is refused by
every command, naming it, unless ``--create-share`` (put, sync) makes it; a tokens file's
shares exist from the start; a share made empty survives a restart with ``--data-dir``."""

from __future__ import annotations

import json

from common import messages as m
from common.limits import DEFAULT_MAX_PACKET, MAGIC, PROTOCOL_VERSION
from fsclient import Client
from tests.cli import fsclient
from tests.conftest import run
from tests.rawclient import RawClient
from tests.secured import add_token
from tests.served import listing, stop_cleanly
from tests.serverproc import start_server

SMALL = ("--workers", "1", "--hash-workers", "1", "--store-size", "16MiB")


def refusal(share: str, creates: bool) -> str:
    hint = "fsclient shares lists them; --create-share makes it" if creates else (
        "fsclient shares lists them")  # fmt: skip
    return f"fsclient: error: no share {share!r} on the server ({hint})\n"


def test_shares_lists_the_default_share_and_the_ones_made(server, tmp_path):
    first = fsclient("shares", server=server)
    assert (first.returncode, first.stdout, first.stderr) == (0, "default\t0\t0\n", "")
    local = tmp_path / "a.txt"
    local.write_text("hello")
    made = fsclient("put", str(local), "a.txt", "--share", "photos", "--create-share",
                    server=server)  # fmt: skip
    assert made.returncode == 0, made.stderr
    again = fsclient("shares", server=server)
    assert again.stdout == "default\t0\t0\nphotos\t1\t5\n"
    as_json = fsclient("shares", "--json", server=server)
    assert [json.loads(line) for line in as_json.stdout.splitlines()] == [
        {"name": "default", "files": 0, "bytes": 0},
        {"name": "photos", "files": 1, "bytes": 5},
    ]


def test_a_typo_in_share_is_refused_with_its_name(server, tmp_path):
    local = tmp_path / "a.txt"
    local.write_text("hello")
    put = fsclient("put", str(local), "a.txt", "--share", "photso", server=server)
    assert (put.returncode, put.stdout, put.stderr) == (1, "", refusal("photso", True))
    for args in (("ls",), ("get", "a.txt", str(tmp_path / "b.txt")), ("rm", "a.txt")):
        read = fsclient(*args, "--share", "photso", server=server)
        assert (read.returncode, read.stdout, read.stderr) == (1, "", refusal("photso", False))
    env = fsclient("ls", server=server, env={"FS_SHARE": "photso"})
    assert (env.returncode, env.stderr) == (1, refusal("photso", False))
    assert fsclient("shares", server=server).stdout == "default\t0\t0\n"  # nothing was made
    assert not (tmp_path / "b.txt").exists()
    made = fsclient("put", str(local), "a.txt", "--share", "photso", "--create-share",
                    server=server)  # fmt: skip
    assert made.returncode == 0, made.stderr
    later = fsclient("put", str(local), "b.txt", "--share", "photso", server=server)
    assert later.returncode == 0, later.stderr  # it exists now: no flag needed
    assert listing(server, "photso") == ["a.txt", "b.txt"]


def test_sync_to_a_new_share_needs_create_share(server, tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "a.txt").write_text("a")
    typo = fsclient("sync", str(folder), "--once", "--share", "docz", server=server)
    assert (typo.returncode, typo.stdout, typo.stderr) == (1, "", refusal("docz", True))
    assert fsclient("shares", server=server).stdout == "default\t0\t0\n"
    # the folder never synced, so it is not tied to the refused share
    made = fsclient("sync", str(folder), "--once", "--share", "docs", "--create-share",
                    server=server)  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert listing(server, "docs") == ["a.txt"]
    again = fsclient("sync", str(folder), "--once", server=server)
    assert again.returncode == 0, again.stderr
    assert f"with {server.address}/docs:" in again.stdout


def test_the_shares_of_a_tokens_file_exist_from_the_start(server_factory, tmp_path):
    tokens = tmp_path / "tokens.toml"
    token = add_token(tokens, "laptop", "docs", "photos")
    other = add_token(tokens, "phone", "music")
    server = server_factory(*SMALL, "--tokens", str(tokens))
    listed = fsclient("shares", "--share", "docs", "--token", token, server=server)
    assert (listed.returncode, listed.stdout, listed.stderr) == (
        0, "docs\t0\t0\nphotos\t0\t0\n", "")  # fmt: skip
    empty = fsclient("ls", "--share", "photos", "--token", token, server=server)
    assert (empty.returncode, empty.stdout, empty.stderr) == (0, "", "")
    local = tmp_path / "a.txt"
    local.write_text("abc")
    put = fsclient("put", str(local), "a.txt", "--share", "photos", "--token", token,
                   server=server)  # fmt: skip
    assert put.returncode == 0, put.stderr
    theirs = fsclient("shares", "--share", "music", "--token", other, server=server)
    assert theirs.stdout == "music\t0\t0\n"  # only what the token opens
    ours = fsclient("shares", "--share", "docs", "--token", token, server=server)
    assert ours.stdout == "docs\t0\t0\nphotos\t1\t3\n"


def test_an_empty_share_survives_a_restart_with_a_data_dir(tmp_path):
    data = tmp_path / "data"
    args = (*SMALL, "--data-dir", str(data), "--fsync", "always")

    async def make_empty(address: str) -> None:
        async with await Client.connect(address, "empty", create_share=True) as client:
            assert await client.ls() == []

    server = start_server(*args)
    try:
        run(make_empty(server.address))
    finally:
        stop_cleanly(server)
    again = start_server(*args)
    try:
        listed = fsclient("shares", server=again)
        assert (listed.returncode, listed.stdout) == (0, "default\t0\t0\nempty\t0\t0\n")
        empty = fsclient("ls", "--share", "empty", server=again)
        assert (empty.returncode, empty.stdout, empty.stderr) == (0, "", "")
    finally:
        stop_cleanly(again)


def test_the_handshake_flag_on_the_wire(server):
    """Section 1.6 of docs/PROTOCOL.md: with EXISTING_SHARE a missing share is NO_SUCH_SHARE
    and the server closes; a handshake without the flags byte (the seed's) still makes it."""
    flagged = RawClient(server.address, handshake=False)
    try:
        flagged.send(m.VersionHandshake(MAGIC, PROTOCOL_VERSION, DEFAULT_MAX_PACKET, "raw",
                                        "fresh", b"", m.HandshakeFlags.EXISTING_SHARE))  # fmt: skip
        hello = flagged.expect(m.VersionHandshakeResponse)
        assert (hello.status, hello.message) == (
            m.HandshakeStatus.NO_SUCH_SHARE, "no share 'fresh' on the server")  # fmt: skip
        assert flagged.error_or_close() is None  # closed, no Error packet
    finally:
        flagged.close()
    seed = RawClient(server.address, share="fresh")
    try:
        assert seed.hello is not None and seed.hello.status is m.HandshakeStatus.OK
        seed.send(m.ShareListRequest(1, ""))
        listed = seed.expect(m.ShareListResponse)
        assert listed == m.ShareListResponse(
            1, False, (m.ShareInfo(0, 0, "default"), m.ShareInfo(0, 0, "fresh")))  # fmt: skip
        seed.send(m.ShareListRequest(2, "default"))
        assert [s.name for s in seed.expect(m.ShareListResponse).shares] == ["fresh"]
    finally:
        seed.close()
