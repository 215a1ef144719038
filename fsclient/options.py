"""The client's options and the arguments of the commands that share them: apart from the
modules that use them (``access``, ``sharecmd``), so that building the parser loads no
dataclass, ssl or asyncio, and ``--help`` or a usage error answers at once."""

from __future__ import annotations

import argparse

TYPE_CHECKING = False  # (not typing's: ``--help`` does without importing typing)
if TYPE_CHECKING:
    from typing import Any

DEFAULT_SERVER = "127.0.0.1:7878"
"""The server address when neither an option nor the environment names one."""
ENV_TOKEN = "FS_TOKEN"
ENV_TLS = "FS_TLS"
ENV_TLS_CA = "FS_TLS_CA"
ENV_TLS_FINGERPRINT = "FS_TLS_FINGERPRINT"
ENV_COMPRESS = "FS_COMPRESS"


def add_access_options(parser: argparse.ArgumentParser, suppress: bool) -> None:
    """The token and TLS options (accepted before and after a subcommand's arguments)."""

    def default(value: object) -> object:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--token", default=default(None), metavar="TOKEN", help=f"access token (env {ENV_TOKEN})"
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        default=default(False),
        help=f"use TLS, trusting the system's CAs (env {ENV_TLS}=1)",
    )
    parser.add_argument(
        "--tls-ca",
        default=default(None),
        metavar="FILE",
        help=f"use TLS, trusting this CA or certificate (env {ENV_TLS_CA})",
    )
    parser.add_argument(
        "--tls-fingerprint",
        default=default(None),
        metavar="SHA256HEX",
        help="use TLS, trusting only the certificate with this SHA-256"
        f" (env {ENV_TLS_FINGERPRINT})",
    )
    parser.add_argument(
        "--compress",
        type=compress_mode,
        default=default(None),
        metavar="MODE",
        help="zstd for file bytes: auto (unless the server is on this machine), off, or a "
        f"level 1-19 (env {ENV_COMPRESS}, default auto)",
    )


def compress_mode(text: str) -> str:
    """``--compress``: auto, off or a level (checked here without importing zstd)."""
    word = text.strip().lower()
    if word in ("auto", "off") or (word.isdigit() and 1 <= int(word) <= 19):
        return word
    raise argparse.ArgumentTypeError(f"{text!r}: use auto, off or a zstd level from 1 to 19")


def add_create_share(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--create-share",
        action="store_true",
        help="make the share if the server does not have it yet (without it, a share that "
        "does not exist is refused: a typo does not make a new share)",
    )


def add_share_commands(command: Any) -> None:
    shares = command("shares", "list the shares the token opens: name, files, bytes")
    shares.add_argument("--json", action="store_true", help="one JSON object per line")
