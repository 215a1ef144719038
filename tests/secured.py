"""Helpers for tests of TLS and tokens: the real ``fsserver init-tls`` / ``add-token``
commands (the ``fsclient`` command line is run by ``tests.cli``)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.serverproc import ROOT


def fsserver_tool(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fsserver", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=60, env={**os.environ, **(env or {})},
    )  # fmt: skip


def init_tls(folder: Path) -> str:
    """A fresh self-signed pair in *folder*; returns the printed fingerprint."""
    result = fsserver_tool("init-tls", str(folder))
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def add_token(tokens: Path, name: str, *shares: str, read_only: bool = False) -> str:
    flags = [arg for share in shares for arg in ("--share", share)]
    result = fsserver_tool("add-token", name, "--tokens", str(tokens), *flags,
                           *(["--read-only"] if read_only else []))  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@dataclass
class Pair:
    """A certificate pair made by init-tls."""

    folder: Path
    fingerprint: str

    @property
    def cert(self) -> Path:
        return self.folder / "cert.pem"

    @property
    def key(self) -> Path:
        return self.folder / "key.pem"

    def server_args(self) -> tuple[str, ...]:
        return ("--tls-cert", str(self.cert), "--tls-key", str(self.key))
