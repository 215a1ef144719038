"""The HTTP API (``--http-port``) over real HTTP against real servers: round trips with the FS
protocol's client both ways, each bad request's status and JSON error, the OpenAPI document
(validated, and every route in it called), the change stream, and its metrics."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import tomllib

import pytest
import tomli_w
import xxhash
from openapi_spec_validator import validate

from tests.cli import fsclient
from tests.secured import add_token
from tests.webapi import WebApi


@pytest.fixture
def web(server_factory):
    server = server_factory("--store-size", "64MiB", "--http-port", "0",
                            "--max-file-size", "8MiB")  # fmt: skip
    assert server.http_port
    return WebApi(server)


def test_round_trips_with_the_fs_client_are_byte_identical_both_ways(web, tmp_path):
    data = os.urandom(3 << 20) + b"tail"
    put = web.put("in/by-http.bin", data, X_FS_Digest=xxhash.xxh3_128_hexdigest(data))
    assert put.status == 201, put.body
    assert put.json()["digest"] == xxhash.xxh3_128_hexdigest(data)
    got = fsclient("get", "in/by-http.bin", str(tmp_path / "a.bin"), server=web.server)
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "a.bin").read_bytes() == data

    (tmp_path / "b.bin").write_bytes(data[::-1])
    assert (
        fsclient("put", str(tmp_path / "b.bin"), "in/by-fs.bin", server=web.server).returncode == 0
    )
    answer = web.get("in/by-fs.bin")
    assert answer.status == 200 and answer.body == data[::-1]
    assert answer.headers["etag"] == f'"{xxhash.xxh3_128_hexdigest(data[::-1])}"'
    assert web.get("in/by-fs.bin", If_None_Match=answer.headers["etag"]).status == 304
    part = web.get("in/by-fs.bin", Range="bytes=10-19")
    assert part.status == 206 and part.body == data[::-1][10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(data)}"
    assert web.get("in/by-fs.bin", Range="bytes=-4").body == data[::-1][-4:]

    listed = web.request("GET", web.url("default", "files") + "?prefix=in/&limit=1").json()
    assert [f["path"] for f in listed["files"]] == ["in/by-fs.bin"]
    more = web.request(
        "GET", web.url("default", "files") + f"?prefix=in/&cursor={listed['next_cursor']}"
    )
    assert [f["path"] for f in more.json()["files"]] == ["in/by-http.bin"]


def test_each_bad_request_gets_its_status_and_json_error(tmp_path, server_factory):
    tokens = tmp_path / "tokens.toml"
    writer = add_token(tokens, "writer", "default")
    reader = add_token(tokens, "reader", "default", read_only=True)
    server = server_factory("--store-size", "64MiB", "--http-port", "0", "--tokens",
                            str(tokens), "--max-file-size", "1MiB")  # fmt: skip
    web = WebApi(server, writer)
    assert web.put("doc.txt", b"first").status == 201

    wrong = web.put("x.txt", b"data", X_FS_Digest="0" * 32)
    assert (wrong.status, wrong.code) == (422, "HASH_MISMATCH")
    assert web.get("x.txt").status == 404  # nothing stored
    bad_token = WebApi(server, "not-a-token").get("doc.txt")
    assert (bad_token.status, bad_token.code) == (401, "AUTH_FAILED")
    assert bad_token.headers["www-authenticate"].startswith("Bearer")
    assert WebApi(server).get("doc.txt").status == 401  # no token at all
    read_only = WebApi(server, reader)
    assert read_only.get("doc.txt").body == b"first"
    denied = read_only.put("doc.txt", b"mine")
    assert (denied.status, denied.code) == (403, "DENIED")
    assert read_only.request("DELETE", web.url("default", "files", "doc.txt")).status == 403
    for escape in ("..%2F..%2Fetc%2Fpasswd", "a%00b", "%2Fabs"):
        target = f"/api/v1/shares/default/files/{escape}"
        answer = web.request("PUT", target, b"x")
        assert (answer.status, answer.code) == (400, "INVALID_PATH"), escape
    big = web.put("big.bin", b"b" * (2 << 20))
    assert (big.status, big.code) == (413, "TOO_LARGE")
    past = web.get("doc.txt", Range="bytes=100-")
    assert (past.status, past.code) == (416, "RANGE_NOT_SATISFIABLE")
    assert past.headers["content-range"] == "bytes */5"
    stale = web.put("doc.txt", b"second", If_Match=f'"{"f" * 32}"')
    assert (stale.status, stale.code) == (412, "CONFLICT")
    fresh = web.put("doc.txt", b"second", If_Match=f'"{xxhash.xxh3_128_hexdigest(b"first")}"')
    assert fresh.status == 201
    assert web.put("doc.txt", b"third", If_None_Match="*").status == 412
    assert web.get("doc.txt").body == b"second"
    other = web.request("GET", "/api/v1/shares/photos/files")
    assert (other.status, other.code) == (401, "AUTH_FAILED")  # nothing said about the share
    assert web.request("GET", "/api/v1/shares/bad%20name/files").status == 400
    assert web.request("PATCH", web.url("default", "files", "doc.txt")).status == 405
    assert web.request("GET", "/api/v1/nothing").status == 404
    assert web.request("GET", web.url("default", "files") + "?limit=x").code == "MALFORMED"
    assert _chunked_put(server, writer) == 411
    assert web.get("doc.txt").body == b"second"  # the server is up, and nothing was lost


def _chunked_put(server, token: str) -> int:
    conn = http.client.HTTPConnection(server.host, server.http_port, timeout=10)
    conn.putrequest("PUT", "/api/v1/shares/default/files/c.txt")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.putheader("Authorization", f"Bearer {token}")
    conn.endheaders()
    conn.send(b"3\r\nabc\r\n0\r\n\r\n")
    status = conn.getresponse().status
    conn.close()
    return status


def test_the_openapi_document_validates_and_every_route_in_it_answers(web, tmp_path):
    doc = web.request("GET", "/api/v1/openapi.json").json()
    validate(doc)
    web.put("docs/a.txt", b"one")
    web.put("docs/a.txt", b"two")
    first = web.request("GET", web.url("default", "versions", "docs/a.txt")).json()
    old = first["versions"][-1]["version"]
    values = {"share": "default", "path": "docs/a.txt"}
    called = 0
    for template, ops in doc["paths"].items():
        for method, op in ops.items():
            target = re.sub(r"\{(\w+)\}", lambda found: values[found.group(1)], template)
            query = {p["name"]: old for p in op.get("parameters", ())
                     if p["in"] == "query" and p.get("required")}  # fmt: skip
            if query:
                target += "?" + "&".join(f"{k}={v}" for k, v in query.items())
            if op["operationId"] == "watchChanges":
                status = _first_event(web, target)
            else:
                body = b"three" if method == "put" else None
                status = web.request(method.upper(), target, body).status
            assert str(status) in op["responses"], (method, template, status)
            assert status < 400, (method, template, status)
            called += 1
            if op["operationId"] == "deleteFile":
                web.put("docs/a.txt", b"back")  # (the routes after it need the file)
    assert called >= 11


def _first_event(web: WebApi, target: str) -> int:
    conn = http.client.HTTPConnection(web.server.host, web.server.http_port, timeout=10)
    conn.request("GET", target)
    resp = conn.getresponse()
    line = resp.readline()
    conn.close()
    assert line.startswith(b"event: ready"), line
    return resp.status


def test_the_change_stream_shows_an_fs_clients_put_as_it_happens(web, tmp_path):
    with socket.create_connection((web.server.host, web.server.http_port), timeout=15) as sock:
        sock.sendall(b"GET /api/v1/shares/default/changes?since=0 HTTP/1.1\r\nHost: x\r\n\r\n")
        stream = sock.makefile("rb")
        while not stream.readline().startswith(b"event: ready"):
            pass
        (tmp_path / "n.txt").write_bytes(b"news")
        assert (
            fsclient("put", str(tmp_path / "n.txt"), "news.txt", server=web.server).returncode == 0
        )
        while True:
            line = stream.readline()
            assert line, "the stream ended"
            if line.startswith(b"data: ") and b"news.txt" in line:
                change = json.loads(line[6:])
                break
    assert change["size"] == 4 and change["deleted"] is False
    assert change["digest"] == xxhash.xxh3_128_hexdigest(b"news")


def test_http_requests_are_counted_in_the_metrics(web):
    web.put("m.txt", b"metered")
    assert web.get("m.txt").status == 200
    assert web.get("nope.txt").status == 404
    server = web.server
    assert server.metric('fs_http_requests_total{method="GET",route="file",status="200"}') >= 1
    assert server.metric('fs_http_requests_total{method="GET",route="file",status="404"}') >= 1
    assert server.metric('fs_http_bytes_total{direction="sent"}') > len(b"metered")
    assert server.metric('fs_http_request_seconds_count{route="file"}') >= 3


def test_one_connection_serves_many_requests_and_answers_expect_continue(web):
    web.put("k.txt", b"kept alive")
    for _ in range(3):  # the same connection each time (keep=True)
        assert web.request("GET", web.url("default", "files", "k.txt"), keep=True).body == (
            b"kept alive"
        )
    first = web.conn.sock.getsockname()
    assert web.request("GET", web.url("default", "files"), keep=True).status == 200
    assert web.conn.sock.getsockname() == first  # not reconnected
    web.conn.close()

    with socket.create_connection((web.server.host, web.server.http_port), timeout=5) as sock:
        sock.sendall(b"PUT /api/v1/shares/default/files/e.txt HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n")  # fmt: skip
        assert sock.recv(64).startswith(b"HTTP/1.1 100 ")  # (curl would wait 1 s without it)
        sock.sendall(b"hello")
        assert sock.recv(4096).startswith(b"HTTP/1.1 201 ")


def test_a_body_framed_two_ways_or_a_wild_mtime_is_refused_and_nothing_is_overwritten(web):
    """``Content-Length: 1`` with a chunked body must not write past its one byte: other
    files' bytes lie next to it in the arena."""
    neighbour = os.urandom(64 << 10)
    assert web.put("n.bin", neighbour).status == 201
    with socket.create_connection((web.server.host, web.server.http_port), timeout=5) as sock:
        sock.sendall(b"PUT /api/v1/shares/default/files/x.bin HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + b"10000\r\n" + b"\xff" * 0x10000 + b"\r\n0\r\n\r\n")  # fmt: skip
        answer = sock.recv(4096)
    assert answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 411 ")), answer[:80]
    assert web.get("n.bin").body == neighbour
    assert web.get("x.bin").status == 404
    wild = web.put("m.bin", b"x", X_FS_Mtime_Ns="9" * 20)
    assert (wild.status, wild.code) == (400, "MALFORMED")
    odd = web.request("GET", web.url("default", "files") + "?limit=%C2%B2")  # a superscript 2
    assert (odd.status, odd.code) == (400, "MALFORMED")


def test_a_page_of_another_site_cannot_change_a_server_without_tokens(web):
    web.put("r.txt", b"one")
    web.put("r.txt", b"two")
    old = web.request("GET", web.url("default", "versions", "r.txt")).json()["versions"][-1]
    target = web.url("default", "restore", "r.txt") + f"?version={old['version']}"
    here = f"http://{web.server.host}:{web.server.http_port}"
    forged = web.request("POST", target, b"", {"Origin": "http://evil.example"})
    assert (forged.status, forged.code) == (403, "DENIED")
    assert web.request("DELETE", web.url("default", "files", "r.txt"), None,
                       {"Origin": "http://evil.example"}).status == 403  # fmt: skip
    assert web.get("r.txt").body == b"two"
    assert web.request("POST", target, b"", {"Origin": here}).status == 200  # the page itself
    assert web.get("r.txt").body == b"one"


def test_an_error_answer_keeps_the_connection(web):
    assert web.request("GET", web.url("default", "files", "none.txt"), keep=True).status == 404
    first = web.conn.sock.getsockname()
    assert web.request("GET", web.url("default", "files"), keep=True).status == 200
    assert web.conn.sock.getsockname() == first
    web.conn.close()


def test_a_change_stream_ends_when_its_token_is_revoked(tmp_path, server_factory):
    tokens = tmp_path / "tokens.toml"
    token = add_token(tokens, "watcher", "default")
    server = server_factory("--store-size", "16MiB", "--http-port", "0", "--tokens", str(tokens))
    with socket.create_connection((server.host, server.http_port), timeout=15) as sock:
        sock.sendall(b"GET /api/v1/shares/default/changes HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer " + token.encode() + b"\r\n\r\n")  # fmt: skip
        stream = sock.makefile("rb")
        while not stream.readline().startswith(b"event: ready"):
            pass
        data = tomllib.loads(tokens.read_text())
        data["token"][0]["revoked"] = True
        tokens.write_text(tomli_w.dumps(data))
        lines: list[bytes] = []
        while not lines or b"revoked" not in lines[-1]:
            line = stream.readline()
            assert line, "the stream ended without saying why"
            if line.startswith((b"event: ", b"data: ")):
                lines.append(line)
    assert lines[-2] == b"event: error\n" and b"revoked" in lines[-1]
