"""The handshake: the server's in-flight limit it announces (docs/PROTOCOL.md 3.3, type 11), and
what the client says when a server closes the connection during the handshake (only a server
that speaks TLS gets the client to point at TLS; the TLS case with a real TLS server is
``tests/test_tls.py::test_plain_tcp_to_a_tls_port_fails_cleanly``)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from common import messages as m
from common.codec import encode
from common.connection import ConnPhase, FSConnection
from common.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from common.limits import MAGIC, PROTOCOL_VERSION
from common.state import Role
from fsclient import Client
from fsclient.protocol import ConnectionLost
from tests.cli import fsclient
from tests.conftest import run
from tests.rawclient import RawClient

TLS_ALERT = bytes.fromhex("15030300020246")
"""A TLS alert record (fatal, protocol_version): what some TLS servers answer to a non-TLS
hello before they close."""


def shake(limit: int) -> tuple[FSConnection, FSConnection]:
    """A client and a server with an in-flight limit of *limit*, after a handshake whose
    response announces it; the client's own limit is the default."""
    client, server = FSConnection(Role.CLIENT), FSConnection(Role.SERVER, max_in_flight=limit)
    server.feed(client.send(m.VersionHandshake(MAGIC, PROTOCOL_VERSION, 65536, "c", "s", b"")))
    reply = m.VersionHandshakeResponse(m.HandshakeStatus.OK, PROTOCOL_VERSION, 65536, 0,
                                       bytes(16), limit, "")  # fmt: skip
    client.feed(server.send(reply))
    return client, server


def test_the_client_counts_by_the_limit_the_server_announced():
    client, server = shake(2)
    assert client.sessions.max_in_flight == client.requests.max_in_flight == 2
    server.feed(client.send(m.FileSyncInit(1, 1, 0, 0o644, 0, None, "a")))
    server.feed(client.send(m.DownloadRequest(2, 0, None, "b")))
    with pytest.raises(LocalProtocolError) as info:  # refused here: nothing reaches the server
        client.send(m.DownloadRequest(3, 0, None, "c"))
    assert info.value.code is ErrorCode.LIMIT_EXCEEDED
    for rid in (1, 2):
        server.feed(client.send(m.StatRequest(rid, "a")))
    with pytest.raises(LocalProtocolError) as info:
        client.send(m.StatRequest(3, "a"))
    assert info.value.code is ErrorCode.LIMIT_EXCEEDED
    assert len(server.sessions) == len(server.requests) == 2


def test_an_in_flight_limit_of_zero_is_malformed():
    client = FSConnection(Role.CLIENT)
    client.send(m.VersionHandshake(MAGIC, PROTOCOL_VERSION, 65536, "c", "s", b""))
    zero = m.VersionHandshakeResponse(m.HandshakeStatus.OK, 1, 65536, 0, bytes(16), 0, "")
    with pytest.raises(RemoteProtocolError) as info:
        client.feed(encode(zero))
    assert info.value.code is ErrorCode.MALFORMED
    server = FSConnection(Role.SERVER)
    server.feed(FSConnection(Role.CLIENT).send(
        m.VersionHandshake(MAGIC, PROTOCOL_VERSION, 65536, "c", "s", b"")))  # fmt: skip
    with pytest.raises(LocalProtocolError):
        server.send(zero)
    assert server.phase is ConnPhase.HANDSHAKE_RECEIVED


def test_a_server_announces_its_limit_with_every_status(server_factory):
    server = server_factory("--workers", "1", "--store-size", "16MiB", "--max-in-flight", "7")
    raw = RawClient(server.address)
    refused = RawClient(server.address, share=".hidden")
    try:
        assert raw.hello is not None and raw.hello.max_in_flight == 7
        assert refused.hello is not None
        assert refused.hello.status is m.HandshakeStatus.INVALID_SHARE
        assert refused.hello.max_in_flight == 7
    finally:
        raw.close()
        refused.close()

    async def main() -> None:
        async with await Client.connect(server.address) as client:
            assert client.max_in_flight == 7

    run(main())


# -- a server that closes the connection during the handshake --------------------------------


class ClosingServer:
    """A TCP server that ends every connection at once, as a server whose worker is being
    replaced does: *first* is what it sends before it closes; *read* says whether it reads
    the client's handshake first (a close with unread bytes is a reset)."""

    def __init__(self, first: bytes = b"", read: bool = False) -> None:
        self.first, self.read = first, read
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted = 0
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed: the test is over
                return
            self.accepted += 1
            with conn, contextlib.suppress(OSError):  # (a client may be gone already)
                if self.read:
                    conn.settimeout(5)
                    conn.recv(4096)
                if self.first:
                    conn.sendall(self.first)

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def closing() -> Iterator[type[ClosingServer]]:
    made: list[ClosingServer] = []

    def make(first: bytes = b"", read: bool = False) -> ClosingServer:
        server = ClosingServer(first, read)
        made.append(server)
        return server

    yield make  # type: ignore[misc]
    for server in made:
        server.close()


def connect_error(address: str) -> str:
    async def main() -> str:
        with pytest.raises(ConnectionLost) as info:
            await Client.connect(address, timeout=10)
        return info.value.message

    return run(main())


@pytest.mark.parametrize("read", [False, True], ids=["unread", "read"])
def test_a_server_that_closes_at_once_is_said_to_have_closed(closing, read):
    server = closing(read=read)
    message = connect_error(server.address)
    assert message == f"the server at {server.address} closed the connection during the handshake"
    out = fsclient("ls", "--server", server.address)
    assert out.returncode == 1
    assert out.stderr.splitlines() == [f"fsclient: error: {message}"]
    assert "TLS" not in out.stderr


def test_a_server_that_answers_in_tls_is_said_to_speak_it(closing):
    server = closing(first=TLS_ALERT, read=True)
    message = connect_error(server.address)
    assert message == (f"the server at {server.address} closed the connection during the "
                       "handshake: it speaks TLS, connect with --tls, --tls-ca or "
                       "--tls-fingerprint")  # fmt: skip
    assert server.accepted == 1  # what it sent said so: no second look was needed
