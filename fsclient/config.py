"""The client's configuration file: defaults for the server, share, token and TLS options.

``$FS_CONFIG`` if set, else ``$XDG_CONFIG_HOME/fs/config.toml`` (``~/.config/fs/config.toml``
when ``XDG_CONFIG_HOME`` is unset). An option beats the environment, which beats the file. A
file that is not valid TOML, or has a key this client does not know or a value of the wrong
type, stops the command with exit code 2 and names the file and the line.

    server = "files.example.org:7878"
    share = "photos"
    token = "..."            # keep the file private (chmod 600): it is a secret
    tls_ca = "~/.config/fs/ca.pem"
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path

from common.limits import MIN_MAX_PACKET


class ConfigError(ValueError):
    """The configuration file cannot be used (the message names the file and the line)."""


@dataclass(frozen=True)
class Key:
    kind: type
    env: str
    """The environment variable that beats the file ("" if there is none)."""
    folder: bool = False
    """A synced folder remembers this setting, and its memory beats the file."""


KEYS: dict[str, Key] = {
    "server": Key(str, "FS_SERVER", folder=True),
    "share": Key(str, "FS_SHARE", folder=True),
    "token": Key(str, "FS_TOKEN"),
    "tls": Key(bool, "FS_TLS"),
    "tls_ca": Key(str, "FS_TLS_CA"),
    "tls_fingerprint": Key(str, "FS_TLS_FINGERPRINT"),
    "max_packet": Key(int, ""),
}
TYPE_NAMES = {str: "a string", bool: "true or false", int: "a whole number"}


def config_path() -> Path:
    """Where the file is looked for (it need not exist)."""
    named = os.environ.get("FS_CONFIG")
    if named:
        return Path(named).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "fs" / "config.toml"


def line_of(text: str, key: str) -> int:
    """The line where *key* is set or opens a table (1 if it cannot be found)."""
    pattern = re.compile(rf"^[ \t]*\[*[ \t]*[\"']?{re.escape(key)}[\"']?[ \t]*[=\].]", re.MULTILINE)
    found = pattern.search(text)
    return text.count("\n", 0, found.start()) + 1 if found else 1


def read_config(path: Path) -> dict[str, object]:
    """The settings of the file at *path*, checked ({} if there is no file)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if os.environ.get("FS_CONFIG"):
            raise ConfigError(f"{path} (FS_CONFIG): no such file") from None
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it: {exc}") from None
    import tomllib  # only when there is a file

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    for name, value in data.items():
        key = KEYS.get(name)
        where = f"{path} line {line_of(text, name)}"
        if key is None:
            raise ConfigError(f"{where}: unknown key {name!r} (known: {', '.join(KEYS)})")
        if type(value) is not key.kind:
            raise ConfigError(f"{where}: {name} must be {TYPE_NAMES[key.kind]}")
        if name == "max_packet" and value < MIN_MAX_PACKET:  # type: ignore[operator]
            raise ConfigError(f"{where}: max_packet must be at least {MIN_MAX_PACKET}")
    return data


def apply_config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Fill in each setting neither an option nor the environment gave from the file; a bad
    file ends the command (exit 2), but for ``help``, which must be able to explain it."""
    if args.command == "help":
        return
    try:
        settings = read_config(config_path())
    except ConfigError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    folder = getattr(args, "dir", None)
    synced = folder is not None and (Path(folder) / ".fsync").is_dir()
    for name, value in settings.items():
        key = KEYS[name]
        if getattr(args, name, None) or (key.env and os.environ.get(key.env)):
            continue
        if key.folder and synced:
            continue
        if name == "tls_ca":
            value = os.path.expanduser(str(value))
        setattr(args, name, value)
