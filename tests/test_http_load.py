"""The HTTP API under load: 200 downloads of one 10 MiB file at once, every byte right, while
the FS protocol's clients go on being served."""

from __future__ import annotations

import http.client
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import xxhash

from tests.cli import fsclient
from tests.webapi import WebApi

CLIENTS = 200


def test_two_hundred_concurrent_downloads_while_fs_clients_are_served(server_factory, tmp_path):
    server = server_factory("--store-size", "64MiB", "--http-port", "0")
    data = os.urandom(10 << 20)
    assert WebApi(server).put("big.bin", data).status == 201
    digest = xxhash.xxh3_128_hexdigest(data)
    start = threading.Barrier(CLIENTS)

    def download(_: int) -> tuple[int, str]:
        conn = http.client.HTTPConnection(server.host, server.http_port, timeout=120)
        try:
            start.wait()
            conn.request("GET", "/api/v1/shares/default/files/big.bin")
            resp = conn.getresponse()
            hasher = xxhash.xxh3_128()
            while chunk := resp.read(1 << 20):
                hasher.update(chunk)
            return resp.status, hasher.hexdigest()
        finally:
            conn.close()

    served: list[int] = []
    done = threading.Event()

    def fs_clients() -> None:
        """Round trips over the FS protocol for as long as the downloads run."""
        local = tmp_path / "small.txt"
        while not done.is_set() or not served:
            local.write_bytes(f"round {len(served)}".encode())
            put = fsclient("put", str(local), "small.txt", server=server)
            got = fsclient("get", "small.txt", str(tmp_path / "back.txt"), server=server)
            back = (tmp_path / "back.txt").read_bytes()
            served.append(put.returncode | got.returncode | (back != local.read_bytes()))

    beside = threading.Thread(target=fs_clients)
    beside.start()
    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            results = list(pool.map(download, range(CLIENTS)))
    finally:
        done.set()
        beside.join(120)
    assert results == [(200, digest)] * CLIENTS
    assert served and not any(served), served
