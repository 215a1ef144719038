"""Run the real ``fsclient`` and ``fsserver`` command lines in tests to their end: one way to
build the command and its environment, so that every test runs the worktree's code the same
way. (Servers that keep running are started by ``tests.serverproc``.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Protocol

from tests.serverproc import ROOT

NO_CONFIG = ROOT / "tests" / "no-such-config-home"
"""XDG_CONFIG_HOME for the commands: a developer's own ~/.config/fs/config.toml must not leak
into a test either (a test that wants a file sets FS_CONFIG or its own XDG_CONFIG_HOME)."""
CLI_TIMEOUT = 120.0
"""Seconds a command may take before the test fails (generous: a loaded machine is slow)."""


class HasAddress(Protocol):
    @property
    def address(self) -> str: ...


def fsclient_command(*args: str, server: HasAddress | str | None = None) -> list[str]:
    """``python -m fsclient ARGS``, with ``--server ADDRESS`` after them if *server* is given
    (a server, or its address)."""
    cmd = [sys.executable, "-m", "fsclient", *args]
    if server is not None:
        cmd += ["--server", server if isinstance(server, str) else server.address]
    return cmd


def cli_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without the ``FS_*`` settings (a developer's own
    ``FS_SERVER`` or ``FS_TOKEN`` must not leak into a test, nor a config file), plus *env*.
    The repository comes first on the import path, so that the code under test runs from any
    folder (not an installed copy)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FS_")}
    path = os.pathsep.join(p for p in (str(ROOT), clean.get("PYTHONPATH")) if p)
    return {**clean, "PYTHONPATH": path, "XDG_CONFIG_HOME": str(NO_CONFIG), **(env or {})}


def _run(cmd: list[str], env: dict[str, str] | None, cwd: Path | str | None, input: str | None,
         timeout: float) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(cmd, cwd=cwd or ROOT, env=cli_env(env), input=input,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def fsclient(*args: str, server: HasAddress | str | None = None,
             env: dict[str, str] | None = None, cwd: Path | str | None = None,
             input: str | None = None,
             timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run ``fsclient ARGS`` to its end (from the repository root unless *cwd* is given);
    its output is captured as text."""
    return _run(fsclient_command(*args, server=server), env, cwd, input, timeout)


def fsserver_tool(*args: str, env: dict[str, str] | None = None,
                  timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run ``fsserver ARGS`` to its end: a tool (``init-tls``, ``add-token``) or a start
    that must fail."""
    return _run([sys.executable, "-m", "fsserver", *args], env, None, None, timeout)
