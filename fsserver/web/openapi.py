"""The HTTP API's OpenAPI 3 document, served at ``/api/v1/openapi.json``: the contract the web
page, scripts and the tests (which validate it and call every route in it) rely on."""

from __future__ import annotations

from typing import Any

API = "/api/v1"
SHARE = {"name": "share", "in": "path", "required": True, "schema": {"type": "string"}}
PATH = {"name": "path", "in": "path", "required": True, "schema": {"type": "string"},
        "description": "The file's path in the share, '/'-separated (URL-encoded)."}  # fmt: skip
VERSION = {"name": "version", "in": "query", "required": False,
           "schema": {"type": "integer", "minimum": 1},
           "description": "One of the path's versions (see the versions route)."}  # fmt: skip
PAGE = [
    {"name": "prefix", "in": "query", "required": False, "schema": {"type": "string"},
     "description": "Only paths that start with this string."},
    {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"},
     "description": "The next_cursor of the page before."},
    {"name": "limit", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 1, "maximum": 10000}},
]  # fmt: skip
ERRORS = ("400", "401", "403", "404", "409", "412", "413", "416", "422", "507")
TEXT = {
    "400": "Bad request: a bad path, parameter or header (INVALID_PATH, MALFORMED)",
    "401": "No token, or one that does not open this share (AUTH_FAILED)",
    "403": "A read-only token asked to change something (DENIED)",
    "404": "No such file, version or share (NOT_FOUND, NO_SUCH_SHARE)",
    "409": "The path changed meanwhile (CONFLICT)",
    "411": "A PUT without Content-Length (LENGTH_REQUIRED)",
    "412": "If-Match does not name the current content (CONFLICT)",
    "413": "The body is larger than the server takes (TOO_LARGE)",
    "416": "A Range past the end of the file (RANGE_NOT_SATISFIABLE)",
    "422": "The body's digest is not X-FS-Digest (HASH_MISMATCH)",
    "507": "The share's quota or the store is full (NO_SPACE)",
}


def _schema(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(name: str, text: str) -> dict[str, Any]:
    return {"description": text, "content": {"application/json": {"schema": _schema(name)}}}


def _errors(*codes: str) -> dict[str, Any]:
    return {code: _json("Error", TEXT[code]) for code in codes}


def _op(op_id: str, summary: str, params: list[dict[str, Any]], ok: dict[str, Any],
        errors: tuple[str, ...] = ("400", "401", "404"),
        **more: Any) -> dict[str, Any]:  # fmt: skip
    return {"operationId": op_id, "summary": summary, "parameters": params,
            "responses": {**ok, **_errors(*errors)}, **more}  # fmt: skip


FILE_INFO = {
    "type": "object",
    "required": ["path", "size", "version", "digest", "mtime_ns", "mtime"],
    "properties": {
        "path": {"type": "string"},
        "size": {"type": "integer"},
        "version": {"type": "integer", "description": "The share's sequence number of it"},
        "digest": {"type": "string", "description": "XXH3-128, 32 hex digits (the ETag)"},
        "mtime_ns": {"type": "integer"},
        "mtime": {"type": "string", "format": "date-time"},
    },
}
VERSION_INFO = {
    "type": "object",
    "required": ["version", "size", "digest", "written", "writer", "state"],
    "properties": {
        "version": {"type": "integer"},
        "size": {"type": "integer"},
        "digest": {"type": "string"},
        "mtime_ns": {"type": "integer"},
        "written": {"type": ["string", "null"], "format": "date-time",
                    "description": "When the server made it (null: not known)"},
        "writer": {"type": "string", "description": "The name of the token that wrote it"},
        "state": {"type": "string", "enum": ["current", "deleted", "kept"]},
    },
}  # fmt: skip
PAGE_OF = {
    "type": "object",
    "required": ["files", "next_cursor"],
    "properties": {"files": {"type": "array", "items": _schema("FileInfo")},
                   "next_cursor": {"type": ["string", "null"]}},
}  # fmt: skip
CHANGED = {
    "type": "object",
    "required": ["path", "version"],
    "properties": {"path": {"type": "string"}, "version": {"type": "integer"},
                   "size": {"type": "integer"}, "digest": {"type": "string"},
                   "deleted": {"type": "boolean"}},
}  # fmt: skip
ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["code", "message"],
        "properties": {"code": {"type": "string", "description": "The FS protocol's code"},
                       "message": {"type": "string"}},
    }},
}  # fmt: skip


def _paths() -> dict[str, Any]:
    files = f"{API}/shares/{{share}}/files/{{path}}"
    download = _op(
        "downloadFile", "A file's bytes, streamed from memory; Range and If-None-Match work",
        [SHARE, PATH, VERSION,
         {"name": "Range", "in": "header", "required": False, "schema": {"type": "string"}},
         {"name": "If-None-Match", "in": "header", "required": False,
          "schema": {"type": "string"}}],
        {"200": {"description": "The whole file; ETag is its digest",
                 "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                     "format": "binary"}}}},
         "206": {"description": "The range asked for"},
         "304": {"description": "The content is the one If-None-Match names"}},
        ("400", "401", "404", "416"),
    )  # fmt: skip
    upload = _op(
        "uploadFile", "Store a file (a new version); its digest is checked by the server",
        [SHARE, PATH,
         {"name": "X-FS-Digest", "in": "header", "required": False,
          "schema": {"type": "string"}, "description": "XXH3-128 of the body, 32 hex digits"},
         {"name": "If-Match", "in": "header", "required": False, "schema": {"type": "string"},
          "description": "The ETag (digest) the path must have now"},
         {"name": "If-None-Match", "in": "header", "required": False,
          "schema": {"type": "string"}, "description": "'*': only if the path has no file"},
         {"name": "X-FS-Mtime-Ns", "in": "header", "required": False,
          "schema": {"type": "integer"}}],
        {"201": _json("FileInfo", "Stored")},
        ("400", "401", "403", "411", "412", "413", "422", "507"),
        requestBody={"required": True, "content": {"application/octet-stream": {
            "schema": {"type": "string", "format": "binary"}}}},
    )  # fmt: skip
    delete = _op("deleteFile", "Delete a file (its versions are kept)",
                 [SHARE, PATH, {"name": "If-Match", "in": "header", "required": False,
                                "schema": {"type": "string"}}],
                 {"200": _json("Changed", "Deleted")},
                 ("400", "401", "403", "404", "412"))  # fmt: skip
    return {
        f"{API}/shares": {"get": _op(
            "listShares", "The shares the token opens", [],
            {"200": {"description": "Shares", "content": {"application/json": {"schema": {
                "type": "object", "properties": {"shares": {"type": "array", "items": {
                    "type": "object", "properties": {"name": {"type": "string"},
                                                     "files": {"type": "integer"},
                                                     "bytes": {"type": "integer"}}}}}}}}}},
            ("401",))},
        f"{API}/shares/{{share}}/files": {"get": _op(
            "listFiles", "A page of the share's files, in path order", [SHARE, *PAGE],
            {"200": _json("Page", "A page")})},
        files: {"get": download, "head": {**download, "operationId": "statFile"},
                "put": upload, "delete": delete},
        f"{API}/shares/{{share}}/versions/{{path}}": {"get": _op(
            "listVersions", "A path's versions, newest first (current, then kept)",
            [SHARE, PATH],
            {"200": {"description": "Versions", "content": {"application/json": {"schema": {
                "type": "object", "properties": {
                    "path": {"type": "string"},
                    "versions": {"type": "array", "items": _schema("VersionInfo")}}}}}}})},
        f"{API}/shares/{{share}}/restore/{{path}}": {"post": _op(
            "restoreVersion", "Make a kept version current again, as a new version",
            [SHARE, PATH, {**VERSION, "required": True}],
            {"200": _json("Changed", "Restored")}, ("400", "401", "403", "404", "409", "507"))},
        f"{API}/shares/{{share}}/deleted": {"get": _op(
            "listDeleted", "Deleted files that have kept versions (each as its newest)",
            [SHARE, *PAGE], {"200": _json("Page", "A page")})},
        f"{API}/shares/{{share}}/changes": {"get": _op(
            "watchChanges", "Server-Sent Events: every change after 'since', then live ones",
            [SHARE, {"name": "since", "in": "query", "required": False,
                     "schema": {"type": "integer", "minimum": 0}}],
            {"200": {"description": "event 'ready' (data: {\"seq\": N}), then one event "
                     "'change' per change (data: a Changed object)",
                     "content": {"text/event-stream": {"schema": {"type": "string"}}}}},
            ("400", "401", "404"))},
        f"{API}/openapi.json": {"get": {
            "operationId": "openapi", "summary": "This document", "security": [],
            "responses": {"200": {"description": "OpenAPI 3.1",
                                  "content": {"application/json": {}}}}}},
    }  # fmt: skip


def document() -> dict[str, Any]:
    from common.version import package_version

    return {
        "openapi": "3.1.0",
        "info": {"title": "FS file sync HTTP API", "version": package_version(),
                 "description": "The shares of an FS server over HTTP: the same store, tokens "
                 "and share rules as the FS protocol. Errors are JSON with the protocol's "
                 "codes."},
        "paths": _paths(),
        "components": {
            "schemas": {"FileInfo": FILE_INFO, "VersionInfo": VERSION_INFO, "Page": PAGE_OF,
                        "Changed": CHANGED, "Error": ERROR},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "A token of the server's --tokens "
                                           "file (none needed without one)"}},
        },
        "security": [{"bearer": []}],
    }  # fmt: skip
