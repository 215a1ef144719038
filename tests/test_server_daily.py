"""The ``fsserver`` command as operators use it every day (issue 12): a ``--tokens`` file that
does not exist stops the start; ``ps`` tells the processes apart; sizes take G, GiB and GB and
the log says what they came to; ``--help`` shows the commands, the environment variables and
defaults as people write them; the info log has a line per connection and per failed transfer.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import psutil
import pytest

from common.errors import NotFound
from fsclient import Client
from fsclient.access import Access
from fsserver.cli import OPTIONS
from fsserver.config import parse_size
from tests.cli import fsclient, fsserver_tool
from tests.conftest import run
from tests.secured import add_token
from tests.serverproc import ROOT, server_children, wait_for


def one_line(text: str) -> str:
    """Help text with its wrapping undone (argparse wraps at the terminal's width)."""
    return " ".join(text.split())


@pytest.mark.parametrize("via_env", [False, True])
def test_a_missing_tokens_file_stops_the_start_and_is_not_created(tmp_path, via_env):
    missing = tmp_path / "tokns.toml"  # a typo
    args = [] if via_env else ["--tokens", str(missing)]
    env = {"FS_TOKENS": str(missing)} if via_env else None
    out = fsserver_tool("--port", "0", "--metrics-port", "0", *args, env=env)
    assert out.returncode == 2
    assert out.stderr == (
        f"fsserver: error: tokens file {missing} does not exist (--tokens, FS_TOKENS); create it "
        f"with fsserver add-token NAME --tokens {missing} --share SHARE\n"
    )
    assert not missing.exists()
    assert "ready" not in out.stdout + out.stderr


def title(pid: int) -> str:
    """What ``ps -o args`` shows: the process's command line, NULs as spaces."""
    return Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").replace(b"\0", b" ").decode()


def test_ps_shows_each_server_process_role(server_factory, tmp_path):
    server = server_factory("--workers", "2", "--hash-workers", "1", "--store-size", "16MiB",
                            "--data-dir", str(tmp_path / "data"))  # fmt: skip
    supervisor = title(server.pid)
    assert supervisor.startswith("fsserver: supervisor --host 127.0.0.1 --port 0"), supervisor
    expected = {"fsserver: worker 0", "fsserver: worker 1", "fsserver: hasher 0",
                "fsserver: persister", "fsserver: fork server"}  # fmt: skip

    def children() -> set[str]:
        found = {title(p.pid) for p in server_children(server.pid)}
        # multiprocessing's resource tracker runs no code of ours: it keeps its command line
        return {t for t in found if "multiprocessing.resource_tracker" not in t}

    wait_for(lambda: children() == expected, 30, f"children titled {expected}")
    family = ",".join(str(p.pid) for p in server_children(server.pid))
    shown = subprocess.run(["ps", "-o", "args=", "-p", family], capture_output=True, text=True,
                           check=True).stdout  # fmt: skip
    assert expected <= {line.strip() for line in shown.splitlines()}
    assert "multiprocessing.spawn" not in shown and "multiprocessing.forkserver" not in shown
    names = {p.name() for p in server_children(server.pid)}  # top's names stay
    assert {"fs-worker-0", "fs-worker-1", "fs-hasher-0", "fs-persister-0", "fs-forkserver"} <= names
    assert psutil.Process(server.pid).name() == "fsserver"


def test_sizes_take_binary_and_decimal_units():
    """G and GiB are 2**30, GB is 10**9, whatever the case; bytes stay bytes."""
    assert parse_size("1G") == parse_size("1GiB") == parse_size("1gib") == 1 << 30
    assert parse_size("1GB") == parse_size("1gb") == 10**9
    assert parse_size("512M") == parse_size("512 MiB") == 512 << 20
    assert parse_size("2TB") == 2 * 10**12 and parse_size("4K") == parse_size("4Ki") == 4096
    assert parse_size("123") == parse_size("123B") == 123


@pytest.mark.parametrize(
    ("args", "env", "origin", "value"),
    [
        (["--store-size", "1.5G"], {}, "--store-size", "1.5G"),
        (["--store-size", "1GiBB"], {}, "--store-size", "1GiBB"),
        (["--max-file-size", "10XB"], {}, "--max-file-size", "10XB"),
        (["--max-packet", "1Mb/s"], {}, "--max-packet", "1Mb/s"),
        ([], {"FS_SHARE_QUOTA": "lots"}, "FS_SHARE_QUOTA", "lots"),
    ],
)
def test_a_bad_size_is_a_usage_error_that_says_which_units_work(args, env, origin, value):
    out = fsserver_tool("--port", "0", "--metrics-port", "0", *args, env=env)
    assert out.returncode == 2
    assert out.stderr == (
        f"fsserver: error: {origin}: invalid size {value!r}: use bytes or a whole number with a "
        "unit, such as 512MiB, 1G or 1GB (G and GiB: 2**30; GB: 10**9)\n"
    )


@pytest.mark.parametrize(
    ("size", "logged"),
    [("16M", "16 MiB (16777216 bytes)"), ("16MB", "15.26 MiB (16000000 bytes)")],
)
def test_the_start_up_log_says_what_a_size_came_to(server_factory, size, logged):
    server = server_factory("--workers", "1", "--store-size", size, "--share-quota", "2G")
    text = server.log.text()
    assert f"INFO MainProcess fsserver.cli: store size {logged}\n" in text
    assert "share quota 2 GiB (2147483648 bytes)\n" in text
    assert server.metric("fs_store_capacity_bytes") == parse_size(size)


def test_help_lists_the_commands_environment_and_human_defaults():
    out = fsserver_tool("--help")
    assert out.returncode == 0 and not out.stderr
    text = one_line(out.stdout)
    assert "fsserver init-tls DIR" in text and "fsserver add-token NAME --tokens FILE" in text
    assert "commands: init-tls DIR write a self-signed TLS certificate" in text
    assert "add-token NAME add a token to a tokens file" in text
    for flag, _field, env, _parse, _text in OPTIONS:
        assert f"(env {env}, default " in text, env
        assert re.search(rf"{flag} [A-Z]+ ", text), flag
        assert f"{flag} {env}" not in text  # the value is named, not the variable
    assert "--port PORT " in text and "--store-size SIZE " in text and "--tokens FILE " in text
    assert "(env FS_STORE_SIZE, default 256MiB)" in text
    assert "(env FS_MAX_PACKET, default 1MiB)" in text
    assert "(env FS_HANDSHAKE_TIMEOUT, default 10)" in text
    assert "(env FS_TOKENS, default none)" in text
    assert "268435456" not in text and "default '" not in text  # (no repr of a str)
    assert "1G = 1GiB = 1073741824 bytes, 1GB = 1000000000 bytes" in text


def test_the_readme_options_table_lists_every_option():
    readme = (ROOT / "README.md").read_text()
    rows = [line for line in readme.splitlines() if line.startswith("| `--")]
    listed = set(re.findall(r"`(--[a-z-]+)`", "\n".join(rows)))
    flags = {flag for flag, *_ in OPTIONS} | {"--insecure-no-auth", "--repair"}
    assert flags <= listed, flags - listed


OPENED = re.compile(r"INFO \S+ fsserver.connections: connection opened from (127.0.0.1:\d+): "
                    r"token laptop, share default, client \S+\n")  # fmt: skip


@pytest.mark.parametrize("level", ["info", "debug"])
def test_the_log_has_a_line_per_connection_and_per_failed_transfer(server_factory, tmp_path, level):
    tokens = tmp_path / "tokens.toml"
    token = add_token(tokens, "laptop", "default")
    server = server_factory("--workers", "1", "--store-size", "16MiB", "--tokens", str(tokens),
                            "--log-level", level)  # fmt: skip
    source = tmp_path / "hello.txt"
    source.write_bytes(b"hello, log")
    auth = ["--server", server.address, "--token", token]
    assert fsclient("put", str(source), "hello.txt", *auth).returncode == 0

    async def get_missing() -> None:  # (the library asks the server; the command looks first)
        async with await Client.connect(server.address, access=Access(token=token)) as client:
            with pytest.raises(NotFound):
                await client.get("missing.txt", tmp_path / "copy")

    run(get_missing())
    closed = re.compile(r"INFO \S+ fsserver.connections: connection closed from (127.0.0.1:\d+) "
                        r"after [\d.]+ s: token laptop, share default; (.*)\n")  # fmt: skip
    wait_for(lambda: len(closed.findall(server.log.text())) == 2, 10, "two closed lines")
    text = server.log.text()
    opened_peers = OPENED.findall(text)
    closed_lines = closed.findall(text)
    assert len(opened_peers) == 2 and [p for p, _ in closed_lines] == opened_peers
    assert closed_lines[0][1] == "files in 1 (10 bytes), out 0 (0 bytes)"
    assert closed_lines[1][1] == "files in 0 (0 bytes), out 0 (0 bytes); 1 failed, 0 cut short"
    assert (
        f"INFO worker-0 fsserver.connections: {opened_peers[1]}: download of missing.txt "
        "failed: " in text
    )
    received = f"{opened_peers[0]}: received hello.txt (10 bytes"
    assert (received in text) == (level == "debug")
    assert "token refused" not in text
