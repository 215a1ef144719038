"""The command lines as people use them every day (issue 12): ``--version`` on both commands,
and ``fsclient ls | head``, which ends quietly with 0 once the reader has had enough."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from fsclient import Client
from tests.cli import CLI_TIMEOUT, cli_env, fsclient_command
from tests.conftest import run


@pytest.mark.parametrize("program", ["fsclient", "fsserver"])
def test_version_prints_the_installed_version_and_exits_0(program):
    done = subprocess.run([sys.executable, "-m", program, "--version"], capture_output=True,
                          text=True, env=cli_env(), timeout=CLI_TIMEOUT)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{program} {metadata.version('fs-filesync')}\n"
    assert re.fullmatch(r"\d+\.\d+\.\d+", metadata.version("fs-filesync"))


def test_version_wins_over_other_arguments(server):
    """``--version`` answers before anything else is checked or any connection is made."""
    done = subprocess.run(fsclient_command("--version", "ls", server="127.0.0.1:1"),
                          capture_output=True, text=True, env=cli_env(),
                          timeout=CLI_TIMEOUT)  # fmt: skip
    assert done.returncode == 0 and done.stdout.startswith("fsclient ")


def test_ls_into_a_reader_that_stops_early_ends_quietly_with_0(server, tmp_path: Path):
    """3,000 lines are far more than a pipe holds: ``ls`` is still writing when the reader
    goes, as with ``fsclient ls | head -3``."""
    source = tmp_path / "one.txt"
    source.write_bytes(b"x")

    async def fill() -> None:
        async with await Client.connect(server.address) as client:
            await client.put_many([(str(source), f"d/f{n:05d}.txt") for n in range(3000)])

    run(fill())
    with subprocess.Popen(fsclient_command("ls", server=server), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, env=cli_env()) as ls:  # fmt: skip
        assert ls.stdout is not None and ls.stderr is not None
        first = [ls.stdout.readline() for _ in range(3)]
        ls.stdout.close()  # the reader goes, as head does
        code = ls.wait(timeout=CLI_TIMEOUT)
        errors = ls.stderr.read().decode()
    assert [line.split(b"\t")[0] for line in first] == [b"d/f00000.txt", b"d/f00001.txt",
                                                         b"d/f00002.txt"]  # fmt: skip
    assert code == 0, errors
    assert errors == ""


HEAVY = ("asyncio", "ssl", "common.messages", "dataclasses", "importlib.metadata", "uvloop",
         "sqlite3")  # fmt: skip
"""What help, --version and usage errors must not load: each costs a command ~5 to 40 ms."""


@pytest.mark.parametrize(
    "args", [["--help"], ["--version"], ["put", "--help"], ["sync", "--help"], ["put"], ["lss"]]
)
def test_help_version_and_usage_errors_load_no_protocol_or_asyncio(args):
    """They answer from the parser alone (the start-up time itself is in ``make bench``)."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "fsclient", *args],
                          capture_output=True, text=True, env=cli_env(),
                          timeout=CLI_TIMEOUT)  # fmt: skip
    assert done.returncode == (2 if args in (["put"], ["lss"]) else 0), done.stderr
    loaded = {line.split("|")[-1].strip() for line in done.stderr.splitlines()
              if line.startswith("import time:")}  # fmt: skip
    assert "fsclient.cli" in loaded  # the check sees our imports
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))
