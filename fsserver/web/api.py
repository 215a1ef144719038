"""The routes of the HTTP API and the web page: each request is checked (token, share, path)
and answered from the store through the same calls the FS protocol makes (``fsserver.rpc``).
Downloads are written from the arena; uploads land in a reserved extent and are verified by
the hashing pool before their commit, as in a FileSync session."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from common.errors import InvalidName, InvalidPath
from common.limits import ANY_VERSION, MAX_LIST_ENTRIES, NO_VERSION
from common.paths import check_name, normalize_path, normalize_prefix
from fsserver import telemetry
from fsserver.auth import token_hash
from fsserver.rpc import RpcFailed
from fsserver.store import Busy, ListPage, Refused
from fsserver.web import changes, pages
from fsserver.web.httpconn import Request
from fsserver.web.replies import (
    HttpError,
    Reply,
    byte_range,
    etag,
    etag_matches,
    file_info,
    iso,
    json_reply,
    lookup_error,
    upload_error,
    version_info,
)

Handler = Callable[["Call"], Awaitable[int]]
BUSY_WAIT = 3.0
_HEX = re.compile(r"[0-9a-fA-F]{32}$")
_DIGITS = re.compile(r"[0-9]+$")
_MTIME = re.compile(r"-?[0-9]{1,19}$")
I64 = range(-(1 << 63), 1 << 63)


@dataclass
class Call:
    """A request that passed the checks: its share, path, and who makes it."""

    req: Request
    share: str = ""
    path: str = ""
    writer: str = ""
    read_only: bool = False
    token: bytes = b""
    """The SHA-256 of the token the request came with (checked again by a long stream)."""

    @property
    def ctx(self) -> Any:
        return self.req.conn.ctx

    async def store(self, op: str, *args: Any) -> Any:
        try:
            return await self.ctx.rpc.call(op, *args)
        except RpcFailed as exc:
            raise HttpError(503, "INTERNAL", f"store unavailable: {exc}") from None

    def writing(self) -> None:
        """A request that changes the share: not with a read-only token, and, on a server
        without tokens, not from a page of another site (a form may POST anywhere, and a
        browser says where it came from; with tokens, no other site has the token)."""
        if self.read_only:
            telemetry.refused("read_only")
            raise HttpError(403, "DENIED", "this token is read-only")
        origin, host = self.req.header("origin"), self.req.header("host")
        if self.ctx.tokens is None and origin and urlsplit(origin).netloc != host:
            telemetry.refused("cross_site")
            raise HttpError(403, "DENIED", f"a change requested by a page of {origin}")

    def number(self, name: str, default: int | None = None) -> int:
        raw = self.req.query.get(name)
        if raw is None or raw == "":
            if default is None:
                raise HttpError(400, "MALFORMED", f"the query needs {name}=N")
            return default
        if not _DIGITS.match(raw) or len(raw) > 19:
            raise HttpError(400, "MALFORMED", f"{name} must be a whole number, not {raw!r}")
        return int(raw)


# -- the routes ----------------------------------------------------------------------------


async def list_files(call: Call, op: str = "list") -> int:
    try:
        prefix = normalize_prefix(call.req.query.get("prefix", ""))
    except InvalidPath as exc:
        raise HttpError(400, "INVALID_PATH", exc.message) from None
    limit = min(call.number("limit", 1000), MAX_LIST_ENTRIES) or 1
    page: ListPage = await call.store(op, call.share, prefix, call.req.query.get("cursor", ""),
                                      limit)  # fmt: skip
    cursor = page.entries[-1].path if page.more and page.entries else None
    return _send(call, json_reply(200, {"files": [file_info(e) for e in page.entries],
                                        "next_cursor": cursor}))  # fmt: skip


async def list_deleted(call: Call) -> int:
    return await list_files(call, "deleted")


async def download(call: Call) -> int:
    version = call.number("version", 0)
    if version:
        opened = await call.store("open_version", call.share, call.path, version)
    else:
        opened = await call.store("open", call.share, call.path)
    if isinstance(opened, Refused):
        raise lookup_error(opened.status, opened.message)
    conn = call.req.conn
    try:
        entry = opened.entry
        headers = [("ETag", etag(entry.digest)), ("Accept-Ranges", "bytes"),
                   ("X-FS-Version", str(entry.version)), ("Cache-Control", "no-cache")]  # fmt: skip
        wanted = call.req.header("if-none-match")
        if wanted is not None and etag_matches(wanted, entry.digest):
            return _send(call, Reply(304, b"", headers))
        first, end = byte_range(call.req.header("range"), entry.size) or (0, entry.size)
        status = 206 if (first, end) != (0, entry.size) else 200
        if status == 206:
            headers.append(("Content-Range", f"bytes {first}-{end - 1}/{entry.size}"))
        headers += [("Content-Type", "application/octet-stream"),
                    ("Content-Length", str(end - first))]  # fmt: skip
        conn.start(status, headers)
        if call.req.method != "HEAD":
            at = opened.offset
            await conn.write(call.ctx.arena[at + first : at + end])
        conn.end()
        await conn.drained()
        return status
    finally:
        call.ctx.rpc.call("release", opened.lease)


async def upload(call: Call) -> int:
    call.writing()
    req = call.req
    length = req.header("content-length")
    if req.header("transfer-encoding") is not None or length is None or not _DIGITS.match(length):
        raise HttpError(411, "LENGTH_REQUIRED", "a PUT needs a Content-Length (no chunked body)")
    size = int(length)
    why = call.ctx.too_large(size)
    if why:
        raise HttpError(413, "TOO_LARGE", f"{call.path} is {why}")
    expected = _digest_header(req.header("x-fs-digest"))
    base = await _base_version(call)
    mtime_ns = _mtime(req.header("x-fs-mtime-ns"))
    ticket, offset = await _reserve(call, size, mtime_ns, base)
    committed = False
    try:
        await _receive(call, offset, size)
        actual = await call.ctx.hashes.digest(offset, size)
        if expected is not None and actual != expected:
            raise HttpError(422, "HASH_MISMATCH", f"the body's digest is {actual.hex()}, not "
                            f"{expected.hex()} (X-FS-Digest)")  # fmt: skip
        done = await call.store("commit", ticket, call.share, call.path, mtime_ns, 0o644,
                                actual, base, req.conn.origin, call.writer)  # fmt: skip
        committed = True
        if isinstance(done, Refused):
            raise upload_error(done.status, done.message)
    finally:
        if not committed:
            call.ctx.rpc.call("abort", ticket)
    info = {"path": call.path, "size": size, "version": done.version, "digest": actual.hex(),
            "mtime_ns": mtime_ns, "mtime": iso(mtime_ns)}  # fmt: skip
    return _send(call, json_reply(201, info, ("ETag", etag(actual))))


async def delete(call: Call) -> int:
    call.writing()
    base = await _base_version(call)
    done = await call.store("delete", call.share, call.path, base, call.req.conn.origin,
                            call.writer)  # fmt: skip
    if isinstance(done, Refused):
        raise lookup_error(done.status, done.message, conflict=412)
    return _send(call, json_reply(200, {"path": call.path, "version": done.version}))


async def versions(call: Call) -> int:
    found: list[dict[str, Any]] = []
    before, more = 0, True
    while more:
        result = await call.store("history", call.share, call.path, before, MAX_LIST_ENTRIES)
        if isinstance(result, Refused):
            raise lookup_error(result.status, result.message)
        page, more = result
        found += [version_info(v) for v in page]
        before = page[-1].version if page else 0
        more = more and bool(page)
    return _send(call, json_reply(200, {"path": call.path, "versions": found}))


async def restore(call: Call) -> int:
    call.writing()
    version = call.number("version")
    done = await call.store("restore_version", call.share, call.path, version, ANY_VERSION,
                            call.req.conn.origin, call.writer)  # fmt: skip
    if isinstance(done, Refused):
        raise lookup_error(done.status, done.message)
    return _send(call, json_reply(200, {"path": call.path, "version": done.version}))


async def list_shares(call: Call) -> int:
    names = None
    if call.ctx.tokens is not None:
        grant = call.ctx.tokens.grant(_token(call.req))
        if grant is None:
            raise _auth_failed(call.req, "the token is wrong or revoked")
        names = grant.shares
    found: list[dict[str, Any]] = []
    after, more = "", True
    while more:
        shares, more = await call.store("share_list", names, after, MAX_LIST_ENTRIES)
        found += [{"name": s.name, "files": s.files, "bytes": s.bytes} for s in shares]
        after = shares[-1].name if shares else ""
        more = more and bool(shares)
    return _send(call, json_reply(200, {"shares": found}))


# -- dispatch ------------------------------------------------------------------------------

FILE = r"/api/v1/shares/(?P<share>[^/]+)/files/(?P<path>.+)"
ROUTES: list[tuple[str, re.Pattern[str], str, Handler, str]] = [
    (method, re.compile(pattern + "$"), name, handler, needs)
    for method, pattern, name, handler, needs in [
        ("GET", r"/api/v1/shares", "shares", list_shares, ""),
        ("GET", r"/api/v1/shares/(?P<share>[^/]+)/files", "files", list_files, "share"),
        ("GET", FILE, "file", download, "path"),
        ("HEAD", FILE, "file", download, "path"),
        ("PUT", FILE, "file", upload, "path"),
        ("DELETE", FILE, "file", delete, "path"),
        ("GET", r"/api/v1/shares/(?P<share>[^/]+)/versions/(?P<path>.+)", "versions", versions,
         "path"),
        ("POST", r"/api/v1/shares/(?P<share>[^/]+)/restore/(?P<path>.+)", "restore", restore,
         "path"),
        ("GET", r"/api/v1/shares/(?P<share>[^/]+)/deleted", "deleted", list_deleted, "share"),
        ("GET", r"/api/v1/shares/(?P<share>[^/]+)/changes", "changes", changes.stream, "share"),
        ("GET", r"/api/v1/openapi.json", "openapi", pages.openapi, ""),
        ("GET", r"/(?P<asset>|static/[a-z]+\.(?:js|css))", "page", pages.asset, ""),
    ]
]  # fmt: skip


async def handle(req: Request) -> int:
    """Answer one request; returns its status (an HttpError raised becomes the JSON reply)."""
    allowed = []
    for method, pattern, name, handler, needs in ROUTES:
        found = pattern.match(req.raw_path)
        if found is None:
            continue
        allowed.append(method)
        if method != req.method:
            continue
        req.route = name
        call = Call(req)
        groups = {key: unquote(value) for key, value in found.groupdict().items()}
        if needs:
            await _admit(call, groups["share"], groups.get("path"))
        else:
            req.asset = groups.get("asset", "")
        return await handler(call)
    if allowed:
        raise HttpError(405, "METHOD_NOT_ALLOWED", f"{req.method} is not allowed here",
                        (("Allow", ", ".join(sorted(set(allowed)))),))  # fmt: skip
    raise HttpError(404, "NOT_FOUND", f"no route {req.path}")


async def _admit(call: Call, share: str, path: str | None) -> None:
    """The share's name, the token (its grant for the share), the share's existence, the
    path: in that order, so that nothing is told about a share to a client without a token
    for it."""
    try:
        call.share = check_name(share)
        call.path = normalize_path(path) if path is not None else ""
    except (InvalidName, InvalidPath) as exc:
        code = "INVALID_PATH" if isinstance(exc, InvalidPath) else "INVALID_SHARE"
        raise HttpError(400, code, exc.message) from None
    tokens = call.ctx.tokens
    if tokens is not None:
        grant = tokens.check(_token(call.req), call.share)
        if grant is None:
            raise _auth_failed(call.req, f"the token does not open share {call.share!r}")
        call.writer, call.read_only = grant.name, grant.read_only
        call.token = token_hash(_token(call.req))
    known = call.ctx.known_shares
    if call.share not in known:
        if not await call.store("attach", call.share, tokens is not None):
            raise HttpError(404, "NO_SUCH_SHARE", f"no share {call.share!r} on the server")
        known.add(call.share)


def _token(req: Request) -> bytes:
    scheme, _, token = (req.header("authorization") or "").partition(" ")
    return token.strip().encode() if scheme.lower() == "bearer" else b""


def _auth_failed(req: Request, message: str) -> HttpError:
    telemetry.AUTH_FAILURES.inc()
    req.conn.ctx.report(("auth_failed", req.conn.peer.rsplit(":", 1)[0]))
    return HttpError(401, "AUTH_FAILED", message, (("WWW-Authenticate", 'Bearer realm="fs"'),))


def _send(call: Call, reply: Reply) -> int:
    call.req.conn.reply(reply)
    return reply.status


def _digest_header(raw: str | None) -> bytes | None:
    if raw is None:
        return None
    if not _HEX.match(raw.strip()):
        raise HttpError(400, "MALFORMED", "X-FS-Digest must be 32 hex digits (XXH3-128)")
    return bytes.fromhex(raw.strip())


def _mtime(raw: str | None) -> int:
    if raw is None:
        return time.time_ns()
    if not _MTIME.match(raw.strip()) or int(raw) not in I64:
        raise HttpError(400, "MALFORMED", "X-FS-Mtime-Ns must be a whole number of 64 bits")
    return int(raw)


async def _base_version(call: Call) -> int:
    """The version the path must be at, from If-Match (an ETag: the content it must hold)
    or ``If-None-Match: *`` (no file there)."""
    if call.req.header("if-none-match") == "*":
        return NO_VERSION
    wanted = call.req.header("if-match")
    if wanted is None:
        return ANY_VERSION
    entry = await call.store("stat", call.share, call.path)
    if isinstance(entry, Refused) or not etag_matches(wanted, entry.digest):
        now = "no file" if isinstance(entry, Refused) else f"content {etag(entry.digest)}"
        raise HttpError(412, "CONFLICT", f"{call.path} has {now}, not {wanted} (If-Match)")
    return entry.version


async def _reserve(call: Call, size: int, mtime_ns: int, base: int) -> tuple[int, int]:
    """Room for the body in the arena: (ticket, offset). Asks again while an upload of the
    same file seems in progress (``Busy``), as a FileSync session does."""
    deadline = time.monotonic() + BUSY_WAIT
    while True:
        room = await call.store("reserve", call.share, call.path, size, mtime_ns, 0o644, None,
                                base, call.req.conn.origin, False, call.writer)  # fmt: skip
        if not isinstance(room, Busy) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    if isinstance(room, Refused):
        raise upload_error(room.status, room.message)
    if isinstance(room, Busy):
        raise HttpError(409, "CONFLICT", f"{call.path} is being uploaded by another client")
    return room.ticket, room.offset


async def _receive(call: Call, offset: int, size: int) -> None:
    """The body, straight into the reserved extent."""
    arena, at, end = call.ctx.arena, offset, offset + size
    async for chunk in call.req.body():
        if at + len(chunk) > end:  # (h11 frames by Content-Length: never, but never trusted)
            raise HttpError(413, "TOO_LARGE", f"the body is longer than its {size} bytes")
        arena[at : at + len(chunk)] = chunk
        at += len(chunk)
    if at != offset + size:
        raise HttpError(400, "MALFORMED", f"the body has {at - offset} bytes, not {size}")
