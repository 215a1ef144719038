"""The web page's files (``static/``, shipped in the package) and the OpenAPI document."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from fsserver.web.openapi import document
from fsserver.web.replies import HttpError, Reply

if TYPE_CHECKING:
    from fsserver.web.api import Call

STATIC = Path(__file__).resolve().parent / "static"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8"}  # fmt: skip
SECURITY = [
    ("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; "
     "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
]  # fmt: skip
"""Nothing but the server's own files runs in the page, and no other site can frame it."""


@cache
def _files() -> dict[str, bytes]:
    """The page's files, read once (a request can name only these)."""
    return {path.name: path.read_bytes() for path in STATIC.iterdir() if path.is_file()}


async def asset(call: Call) -> int:
    name = call.req.asset.removeprefix("static/") or "index.html"
    body = _files().get(name)
    if body is None:
        raise HttpError(404, "NOT_FOUND", f"no file {call.req.path}")
    kind = TYPES.get(Path(name).suffix, "application/octet-stream")
    headers = [("Content-Type", kind), ("Content-Length", str(len(body))),
               ("Cache-Control", "no-cache"), *SECURITY]  # fmt: skip
    call.req.conn.reply(Reply(200, body, headers))
    return 200


@cache
def _openapi() -> bytes:
    return json.dumps(document(), indent=1).encode()


async def openapi(call: Call) -> int:
    body = _openapi()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    call.req.conn.reply(Reply(200, body, headers))
    return 200
