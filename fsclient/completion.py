"""Shell completion (bash, zsh) with argcomplete: ``eval "$(register-python-argcomplete
fsclient)"``.

The shell runs ``fsclient`` with ``_ARGCOMPLETE`` set at every Tab; it must answer at once. Only
the argument parser runs, so the modules the commands need (asyncio, ssl, logging, sqlite3,
uvloop) are made lazy first (``importlib.util.LazyLoader``): ``import asyncio`` in a command
module then costs nothing unless asyncio is used, and completion never uses it.
"""

from __future__ import annotations

import importlib.util
import sys

LAZY = ("asyncio", "ssl", "logging", "sqlite3", "uvloop")


def import_lazily(names: tuple[str, ...]) -> None:
    """Let ``import NAME`` make an empty module that loads itself on first use."""
    for name in names:
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            continue
        loader = importlib.util.LazyLoader(spec.loader)
        spec.loader = loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        loader.exec_module(module)


def complete() -> None:
    """Answer the shell's completion request and end the process (argcomplete exits)."""
    import_lazily(LAZY)
    import argcomplete

    from fsclient.cli import build_parser

    argcomplete.autocomplete(build_parser())
