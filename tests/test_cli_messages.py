"""What ``fsclient`` says when it cannot do what it was asked (issue 12): each message in
words, one line, with its exit code (1: it failed; 2: the command line cannot be meant)."""

from __future__ import annotations

import argparse
import asyncio

import pytest

from common.errors import FSError
from fsclient import Client
from fsclient import connect as connect_module
from fsclient.cli import build_parser, main
from fsclient.connect import parse_server
from tests.cli import fsclient
from tests.conftest import run


def error_line(done, code: int) -> str:
    """The one error line of a failed command, after checking its exit code."""
    assert done.returncode == code, (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1, done.stderr
    return done.stderr


def test_a_missing_local_file_is_named_in_words(server, tmp_path):
    missing = tmp_path / "x"
    for args in (["put", str(missing), "x"], ["put", "-r", str(missing), "x/"]):
        done = fsclient(*args, server=server)
        assert error_line(done, 1) == f"fsclient: error: no such file: {missing}\n"
    done = fsclient("put", str(missing), server="127.0.0.1:1")  # checked before connecting
    assert error_line(done, 1) == f"fsclient: error: no such file: {missing}\n"


def test_get_into_a_folder_that_does_not_exist_says_so(server, tmp_path):
    (tmp_path / "f.txt").write_text("f")
    assert fsclient("put", str(tmp_path / "f.txt"), "f.txt", server=server).returncode == 0
    target = tmp_path / "nowhere" / "f.txt"
    done = fsclient("get", "f.txt", str(target), server=server)
    assert error_line(done, 1) == f"fsclient: error: folder does not exist: {target.parent}\n"
    assert not target.parent.exists()


def test_get_r_into_a_file_says_it_is_not_a_folder(server, tmp_path):
    (tmp_path / "f.txt").write_text("f")
    assert fsclient("put", str(tmp_path / "f.txt"), "d/f.txt", server=server).returncode == 0
    done = fsclient("get", "-r", "d", str(tmp_path / "f.txt"), server=server)
    assert error_line(done, 1) == f"fsclient: error: not a folder: {tmp_path}/f.txt\n"
    assert (tmp_path / "f.txt").read_text() == "f"


def test_a_folder_without_r_asks_for_a_file_name_or_r(server, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("a")
    done = fsclient("put", f"{docs}/", "remote", server=server)
    assert error_line(done, 2) == (
        f"fsclient: error: {docs}/ is a folder: give a file name, or use -r\n"
    )
    assert fsclient("ls", server=server).stdout == ""  # nothing was sent

    assert fsclient("put", "-r", str(docs), "docs/", server=server).returncode == 0
    done = fsclient("get", "docs", str(tmp_path / "back"), server=server)
    assert error_line(done, 2) == "fsclient: error: docs is a folder: give a file name, or use -r\n"
    done = fsclient("rm", "docs", server=server)
    assert error_line(done, 2) == "fsclient: error: docs is a folder: use -r to delete it\n"
    done = fsclient("rm", "-r", "/", server=server)
    assert error_line(done, 2) == (
        "fsclient: error: rm -r needs a folder: it does not delete the whole share\n"
    )


def test_a_server_without_a_port_means_the_default_port(server, monkeypatch, capsys):
    assert parse_server("files.example") == ("files.example", 7878)
    assert parse_server("[::1]") == ("::1", 7878)
    assert parse_server("::1") == ("::1", 7878)
    assert parse_server("[::1]:9000") == ("::1", 9000)
    with pytest.raises(ValueError, match="expected HOST or HOST:PORT"):
        parse_server("files.example:http")
    # this server's port stands in for 7878 (which another program may hold)
    monkeypatch.setattr(connect_module, "DEFAULT_SERVER", f"127.0.0.1:{server.port}")

    async def put() -> None:
        async with await Client.connect("127.0.0.1") as client:
            await client.put_bytes(b"hello", "hello.txt")

    run(put())
    assert main(["ls", "--server", "127.0.0.1"]) == 0
    assert capsys.readouterr().out.startswith("hello.txt\t5\t")


def test_the_metrics_port_is_not_an_fs_port(server):
    where = f"127.0.0.1:{server.metrics_port}"
    done = fsclient("ls", server=where)
    assert error_line(done, 1) == (
        f"fsclient: error: {where} answered HTTP: this is not an FS port (the metrics port?)\n"
    )


def test_an_http_server_that_waits_for_a_whole_request_is_found_out():
    """Most HTTP servers say nothing until a request ends with an empty line, and close on a
    timeout: the client asks one with ``HEAD /`` to tell the user what it is."""

    async def http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.5)
            writer.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        except (TimeoutError, asyncio.IncompleteReadError):
            pass
        writer.close()

    async def main() -> tuple[str, str]:
        stub = await asyncio.start_server(http, "127.0.0.1", 0)
        port = stub.sockets[0].getsockname()[1]
        try:
            with pytest.raises(FSError) as caught:
                await Client.connect(f"127.0.0.1:{port}")
        finally:
            stub.close()
        return f"127.0.0.1:{port}", caught.value.message

    where, message = run(main())
    assert message == f"{where} answered HTTP: this is not an FS port (the metrics port?)"


def test_every_positional_argument_has_help():
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    checked = []
    for name, sub in commands.choices.items():
        for action in sub._actions:
            if not action.option_strings:
                assert action.help, f"fsclient {name} {action.dest}: no help"
                checked.append(f"{name} {action.dest}")
    assert {"put local", "put remote", "get remote", "get local", "ls prefix", "rm remote",
            "sync dir", "status dir", "unsync dir", "help topic"} <= set(checked)  # fmt: skip
