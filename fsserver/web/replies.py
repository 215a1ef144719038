"""What the HTTP API answers: JSON bodies, errors with the FS protocol's codes, and the
status each store refusal maps to."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from common import messages as m

JSON = "application/json"
LOOKUP_STATUS = {
    m.LookupStatus.NOT_FOUND: 404,
    m.LookupStatus.INVALID_PATH: 400,
    m.LookupStatus.CONFLICT: 409,
    m.LookupStatus.DENIED: 403,
    m.LookupStatus.EXPIRED: 410,
    m.LookupStatus.NO_SPACE: 507,
}
INIT_STATUS = {
    m.InitStatus.NO_SPACE: (507, "NO_SPACE"),
    m.InitStatus.CONFLICT: (412, "CONFLICT"),
    m.InitStatus.TOO_LARGE: (413, "TOO_LARGE"),
}
_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class HttpError(Exception):
    """A request refused: its HTTP status, the protocol's code (``NOT_FOUND``...) and why."""

    def __init__(self, status: int, code: str, message: str,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:  # fmt: skip
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


def json_reply(status: int, value: Any, *headers: tuple[str, str]) -> Reply:
    body = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
    return Reply(status, body, [("Content-Type", JSON), ("Content-Length", str(len(body))),
                                *headers])  # fmt: skip


def error_body(exc: HttpError, keep_open: bool) -> Reply:
    reply = json_reply(exc.status, {"error": {"code": exc.code, "message": exc.message}},
                       *exc.headers)  # fmt: skip
    if not keep_open:
        reply.headers.append(("Connection", "close"))
    return reply


def lookup_error(status: int, message: str, conflict: int = 409) -> HttpError:
    """The error of a store refusal in a request's terms (``LookupStatus``)."""
    code = m.LookupStatus(status)
    http = conflict if code is m.LookupStatus.CONFLICT else LOOKUP_STATUS.get(code, 500)
    return HttpError(http, code.name, message)


def upload_error(status: int, message: str) -> HttpError:
    """The error of a refused upload (``InitStatus``)."""
    http, code = INIT_STATUS.get(m.InitStatus(status), (500, "INTERNAL"))
    return HttpError(http, code, message)


def iso(ns_or_s: float, scale: float = 1e9) -> str:
    return datetime.fromtimestamp(ns_or_s / scale, UTC).isoformat(timespec="seconds")


def file_info(entry: m.FileEntry) -> dict[str, Any]:
    return {"path": entry.path, "size": entry.size, "version": entry.version,
            "digest": entry.digest.hex(), "mtime_ns": entry.mtime_ns,
            "mtime": iso(entry.mtime_ns)}  # fmt: skip


def version_info(v: m.VersionEntry) -> dict[str, Any]:
    flags = m.VersionFlags(v.flags)
    state = ("deleted" if flags & m.VersionFlags.DELETED
             else "current" if flags & m.VersionFlags.CURRENT else "kept")  # fmt: skip
    return {"version": v.version, "size": v.size, "digest": v.digest.hex(),
            "mtime_ns": v.mtime_ns, "written": iso(v.written, 1) if v.written else None,
            "writer": v.writer, "state": state}  # fmt: skip


def etag(digest: bytes) -> str:
    return f'"{digest.hex()}"'


def etag_matches(header: str, digest: bytes) -> bool:
    """Whether an If-Match / If-None-Match header names *digest* (or is ``*``)."""
    wanted = {part.strip().removeprefix("W/").strip('"') for part in header.split(",")}
    return "*" in wanted or digest.hex() in wanted


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The (first, end) of a single ``Range: bytes=...`` over *size* bytes; None: the whole
    file (no header, or one this server does not take, as RFC 9110 lets it); 416 past the
    end."""
    if header is None:
        return None
    found = _RANGE.match(header.strip())
    if found is None:
        return None
    first, last = found.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        n = int(last)
        if n == 0:
            raise _unsatisfiable(size)
        return max(size - n, 0), size
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    if start >= size or end <= start:
        raise _unsatisfiable(size)
    return start, end


def _unsatisfiable(size: int) -> HttpError:
    return HttpError(416, "RANGE_NOT_SATISFIABLE", f"the file has {size} bytes",
                     (("Content-Range", f"bytes */{size}"),))  # fmt: skip
