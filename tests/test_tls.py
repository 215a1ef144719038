"""Acceptance (issue 5): TLS. A client with a wrong fingerprint or an untrusted certificate fails
with a clear error, plain TCP to a TLS port fails cleanly, and a trusted client's transfers are
byte-exact. Real servers, real ``init-tls``, real ``fsclient`` command lines."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import ssl

import pytest
from cryptography import x509

from common.errors import AuthError
from common.tls import server_context
from fsclient import Client
from fsclient.access import Access, TLSError
from fsclient.protocol import ConnectionLost
from tests.cli import fsclient, fsserver_tool
from tests.conftest import run
from tests.secured import Pair, add_token, init_tls


@pytest.fixture
def pair(tmp_path) -> Pair:
    folder = tmp_path / "tls"
    return Pair(folder, init_tls(folder))


@pytest.fixture
def tls_server(server_factory, pair):
    """Configured from the environment (other tests use the flags)."""
    env = {"FS_TLS_CERT": str(pair.cert), "FS_TLS_KEY": str(pair.key)}
    return server_factory("--store-size", "64MiB", "--handshake-timeout", "2", env=env)


def test_init_tls_writes_a_pair_and_prints_its_fingerprint(tmp_path):
    folder = tmp_path / "new" / "tls"
    printed = init_tls(folder)
    cert_pem = (folder / "cert.pem").read_bytes()
    cert = x509.load_pem_x509_certificate(cert_pem)
    der = ssl.PEM_cert_to_DER_cert(cert_pem.decode())
    assert printed == hashlib.sha256(der).hexdigest() and len(printed) == 64
    assert os.stat(folder / "key.pem").st_mode & 0o777 == 0o600
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    assert server_context(str(folder / "cert.pem"), str(folder / "key.pem")).minimum_version == (
        ssl.TLSVersion.TLSv1_2
    )
    key = (folder / "key.pem").read_bytes()
    again = fsserver_tool("init-tls", str(folder))  # never replaces a pair clients have pinned
    assert (again.returncode, again.stdout.strip()) == (0, printed)
    assert "kept the certificate" in again.stderr
    assert (folder / "key.pem").read_bytes() == key
    (folder / "cert.pem").unlink()
    lone = fsserver_tool("init-tls", str(folder))
    assert lone.returncode == 2
    assert "key.pem exists without its pair" in lone.stderr and len(lone.stderr.splitlines()) == 1


def test_a_pinned_or_ca_trusted_client_transfers_byte_exact(tls_server, pair, tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)

    async def main() -> None:
        pinned = Access(tls_fingerprint=pair.fingerprint.upper())  # any case, as printed
        async with await Client.connect(tls_server.address, access=pinned) as client:
            tls = client.proto.transport.get_extra_info("ssl_object")
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            await client.put_bytes(data, "big.bin")
            await client.get("big.bin", tmp_path / "back.bin")
        async with await Client.connect(tls_server.address, access=Access(tls_ca=str(pair.cert))):
            pass

    run(main())
    assert (tmp_path / "back.bin").read_bytes() == data
    # the command line, with the options after the subcommand and from the environment
    out = fsclient("ls", "--server", tls_server.address, "--tls-fingerprint", pair.fingerprint)
    assert out.returncode == 0 and out.stdout.startswith("big.bin\t3145745\t"), out.stderr
    env = {"FS_SERVER": tls_server.address, "FS_TLS_CA": str(pair.cert)}
    out = fsclient("get", "big.bin", str(tmp_path / "cli.bin"), env=env)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "cli.bin").read_bytes() == data
    out = fsclient("--tls-fingerprint", pair.fingerprint, "rm", "big.bin", env=env)  # before
    assert out.returncode == 0, out.stderr
    env = {"FS_SERVER": tls_server.address, "FS_TLS_FINGERPRINT": pair.fingerprint}
    out = fsclient("ls", env=env)
    assert (out.returncode, out.stdout) == (0, ""), out.stderr


def test_a_wrong_fingerprint_is_refused_before_the_token_is_sent(server_factory, pair, tmp_path):
    tokens = tmp_path / "tokens.toml"
    token = add_token(tokens, "laptop", "default")
    server = server_factory("--tokens", str(tokens), *pair.server_args())
    wrong = ("0" if pair.fingerprint[0] != "0" else "1") + pair.fingerprint[1:]

    async def main() -> None:
        with pytest.raises(TLSError) as caught:
            await Client.connect(server.address, access=Access(token, tls_fingerprint=wrong))
        assert f"fingerprint {pair.fingerprint}, not the pinned {wrong}" in caught.value.message

    run(main())
    out = fsclient("ls", "--server", server.address, "--token", token, "--tls-fingerprint", wrong)
    assert out.returncode == 1
    assert out.stderr.startswith("fsclient: error: ") and "refusing to talk to it" in out.stderr
    assert len(out.stderr.splitlines()) == 1
    # the server never saw a handshake, let alone a token
    assert "token refused" not in server.log.text()
    assert server.metric("fs_auth_failures_total") == 0
    out = fsclient("ls", "--server", server.address, "--token", token, "--tls-fingerprint",
                   pair.fingerprint)  # fmt: skip
    assert out.returncode == 0, out.stderr


def test_an_untrusted_certificate_is_refused(tls_server, tmp_path):
    other = tmp_path / "other"
    init_tls(other)

    async def main() -> None:
        for access in (Access(tls=True), Access(tls_ca=str(other / "cert.pem"))):
            with pytest.raises(TLSError, match=r"TLS certificate of .* is not trusted"):
                await Client.connect(tls_server.address, access=access)

    run(main())
    out = fsclient("ls", "--tls", "--server", tls_server.address)
    assert out.returncode == 1
    assert "is not trusted: self-signed certificate" in out.stderr
    assert len(out.stderr.splitlines()) == 1


def test_plain_tcp_to_a_tls_port_fails_cleanly(tls_server, pair):
    async def main() -> None:
        with pytest.raises(ConnectionLost, match=r"closed the connection .*: it speaks TLS"):
            await Client.connect(tls_server.address)
        async with await Client.connect(tls_server.address, access=Access(tls_ca=str(pair.cert))):
            pass  # the server is still there for TLS clients

    run(main())
    out = fsclient("ls", "--server", tls_server.address)
    assert out.returncode == 1 and "it speaks TLS, connect with --tls" in out.stderr
    # a TCP client that says nothing is closed by the TLS handshake deadline
    with socket.create_connection((tls_server.host, tls_server.port), timeout=10) as sock:
        sock.settimeout(10)
        assert sock.recv(100) == b""
    assert tls_server.proc.poll() is None


def test_a_tls_client_to_a_plain_port_fails_cleanly(server, pair):
    async def main() -> None:
        with pytest.raises(TLSError, match=r"TLS handshake with .* failed .*is it a TLS port"):
            await Client.connect(server.address, access=Access(tls_fingerprint=pair.fingerprint))

    run(main())


def test_bad_tls_options_are_clear_errors(server, tmp_path):
    out = fsclient("ls", "--server", server.address, "--tls-fingerprint", "abc")
    assert out.returncode == 1 and "64 hex characters" in out.stderr
    out = fsclient("ls", "--server", server.address, "--tls-ca", str(tmp_path / "missing.pem"))
    assert out.returncode == 1 and "missing.pem: no such file" in out.stderr
    out = fsserver_tool("--tls-cert", str(tmp_path / "c.pem"))
    assert out.returncode == 2 and "--tls-cert and --tls-key go together" in out.stderr


def test_sync_over_tls_remembers_how_to_trust_but_not_the_token(server_factory, pair, tmp_path):
    tokens = tmp_path / "tokens.toml"
    token = add_token(tokens, "laptop", "default")
    server = server_factory("--tokens", str(tokens), *pair.server_args())
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_bytes(b"over tls")
    first = fsclient("sync", str(folder), "--once", "--server", server.address,
                     "--tls-fingerprint", pair.fingerprint, "--token", token)  # fmt: skip
    assert first.returncode == 0, first.stderr
    (folder / "b.txt").write_bytes(b"again, without the TLS options")
    second = fsclient("sync", str(folder), "--once", env={"FS_TOKEN": token})
    assert second.returncode == 0, second.stderr
    state = b"".join(p.read_bytes() for p in (folder / ".fsync").rglob("*") if p.is_file())
    assert pair.fingerprint.encode() in state and token.encode() not in state

    async def listing() -> set[str]:
        access = Access(token, tls_fingerprint=pair.fingerprint)
        async with await Client.connect(server.address, access=access) as client:
            return {entry.path for entry in await client.ls()}

    assert run(listing()) == {"a.txt", "b.txt"}
    third = fsclient("sync", str(folder), "--once")  # no token: refused, and says how to fix it
    assert third.returncode == 1 and "needs a token (--token or FS_TOKEN)" in third.stderr


def test_a_silent_tls_client_is_closed_and_others_are_served(tls_server, pair):
    """TLS done, then no FS handshake: the handshake deadline ends it; others are served."""
    context = ssl.create_default_context(cafile=str(pair.cert))
    raw = socket.create_connection((tls_server.host, tls_server.port), timeout=10)
    with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:

        async def honest() -> int:
            access = Access(tls_ca=str(pair.cert))
            async with await Client.connect(tls_server.address, access=access) as client:
                return (await client.put_bytes(b"x", "x.txt")).size

        assert run(honest()) == 1
        tls.settimeout(15)
        received = b""
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            while chunk := tls.recv(4096):  # an Error packet, then the end
                received += chunk
    assert b"no handshake within 2 s" in received
    assert tls_server.proc.poll() is None


def test_missing_token_is_an_auth_error_over_tls_too(server_factory, pair, tmp_path):
    tokens = tmp_path / "tokens.toml"
    add_token(tokens, "laptop", "default")
    server = server_factory("--tokens", str(tokens), *pair.server_args())

    async def main() -> None:
        with pytest.raises(AuthError, match="needs a token"):
            await Client.connect(server.address, access=Access(tls_ca=str(pair.cert)))

    run(main())
