"""Acceptance (issue 5): tokens and share isolation. Wrong, missing and revoked tokens are
refused before any file operation; a read-only token can get and ls but not put or rm; share
A's token sees nothing of share B; failed attempts are counted and slowed down, and the server
does not listen on a public address without tokens."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import tomllib

import pytest
import tomli_w
import xxhash

from common import messages as m
from common.codec import DATA_HEADER, encode
from common.errors import AuthError, ErrorCode, NotFound, PermissionDenied
from common.limits import ANY_VERSION, MAGIC, PROTOCOL_VERSION
from fsclient import Client
from fsclient.access import Access
from fsclient.protocol import ConnectionLost
from fsserver.auth import new_token
from tests.cli import fsclient, fsserver_tool
from tests.conftest import run
from tests.rawclient import Closed, RawClient
from tests.secured import add_token
from tests.serverproc import eventually, start_server, wait_for


@pytest.fixture
def tokens(tmp_path):
    return tmp_path / "tokens.toml"


async def connect(server, token: str, share: str = "default") -> Client:
    return await Client.connect(server.address, share, access=Access(token))


async def listing(server, token: str, share: str = "default") -> dict[str, int]:
    async with await connect(server, token, share) as client:
        return {entry.path: entry.version for entry in await client.ls()}


def test_add_token_prints_the_token_once_and_stores_only_its_hash(tokens):
    first = add_token(tokens, "laptop", "docs", "photos")
    second = add_token(tokens, "phone", "photos", read_only=True)
    assert first != second and len(first) >= 40
    text = tokens.read_text()
    assert first not in text and second not in text
    entries = {item["name"]: item for item in tomllib.loads(text)["token"]}
    assert entries["laptop"]["sha256"] == hashlib.sha256(first.encode()).hexdigest()
    assert entries["laptop"]["shares"] == ["docs", "photos"]
    assert (entries["laptop"]["read_only"], entries["phone"]["read_only"]) == (False, True)
    assert tokens.stat().st_mode & 0o777 == 0o600
    again = fsserver_tool("add-token", "laptop", "--tokens", str(tokens), "--share", "docs")
    assert again.returncode == 2 and "already has a token named 'laptop'" in again.stderr
    bad = fsserver_tool("add-token", "x", "--tokens", str(tokens), "--share", "../up")
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1
    assert tomllib.loads(tokens.read_text()) == {"token": list(entries.values())}


def test_generated_tokens_never_read_as_an_option():
    """``fsclient --token TOKEN`` must work for every token the server hands out: one that
    starts with '-' reads as an option (about 1 in 64 random tokens did)."""
    tokens = [new_token() for _ in range(3000)]
    assert not [t for t in tokens if t.startswith("-")]
    assert len(set(tokens)) == len(tokens) and all(len(t) >= 43 for t in tokens)


def test_bad_tokens_are_refused_before_any_file_operation(server_factory, tokens):
    good = add_token(tokens, "laptop", "default")
    server = server_factory("--tokens", str(tokens))
    for auth in (b"", b"wrong", good.encode() + b"x", good[:-1].encode(), good.encode()):
        raw = RawClient(server.address, handshake=False)
        try:  # a client that does not wait for the handshake's answer is cut off, any token
            raw.send_raw(handshake(auth) + operations())
            error = raw.error_or_close()
            assert error is not None and error.code is ErrorCode.UNEXPECTED_PACKET
            assert "before the handshake completed" in error.message
        finally:
            raw.close()
    for auth in (b"", b"wrong", good.encode() + b"x", good[:-1].encode()):
        raw = RawClient(server.address, handshake=False)
        try:  # a refused client that carries on regardless: nothing it sends is looked at
            raw.send(m.VersionHandshake(MAGIC, PROTOCOL_VERSION, 4096, "raw", "default", auth))
            hello = raw.expect(m.VersionHandshakeResponse)
            assert hello.status is m.HandshakeStatus.AUTH_FAILED
            with contextlib.suppress(OSError):
                raw.send_raw(operations())
            with pytest.raises((Closed, ConnectionResetError)):
                raw.next_event()
        finally:
            raw.close()
    assert run(listing(server, good)) == {}
    assert server.metric("fs_store_files") == 0
    assert server.metric("fs_auth_failures_total") == 4
    assert server.metric('fs_refusals_total{reason="auth_failed"}') == 4  # the same, by reason
    assert "Traceback" not in server.log.text()

    async def main() -> None:
        with pytest.raises(AuthError, match="needs a token"):
            await connect(server, "")
        with pytest.raises(AuthError, match="does not open share 'default'"):
            await connect(server, "not-the-token")

    run(main())
    out = fsclient("put", "Makefile", "x", "--server", server.address, "--token", "nope")
    assert out.returncode == 1
    assert out.stderr == "fsclient: error: the token does not open share 'default' " \
        "(wrong, revoked or not for it)\n"  # fmt: skip


def handshake(auth: bytes) -> bytes:
    return encode(m.VersionHandshake(MAGIC, PROTOCOL_VERSION, 4096, "raw", "default", auth))


def operations() -> bytes:
    """A complete small upload and a listing, as bytes."""
    content = b"sneaky"
    return b"".join([
        encode(m.FileSyncInit(1, len(content), 0, 0o644, ANY_VERSION, None, "sneaky.txt")),
        DATA_HEADER.pack(DATA_HEADER.size + len(content), m.PacketType.FILE_SYNC_DATA, 1),
        content,
        encode(m.FileSyncCheckHash(1, xxhash.xxh3_128_digest(content))),
        encode(m.ListRequest(7, 100, "", "")),
    ])  # fmt: skip


def test_a_revoked_token_stops_working_without_a_restart(server_factory, tokens):
    token = add_token(tokens, "laptop", "default")
    other = add_token(tokens, "desktop", "default")
    server = server_factory("--tokens", str(tokens))

    async def put(secret: str, name: str) -> int:
        async with await connect(server, secret) as client:
            return (await client.put_bytes(b"kept", name)).version

    assert run(put(token, "a.txt")) == 1
    data = tomllib.loads(tokens.read_text())
    data["token"][0]["revoked"] = True
    tokens.write_text(tomli_w.dumps(data))
    with pytest.raises(AuthError):
        run(put(token, "b.txt"))
    assert run(put(other, "c.txt")) == 2  # the other token is untouched
    data["token"] = data["token"][:1]  # removing the entry revokes just as well
    tokens.write_text(tomli_w.dumps(data))
    with pytest.raises(AuthError):
        run(put(other, "d.txt"))
    tokens.write_text(tomli_w.dumps({"token": [{"name": "x", "sha256": "00"}]}) + "[broken")
    with pytest.raises(AuthError):  # an unreadable file opens nothing: no token comes back
        run(put(other, "e.txt"))
    wait_for(
        lambda: "tokens file unusable, refusing every token" in server.log.text(),
        10,
        "the worker's log line about the broken file",
    )  # (the log arrives by a pipe)
    fresh = add_token(tokens.with_name("fresh.toml"), "fresh", "default")
    tokens.write_text(tokens.with_name("fresh.toml").read_text())
    assert run(put(fresh, "f.txt")) == 3
    assert run(listing(server, fresh)) == {"a.txt": 1, "c.txt": 2, "f.txt": 3}


def test_revoking_a_token_ends_its_open_connections_and_no_other(server_factory, tokens):
    """Revocation does not wait for a reconnect: within the once-a-second sweep, a connection
    shaken hands with a revoked token is ended, and one made read-only can no longer write."""
    gone = add_token(tokens, "stolen-laptop", "default")
    demoted = add_token(tokens, "kiosk", "default")
    kept = add_token(tokens, "desktop", "default")
    server = server_factory("--tokens", str(tokens))

    async def main() -> None:
        async with (
            await connect(server, gone) as lost,
            await connect(server, demoted) as reader,
            await connect(server, kept) as stays,
        ):
            await lost.put_bytes(b"before", "before.txt")
            data = tomllib.loads(tokens.read_text())
            data["token"][0]["revoked"] = True
            data["token"][1]["read_only"] = True
            tokens.write_text(tomli_w.dumps(data))
            await eventually(lambda: lost.proto.failure is not None, 5, "the revoked one to end")
            deadline = asyncio.get_running_loop().time() + 5
            assert isinstance(lost.proto.failure, AuthError)
            assert str(lost.proto.failure) == "the token was revoked"
            while True:  # its worker's sweep applies the new grant to the demoted connection
                try:
                    await reader.put_bytes(b"x", "demoted.txt")
                except PermissionDenied:
                    break
                assert asyncio.get_running_loop().time() < deadline, "still writable"
                await asyncio.sleep(0.05)
            with pytest.raises(PermissionDenied):
                await reader.rm("before.txt")
            assert "before.txt" in [e.path for e in await reader.ls()]
            await stays.put_bytes(b"after", "after.txt")
            assert stays.proto.failure is None and reader.proto.failure is None

    run(main())


def test_a_read_only_token_can_get_and_ls_but_not_put_or_rm(server_factory, tokens, tmp_path):
    writer = add_token(tokens, "writer", "default")
    reader = add_token(tokens, "reader", "default", read_only=True)
    server = server_factory("--tokens", str(tokens))

    async def main() -> None:
        async with await connect(server, writer) as client:
            await client.put_bytes(b"shared text", "doc.txt")
        async with await connect(server, reader) as client:
            assert [e.path for e in await client.ls()] == ["doc.txt"]
            await client.get("doc.txt", tmp_path / "doc.txt")
            with pytest.raises(PermissionDenied, match="read-only"):
                await client.put_bytes(b"overwrite", "doc.txt")
            with pytest.raises(PermissionDenied, match="read-only"):
                await client.put_bytes(b"new", "new.txt")
            with pytest.raises(PermissionDenied, match="read-only"):
                await client.rm("doc.txt")
            assert await client.ping() is None  # the connection lives on after a denial

    run(main())
    assert (tmp_path / "doc.txt").read_bytes() == b"shared text"
    assert run(listing(server, writer)) == {"doc.txt": 1}
    base = ["--server", server.address, "--token", reader]
    assert fsclient("ls", *base).returncode == 0
    for args in (["put", "Makefile", "doc.txt"], ["rm", "doc.txt"]):
        out = fsclient(*args, *base)
        assert (out.returncode, out.stderr) == (1, "fsclient: error: this token is read-only\n")
    assert run(listing(server, writer)) == {"doc.txt": 1}


def test_share_a_token_sees_nothing_of_share_b(server_factory, tokens, tmp_path):
    token_a = add_token(tokens, "alice", "a")
    token_b = add_token(tokens, "bob", "b")
    both = add_token(tokens, "admin", "a", "b")
    server = server_factory("--tokens", str(tokens))

    async def main() -> None:
        async with await connect(server, token_b, "b") as bob:
            await bob.put_bytes(b"bob's secret", "secret.txt")
        for share in ("b", "default"):
            with pytest.raises(AuthError, match=f"does not open share '{share}'"):
                await connect(server, token_a, share)
        async with await connect(server, token_a, "a") as alice:
            stream = await alice.subscribe()
            assert await alice.ls() == []  # nothing of b, not even with the same path
            assert (await alice.put_bytes(b"alice's", "secret.txt")).version == 1
            async with await connect(server, token_b, "b") as bob:
                await bob.put_bytes(b"bob's second", "second.txt")
            async with await connect(server, both, "a") as admin:
                await admin.put_bytes(b"for a", "from-admin.txt")
            note = await asyncio.wait_for(anext(stream), 10)  # b's change never shows up here
            assert note.entry.path == "from-admin.txt"
            with pytest.raises(NotFound) as missing:  # not a dropped connection: a typed no
                await alice.get("second.txt", tmp_path / "x")
            assert str(missing.value) == "not found: second.txt"
            assert not (tmp_path / "x").exists()
            assert await alice.ping() is None  # and the connection lives on

    run(main())
    assert run(listing(server, token_b, "b")) == {"secret.txt": 1, "second.txt": 2}
    assert run(listing(server, both, "a")) == {"secret.txt": 1, "from-admin.txt": 2}
    out = fsclient("ls", "--share", "b", "--server", server.address, "--token", token_a)
    assert out.returncode == 1 and "does not open share 'b'" in out.stderr


def test_failed_attempts_are_counted_and_throttled_but_a_typo_is_not_locked_out(
    server_factory, tokens
):
    token = add_token(tokens, "laptop", "default")
    server = server_factory("--tokens", str(tokens))

    async def attempt(secret: str) -> str:
        try:
            async with await connect(server, secret):
                return "ok"
        except AuthError:
            return "refused"
        except ConnectionLost:
            return "turned away"

    assert [run(attempt("typo")) for _ in range(3)] == ["refused"] * 3
    assert run(attempt(token)) == "ok"  # a few mistakes do not lock the user out
    assert server.metric("fs_auth_failures_total") == 3
    for _ in range(7):
        assert run(attempt("guess")) in ("refused", "turned away")
    # ten failures in a minute: the address is turned away at accept, right token or not
    wait_for(lambda: run(attempt(token)) == "turned away", 10, "the throttle to engage")
    assert server.metric("fs_throttled_connections_total") >= 1
    assert server.metric("fs_auth_failures_total") == 10
    wait_for(
        lambda: "failed to authenticate 10 times; refused for 10 s" in server.log.text(),
        10,
        "the supervisor's log line about the throttle",
    )  # (it arrives by a pipe)


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_no_public_address_without_tokens(host, tmp_path, server_factory):
    out = fsserver_tool("--host", host, "--port", "0", "--metrics-port", "0")
    assert out.returncode == 2
    assert out.stderr.startswith(f"fsserver: error: refusing to listen on {host} without --tokens")
    assert len(out.stderr.splitlines()) == 1
    assert "--insecure-no-auth" in out.stderr
    if host == "0.0.0.0":
        server = server_factory("--host", host, "--insecure-no-auth", "--store-size", "16MiB")
        assert server.proc.poll() is None
        tokens = tmp_path / "tokens.toml"
        token = add_token(tokens, "laptop", "default")
        secured = server_factory("--host", host, "--tokens", str(tokens), "--store-size", "16MiB")
        assert run(listing(secured, token)) == {}  # 0.0.0.0:port reaches it on Linux


def test_a_broken_tokens_file_stops_the_start(tokens):
    tokens.write_text("[[token]]\nname = 'x'\n")
    with pytest.raises(AssertionError, match="every \\[\\[token\\]\\] needs a name and a sha256"):
        start_server("--tokens", str(tokens), timeout=30)


def test_permission_denied_maps_to_its_own_wire_code():
    assert PermissionDenied("x").code is ErrorCode.PERMISSION_DENIED
    assert m.LookupStatus.DENIED.value == 4
