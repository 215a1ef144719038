"""The ``fsserver`` command line: flags, ``FS_*`` variables, sizes, ready line, health
endpoints, and clear errors with a non-zero exit for bad settings."""

from __future__ import annotations

import os
import socket
import subprocess

import pytest

from fsclient import Client
from fsserver.cli import config_from
from fsserver.config import ServerConfig, parse_size
from tests.cli import fsserver_tool
from tests.conftest import run


def test_sizes_accept_kib_mib_gib():
    assert parse_size("4096") == 4096
    assert parse_size("512KiB") == 512 << 10
    assert parse_size("256MiB") == 256 << 20
    assert parse_size("2gib") == 2 << 30
    for bad in ["12XB", "MiB", "-1MiB", "1.5GiB", ""]:
        with pytest.raises(ValueError, match="invalid size"):
            parse_size(bad)


def test_flags_win_over_environment_which_wins_over_defaults():
    env = {"FS_PORT": "9000", "FS_WORKERS": "3", "FS_STORE_SIZE": "64MiB", "FS_LOG_LEVEL": "DEBUG"}
    config = config_from(["--workers", "5"], env)
    assert config == ServerConfig(port=9000, workers=5, store_size=64 << 20, log_level="debug")
    assert config_from([], {}) == ServerConfig()


def test_limits_and_deadlines_from_flags_and_environment():
    env = {"FS_SHARE_QUOTA": "2GiB", "FS_PACKET_TIMEOUT": "3", "FS_MAX_CONNECTIONS": "50",
           "FS_IDLE_TIMEOUT": "99"}  # fmt: skip
    argv = ["--max-file-size", "1MiB", "--idle-timeout", "2.5", "--handshake-timeout", "0.5",
            "--max-in-flight", "8"]  # fmt: skip
    assert config_from(argv, env) == ServerConfig(
        max_file_size=1 << 20, share_quota=2 << 30, max_connections=50, max_in_flight=8,
        handshake_timeout=0.5, idle_timeout=2.5, packet_timeout=3.0,
    )  # fmt: skip


def fsserver(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A start that must fail (on ports of its own choosing, should it not)."""
    return fsserver_tool("--port", "0", "--metrics-port", "0", *args, env=env)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--store-size", "12XB"], {}, "--store-size: invalid size '12XB'"),
        (["--workers", "0"], {}, "--workers must be 1..256"),
        ([], {"FS_WORKERS": "lots"}, "FS_WORKERS: invalid literal"),
        ([], {"FS_LOG_LEVEL": "loud"}, "--log-level must be one of"),
        (["--max-packet", "1024"], {}, "--max-packet must be 4096.."),
        (["--handshake-timeout", "0"], {}, "--handshake-timeout must be positive"),
        ([], {"FS_HANDSHAKE_TIMEOUT": "-1"}, "--handshake-timeout must be positive"),
        (["--idle-timeout", "0"], {}, "--idle-timeout must be positive"),
        (["--idle-timeout", "nan"], {}, "--idle-timeout must be positive"),
        ([], {"FS_IDLE_TIMEOUT": "-5"}, "--idle-timeout must be positive"),
        (["--packet-timeout", "-0.5"], {}, "--packet-timeout must be positive"),
        ([], {"FS_PACKET_TIMEOUT": "soon"}, "FS_PACKET_TIMEOUT: could not convert"),
        (["--max-file-size", "-1"], {}, "--max-file-size: invalid size '-1'"),
        ([], {"FS_SHARE_QUOTA": "-1MiB"}, "FS_SHARE_QUOTA: invalid size '-1MiB'"),
        (["--max-connections", "0"], {}, "--max-connections must be at least 1"),
        ([], {"FS_MAX_CONNECTIONS": "-3"}, "--max-connections must be at least 1"),
        (["--max-in-flight", "0"], {}, "--max-in-flight must be 1..65536"),
        (["--max-in-flight", "65537"], {}, "--max-in-flight must be 1..65536"),
        (["--http-port", "web"], {}, "--http-port: not a port: 'web' (a number 0..65535, or off)"),
        (["--http-port", "70000"], {}, "--http-port must be 0..65535 or off"),
        ([], {"FS_HTTP_PORT": "-5"}, "FS_HTTP_PORT: not a port: '-5'"),
        (["--keep-versions", "-1"], {}, "--keep-versions must be 0..100000"),
        ([], {"FS_KEEP_VERSIONS": "ten"}, "FS_KEEP_VERSIONS: invalid literal"),
        (["--keep-days", "0"], {}, "--keep-days must be positive"),
        ([], {"FS_KEEP_DAYS": "nan"}, "--keep-days must be positive"),
    ],
)
def test_bad_settings_exit_2_with_a_clear_message(args, env, message):
    result = fsserver(*args, env=env)
    assert result.returncode == 2
    assert result.stderr.startswith(f"fsserver: error: {message}")
    assert result.stderr.count("\n") == 1, result.stderr  # one line


def test_port_in_use_is_a_clear_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = fsserver("--host", "127.0.0.1", "--port", str(port))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr


def test_store_larger_than_dev_shm_fails_at_start_with_advice():
    shm = os.statvfs("/dev/shm")
    too_big = shm.f_blocks * shm.f_frsize * 2
    result = fsserver("--store-size", str(too_big))
    assert result.returncode == 1
    assert "cannot reserve a" in result.stderr
    assert "--shm-size" in result.stderr
    assert not [name for name in os.listdir("/dev/shm") if name.startswith("fs-")
                and int(name.split("-")[1]) == os.getpid()]  # fmt: skip


def test_environment_configures_a_real_server(server_factory):
    server = server_factory(env={"FS_WORKERS": "3", "FS_STORE_SIZE": "24MiB",
                                 "FS_HASH_WORKERS": "2"})  # fmt: skip
    assert server.metric("fs_store_capacity_bytes") == 24 << 20
    assert server.http_get("/healthz") == (200, "ok\n")
    assert server.http_get("/readyz") == (200, "ready\n")
    assert server.http_get("/nope")[0] == 404
    assert f"fsserver ready on 127.0.0.1:{server.port}" in server.log.text()

    async def workers_seen():
        seen = set()
        for _ in range(6):
            async with await Client.connect(server.address) as client:
                seen.add(client.worker_id)
        return seen

    assert run(workers_seen()) == {0, 1, 2}
