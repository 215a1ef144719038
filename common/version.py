"""``--version`` for the ``fsclient`` and ``fsserver`` commands: the installed package's
version, looked up only when asked (``importlib.metadata`` reads the installed files, which
``--help`` and every other command need not pay for)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

DISTRIBUTION = "fs-filesync"


def package_version() -> str:
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown (not installed)"


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
