"""A small client of the HTTP API for the tests: real HTTP/1.1 over a real socket
(``http.client``), one connection per request unless told otherwise."""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from tests.serverproc import ServerProcess


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def code(self) -> str:
        """The protocol's error code of a JSON error."""
        return self.json()["error"]["code"]


@dataclass
class WebApi:
    server: ServerProcess
    token: str = ""
    timeout: float = 30.0
    conn: http.client.HTTPConnection | None = field(default=None, repr=False)

    def url(self, share: str, route: str, path: str = "") -> str:
        tail = "/" + quote(path, safe="/") if path else ""
        return f"/api/v1/shares/{share}/{route}{tail}"

    def request(self, method: str, target: str, body: bytes | None = None,
                headers: dict[str, str] | None = None, keep: bool = False) -> Answer:  # fmt: skip
        conn = self.conn or http.client.HTTPConnection(
            self.server.host, self.server.http_port, timeout=self.timeout
        )
        sent = dict(headers or {})
        if self.token:
            sent.setdefault("Authorization", f"Bearer {self.token}")
        try:
            conn.request(method, target, body=body, headers=sent)
            resp = conn.getresponse()
            data = resp.read()
            return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        finally:
            if keep:
                self.conn = conn
            else:
                conn.close()
                self.conn = None

    def put(self, path: str, data: bytes, share: str = "default", **headers: str) -> Answer:
        return self.request("PUT", self.url(share, "files", path), data,
                            {k.replace("_", "-"): v for k, v in headers.items()})  # fmt: skip

    def get(self, path: str, share: str = "default", **headers: str) -> Answer:
        return self.request("GET", self.url(share, "files", path), None,
                            {k.replace("_", "-"): v for k, v in headers.items()})  # fmt: skip
