"""Reaching a server: its address, the TCP (or TLS) connection, and what to tell the user when
the server closes that connection during the FS handshake.

A server closes a connection at the handshake for three common reasons: it is not an FS port
but an HTTP one (the metrics port, given by mistake: it answers with an HTTP error, or a
``HEAD`` request shows it speaks HTTP), it speaks TLS and this client did not (a TLS server
reads the FS handshake as a broken TLS hello and closes without a byte), or it is going away (a
worker being replaced). Only the second is helped by ``--tls``, so the client says so only when
the server showed it speaks TLS: its first bytes were a TLS record, or a second connection
completes a TLS handshake with it.
"""

from __future__ import annotations

import asyncio
import ssl

from fsclient.access import DEFAULT_SERVER, Access, TLSError
from fsclient.protocol import ClientProtocol, ConnectionLost

TLS_RECORD_TYPES = (0x15, 0x16)
"""The first byte of a TLS alert or handshake record; the second is the major version, 3."""
PROBE_TIMEOUT = 5.0


def parse_server(server: str) -> tuple[str, int]:
    """``"host:port"`` (``[v6]:port`` for IPv6) -> (host, port). Without a port (``host``,
    ``[v6]``, or a bare IPv6 address) the default port is meant."""
    bare = server.count(":") > 1 and not server.startswith("[")  # an IPv6 address, no port
    if bare or server.endswith("]") or ":" not in server:
        host, port = server, DEFAULT_SERVER.rpartition(":")[2]
    else:
        host, _, port = server.rpartition(":")
    host = host.strip("[]") if host.startswith("[") else host
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"invalid server address {server!r}: expected HOST or HOST:PORT")
    return host, int(port)


async def open_connection(
    host: str, port: int, proposal: int, access: Access, timeout: float
) -> ClientProtocol:
    """A TCP (or TLS) connection whose server passed the checks *access* asks for."""
    loop = asyncio.get_running_loop()
    context = access.ssl_context()
    where = f"{host}:{port}"
    try:
        _, proto = await asyncio.wait_for(
            loop.create_connection(
                lambda: ClientProtocol(proposal), host, port, ssl=context,
                server_hostname=host if context else None,
            ),
            timeout,
        )  # fmt: skip
    except (OSError, TimeoutError) as exc:
        if context is not None:
            if isinstance(exc, ssl.SSLCertVerificationError):
                raise TLSError(
                    f"TLS certificate of {where} is not trusted: {exc.verify_message}"
                ) from None
            if isinstance(exc, ssl.SSLError):
                raise TLSError(
                    f"TLS handshake with {where} failed ({exc.reason}): is it a TLS port?"
                ) from None
            if isinstance(exc, ConnectionResetError | TimeoutError):
                raise TLSError(f"TLS handshake with {where} failed: is it a TLS port?") from None
        reason = getattr(exc, "strerror", None) or exc or "timed out"
        raise ConnectionError(f"cannot connect to {where}: {reason}") from None
    if context is not None:
        ssl_object = proto.transport.get_extra_info("ssl_object")
        try:
            access.verify_peer(ssl_object.getpeercert(binary_form=True), where)
        except TLSError:
            proto.transport.abort()
            raise
    return proto


def looks_like_http(head: bytes) -> bool:
    """*head*, the first bytes a server sent, begin an HTTP response (an HTTP port, such as
    the server's metrics port, given as the FS port)."""
    return head.startswith(b"HTTP/")


async def answers_http(host: str, port: int, timeout: float = PROBE_TIMEOUT) -> bool:
    """True if the server answers a ``HEAD /`` request with an HTTP status line."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(b"HEAD / HTTP/1.0\r\n\r\n")
        head = await asyncio.wait_for(reader.read(5), timeout)
    except (OSError, TimeoutError):
        return False
    finally:
        writer.transport.abort()
    return looks_like_http(head)


def not_fs(host: str, port: int) -> ConnectionLost:
    return ConnectionLost(
        f"{host}:{port} answered HTTP: this is not an FS port (the metrics port?)"
    )


def looks_like_tls(head: bytes) -> bool:
    """*head*, the first bytes a server sent, begin a TLS record (an alert or a hello)."""
    return len(head) >= 2 and head[0] in TLS_RECORD_TYPES and head[1] == 3


async def speaks_tls(host: str, port: int, timeout: float = PROBE_TIMEOUT) -> bool:
    """True if the server completes a TLS handshake. Its certificate is not checked: nothing
    is sent over the connection, which is closed at once."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=context), timeout
        )
    except (OSError, TimeoutError):  # ssl.SSLError is an OSError
        return False
    writer.transport.abort()
    return True


async def closed_at_handshake(host: str, port: int, head: bytes, access: Access) -> ConnectionLost:
    """The error for a server that closed the connection before answering the handshake;
    *head* is what it sent first, if anything. It points at TLS only when the server speaks
    it and this client did not."""
    closed = f"the server at {host}:{port} closed the connection during the handshake"
    if looks_like_http(head):
        return not_fs(host, port)
    if access.uses_tls:
        return ConnectionLost(closed)
    tls, http = (looks_like_tls(head), False) if head else await asyncio.gather(
        speaks_tls(host, port), answers_http(host, port))  # fmt: skip
    if http:
        return not_fs(host, port)
    if tls:
        return ConnectionLost(
            f"{closed}: it speaks TLS, connect with --tls, --tls-ca or --tls-fingerprint"
        )
    return ConnectionLost(closed)


__all__ = ["answers_http", "closed_at_handshake", "looks_like_http", "looks_like_tls",
           "open_connection", "parse_server", "speaks_tls"]  # fmt: skip
