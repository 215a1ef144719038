"""Run the real ``fsclient`` command line in tests: one way to build its command and its
environment, so that every test runs the worktree's client the same way."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Protocol

from tests.serverproc import ROOT

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


def fsclient_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without the ``FS_*`` settings (a developer's own
    ``FS_SERVER`` or ``FS_TOKEN`` must not leak into a test), plus *env*. The repository
    comes first on the import path, so that the client under test runs from any folder (not
    an installed copy)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FS_")}
    path = os.pathsep.join(p for p in (str(ROOT), clean.get("PYTHONPATH")) if p)
    return {**clean, "PYTHONPATH": path, **(env or {})}


def fsclient(*args: str, server: HasAddress | str | None = None,
             env: dict[str, str] | None = None, cwd: Path | str | None = None,
             input: str | None = None,
             timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run ``fsclient ARGS`` to its end (from the repository root unless *cwd* is given);
    its output is captured as text."""
    return subprocess.run(
        fsclient_command(*args, server=server), cwd=cwd or ROOT, env=fsclient_env(env),
        input=input, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
