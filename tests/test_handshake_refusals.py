"""The handshake refusals of a real server, asserted whole (PROTOCOL.md sections 4.2 and 8.2):
``UNSUPPORTED_VERSION`` and ``INVALID_SHARE``, each a ``VersionHandshakeResponse`` with the
server's version, the agreed packet size, the worker and store ids and a message, then the
close. The checks run in a fixed order: version, share name, client id, then the token."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from common import messages as m
from common.limits import MAGIC, MAX_IN_FLIGHT, PROTOCOL_VERSION
from tests.cli import fsclient
from tests.rawclient import Closed, RawClient
from tests.secured import add_token
from tests.served import stop_cleanly
from tests.serverproc import ServerProcess, start_server

MiB = 1 << 20
H = m.HandshakeStatus
NAME_RULE = "may only use letters, digits, '.', '_' and '-'"


@pytest.fixture(scope="module")
def one_worker() -> Iterator[ServerProcess]:
    """One server for the whole table (its answers do not depend on what came before); one
    worker, so that the worker id in every answer is 0."""
    server = start_server("--workers", "1", "--store-size", "4MiB")
    try:
        yield server
    finally:
        stop_cleanly(server)


def answer(address: str, version: int = PROTOCOL_VERSION, share: str = "default",
           client_id: str = "raw", auth: bytes = b"") -> m.VersionHandshakeResponse:  # fmt: skip
    """The server's whole answer to one handshake; the server must close right after it."""
    raw = RawClient(address, handshake=False, max_packet=MiB)
    try:
        raw.send(m.VersionHandshake(MAGIC, version, MiB, client_id, share, auth))
        reply = raw.expect(m.VersionHandshakeResponse)
        with pytest.raises(Closed):
            raw.next_event()
        return reply  # type: ignore[return-value]
    finally:
        raw.close()


def store_id(address: str) -> bytes:
    raw = RawClient(address)
    raw.close()
    assert raw.hello is not None
    return raw.hello.store_id


CASES = [
    # (version, share, client id) -> (status, message)
    ((2, "default", "raw"), (H.UNSUPPORTED_VERSION,
                             "protocol version 2 not supported (server speaks 1)")),
    ((0, "default", "raw"), (H.UNSUPPORTED_VERSION,
                             "protocol version 0 not supported (server speaks 1)")),
    ((2, "bad share", "bad id"), (H.UNSUPPORTED_VERSION,
                                  "protocol version 2 not supported (server speaks 1)")),
    ((1, "bad share", "raw"), (H.INVALID_SHARE, f"share name 'bad share' {NAME_RULE}")),
    ((1, ".hidden", "raw"), (H.INVALID_SHARE, f"share name '.hidden' {NAME_RULE}")),
    ((1, "", "raw"), (H.INVALID_SHARE, "share name must be 1 to 64 characters")),
    ((1, "docs/x", "bad id"), (H.INVALID_SHARE, f"share name 'docs/x' {NAME_RULE}")),
    ((1, "default", "bad id"), (H.INVALID_SHARE, f"client id 'bad id' {NAME_RULE}")),
    ((1, "default", ""), (H.INVALID_SHARE, "client id must be 1 to 64 characters")),
]  # fmt: skip


@pytest.mark.parametrize(("hello", "expected"), CASES, ids=[
    "version-2", "version-0", "version-before-names", "share-space", "share-dot", "share-empty",
    "share-before-client-id", "client-id", "client-id-empty"])  # fmt: skip
def test_refused_handshakes_are_answered_exactly_then_closed(one_worker, hello, expected):
    server = one_worker
    version, share, client_id = hello
    status, message = expected
    assert answer(server.address, version, share, client_id) == m.VersionHandshakeResponse(
        status, PROTOCOL_VERSION, MiB, 0, store_id(server.address), MAX_IN_FLIGHT, message
    )


def test_names_and_version_are_checked_before_the_token(server_factory, tmp_path):
    """With tokens: a bad version or share name is reported as such, not as AUTH_FAILED, even
    without a token or with one that opens nothing."""
    tokens = tmp_path / "tokens.toml"
    token = add_token(tokens, "laptop", "docs")
    server = server_factory("--workers", "1", "--store-size", "4MiB", "--tokens", str(tokens))
    sid = store_id_with(server.address, token)  # the token opens docs
    for auth in (b"", b"wrong", token.encode()):
        assert answer(server.address, 3, "docs", auth=auth) == m.VersionHandshakeResponse(
            H.UNSUPPORTED_VERSION, 1, MiB, 0, sid, MAX_IN_FLIGHT,
            "protocol version 3 not supported (server speaks 1)",
        )  # fmt: skip
        assert answer(server.address, 1, "bad share", auth=auth) == m.VersionHandshakeResponse(
            H.INVALID_SHARE, 1, MiB, 0, sid, MAX_IN_FLIGHT, f"share name 'bad share' {NAME_RULE}"
        )
    assert answer(server.address, 1, "docs").status is H.AUTH_FAILED  # only now the token


def store_id_with(address: str, token: str) -> bytes:
    raw = RawClient(address, share="docs", auth=token.encode())
    raw.close()
    assert raw.hello is not None and raw.hello.status is H.OK
    return raw.hello.store_id


def test_the_cli_refuses_a_bad_share_name_before_connecting():
    """Nothing listens at the address: the name is checked first, with the same message."""
    result = fsclient("ls", "--share", "bad share", "--server", "127.0.0.1:1")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == f"fsclient: error: share name 'bad share' {NAME_RULE}\n"
