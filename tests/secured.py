"""Helpers for tests of TLS and tokens: certificate pairs and tokens made by the real
``fsserver init-tls`` / ``add-token`` commands (run by ``tests.cli``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.cli import fsserver_tool


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
