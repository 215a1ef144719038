"""Who may read /metrics: --metrics-host (FS_METRICS_HOST) picks its address, and
--metrics-token-file (FS_METRICS_TOKEN_FILE) makes it ask for a bearer token; the probes stay
open."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from fsserver.cli import config_from
from tests.serverproc import ROOT


def test_metrics_listen_on_the_fs_host_by_default(server):
    assert server.metrics_host == server.host == "127.0.0.1"
    assert config_from([], {}).metrics_address == "127.0.0.1"
    assert config_from(["--metrics-host", "127.0.0.2"], {}).metrics_address == "127.0.0.2"
    assert config_from([], {"FS_METRICS_HOST": "::1"}).metrics_address == "::1"


def test_metrics_host_moves_only_the_http_endpoint(server_factory):
    """127.0.0.2 is loopback too on Linux: /metrics answers there, and not on the FS host."""
    server = server_factory(env={"FS_METRICS_HOST": "127.0.0.2"})
    assert (server.host, server.metrics_host) == ("127.0.0.1", "127.0.0.2")
    assert server.http_get("/healthz")[0] == 200
    assert "fs_store_capacity_bytes" in server.http_get("/metrics")[1]
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.metrics_port), timeout=5).close()
    socket.create_connection(("127.0.0.1", server.port), timeout=5).close()  # FS stays


def test_metrics_ask_for_the_bearer_token(server_factory, tmp_path):
    token = tmp_path / "metrics-token"
    token.write_text("first-secret\n")
    server = server_factory("--metrics-token-file", str(token))

    def status(value: str | None, path: str = "/metrics") -> int:
        return server.http_get(path, headers={"Authorization": value} if value else {})[0]

    assert status(None) == 401
    assert "Bearer" in server.http_get("/metrics")[1]
    assert status("Bearer wrong-secret") == 401
    assert status("Basic Zmlyc3Qtc2VjcmV0") == 401
    assert status("Bearer first-secret") == 200
    assert status("bearer first-secret") == 200  # the scheme is case-insensitive
    assert "fs_store_used_bytes" in server.http_get(
        "/metrics", headers={"Authorization": "Bearer first-secret"})[1]  # fmt: skip
    assert status(None, "/healthz") == 200  # probes send no credentials
    assert status(None, "/readyz") == 200
    token.write_text("second-secret\n")  # a rotated secret applies without a restart
    assert status("Bearer first-secret") == 401
    assert status("Bearer second-secret") == 200


@pytest.mark.parametrize(("content", "words"), [
    (None, "No such file or directory"), ("", "must hold one token"),
    ("two words", "must hold one token"),
])  # fmt: skip
def test_a_bad_metrics_token_file_stops_the_start(tmp_path, content, words):
    token = tmp_path / "metrics-token"
    if content is not None:
        token.write_text(content)
    result = subprocess.run(
        [sys.executable, "-m", "fsserver", "--port", "0", "--metrics-port", "0",
         "--store-size", "8MiB", "--workers", "1", "--metrics-token-file", str(token)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    lines = [line for line in (result.stdout + result.stderr).splitlines() if "metrics" in line]
    assert any(f"--metrics-token-file {token}" in line and words in line for line in lines), lines
    assert "Traceback" not in result.stderr
