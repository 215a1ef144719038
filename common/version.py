"""``--version`` for the ``fsclient`` and ``fsserver`` commands. The version lives here, and
pyproject.toml reads it from here (``dynamic``), so the commands know it without
``importlib.metadata``, which reads the installed files and costs a command ~40 ms."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

TYPE_CHECKING = False  # (not typing's: ``--help`` does without importing typing)
if TYPE_CHECKING:
    from typing import Any

DISTRIBUTION = "fs-filesync"
VERSION = "0.1.0"


def package_version() -> str:
    return VERSION


class VersionAction(argparse.Action):
    """``--version``: print "PROG VERSION" and exit 0, before any other argument is checked."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS,
                 help: str = "show the version and exit") -> None:  # fmt: skip
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:  # fmt: skip
        print(f"{parser.prog} {package_version()}")  # to stdout, as argparse's own does
        parser.exit()
