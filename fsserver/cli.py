"""``fsserver`` command line: flags and ``FS_*`` environment variables onto a ServerConfig."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from typing import Any

from fsserver.config import LOG_LEVELS, ConfigError, ServerConfig, parse_size

# flag, config field, environment variable, parser, help
OPTIONS: list[tuple[str, str, str, Callable[[str], Any], str]] = [
    ("--host", "host", "FS_HOST", str, "address to listen on"),
    ("--port", "port", "FS_PORT", int, "FS protocol port (0 picks a free one)"),
    ("--workers", "workers", "FS_WORKERS", int, "connection worker processes"),
    ("--hash-workers", "hash_workers", "FS_HASH_WORKERS", int, "hashing processes"),
    (
        "--store-size",
        "store_size",
        "FS_STORE_SIZE",
        parse_size,
        "in-memory store capacity, e.g. 256MiB or 2GiB",
    ),
    (
        "--metrics-port",
        "metrics_port",
        "FS_METRICS_PORT",
        int,
        "port of /metrics, /healthz and /readyz (0 picks a free one)",
    ),
    ("--log-level", "log_level", "FS_LOG_LEVEL", str.lower, "/".join(LOG_LEVELS)),
    (
        "--max-packet",
        "max_packet",
        "FS_MAX_PACKET",
        parse_size,
        "largest packet a client may negotiate",
    ),
    (
        "--max-files",
        "max_files",
        "FS_MAX_FILES",
        int,
        "most index entries (files and deletion records) the store keeps",
    ),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fsserver",
        description="FS file-sync server: keeps every synced file in RAM.",
        epilog="Every option can also be set through the environment variable shown.",
    )
    defaults = ServerConfig()
    for flag, field, env, _parse, text in OPTIONS:
        parser.add_argument(
            flag,
            dest=field,
            metavar=env,
            help=f"{text} (env {env}, default {getattr(defaults, field)})",
        )
    return parser


def config_from(argv: list[str] | None, environ: dict[str, str]) -> ServerConfig:
    """Flags win over environment variables, which win over defaults."""
    parser = build_parser()
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    for flag, field, env, parse, _ in OPTIONS:
        raw, origin = getattr(args, field), flag
        if raw is None and env in environ:
            raw, origin = environ[env], env
        if raw is None:
            continue
        try:
            values[field] = parse(raw)
        except ValueError as exc:
            parser.error(f"{origin}: {exc}")
    try:
        return ServerConfig(**values)
    except ConfigError as exc:
        parser.error(str(exc))


def metrics_dir() -> str | None:
    """Prepare prometheus-client's multiprocess folder, before any process imports it: the
    operator's PROMETHEUS_MULTIPROC_DIR, emptied, or a fresh one (returned, to remove later)."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        os.makedirs(given, exist_ok=True)
        for name in os.listdir(given):
            if name.endswith(".db"):
                os.unlink(os.path.join(given, name))
        return None
    made = tempfile.mkdtemp(prefix="fs-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = made
    return made


def main(argv: list[str] | None = None) -> int:
    config = config_from(argv, dict(os.environ))
    made = metrics_dir()
    try:
        import uvloop

        from fsserver.process import profiled, setup_logging
        from fsserver.supervisor import Supervisor

        setup_logging(config.log_level)
        logging.getLogger(__name__).debug("configuration: %s", config)
        return profiled("supervisor", lambda: uvloop.run(Supervisor(config).serve()))
    finally:
        if made:
            shutil.rmtree(made, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
