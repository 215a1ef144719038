"""``fsserver`` command line: flags and ``FS_*`` environment variables onto a ServerConfig."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable
from types import FrameType
from typing import Any, NoReturn

from common.version import VersionAction
from fsserver.config import (
    LOG_LEVELS,
    ConfigError,
    ServerConfig,
    describe_size,
    format_size,
    parse_size,
    port_or_off,
)

# flag, config field, environment variable, parser, help
# fmt: off
OPTIONS: list[tuple[str, str, str, Callable[[str], Any], str]] = [
    ("--host", "host", "FS_HOST", str, "address to listen on"),
    ("--port", "port", "FS_PORT", int, "FS protocol port (0 picks a free one)"),
    ("--http-port", "http_port", "FS_HTTP_PORT", port_or_off,
     "port of the HTTP API and the web page, on --host (0 picks a free one)"),
    ("--workers", "workers", "FS_WORKERS", int, "connection worker processes"),
    ("--hash-workers", "hash_workers", "FS_HASH_WORKERS", int, "hashing processes"),
    ("--store-size", "store_size", "FS_STORE_SIZE", parse_size,
     "in-memory store capacity, e.g. 512MiB, 2G or 2GB (see Sizes below)"),
    ("--metrics-port", "metrics_port", "FS_METRICS_PORT", int,
     "port of /metrics, /healthz and /readyz (0 picks a free one)"),
    ("--metrics-host", "metrics_host", "FS_METRICS_HOST", str,
     "address of /metrics, /healthz and /readyz (empty: the --host)"),
    ("--metrics-token-file", "metrics_token_file", "FS_METRICS_TOKEN_FILE", str,
     "file holding a secret that /metrics then requires as 'Authorization: Bearer SECRET'"),
    ("--log-level", "log_level", "FS_LOG_LEVEL", str.lower, "/".join(LOG_LEVELS)),
    ("--max-packet", "max_packet", "FS_MAX_PACKET", parse_size,
     "largest packet a client may negotiate"),
    ("--max-files", "max_files", "FS_MAX_FILES", int,
     "most index entries (files and deletion records) the store keeps"),
    ("--max-file-size", "max_file_size", "FS_MAX_FILE_SIZE", parse_size,
     "largest file a client may upload (0: the store's size)"),
    ("--share-quota", "share_quota", "FS_SHARE_QUOTA", parse_size,
     "bytes one share may hold (0: no quota)"),
    ("--max-connections", "max_connections", "FS_MAX_CONNECTIONS", int,
     "client connections served at once"),
    ("--max-in-flight", "max_in_flight", "FS_MAX_IN_FLIGHT", int,
     "file sessions one connection may have open at once"),
    ("--handshake-timeout", "handshake_timeout", "FS_HANDSHAKE_TIMEOUT", float,
     "seconds a new connection has to complete its handshake"),
    ("--idle-timeout", "idle_timeout", "FS_IDLE_TIMEOUT", float,
     "seconds of silence after which a connection is closed (clients ping to stay)"),
    ("--packet-timeout", "packet_timeout", "FS_PACKET_TIMEOUT", float,
     "seconds a client has to finish a packet it started"),
    ("--resume-timeout", "resume_timeout", "FS_RESUME_TIMEOUT", float,
     "seconds the bytes of a big upload cut short are kept for it to resume"),
    ("--tokens", "tokens", "FS_TOKENS", str,
     "TOML file of hashed tokens (see add-token); without it, no authentication"),
    ("--tls-cert", "tls_cert", "FS_TLS_CERT", str, "TLS certificate (PEM) to serve with"),
    ("--tls-key", "tls_key", "FS_TLS_KEY", str, "private key (PEM) of --tls-cert"),
    ("--data-dir", "data_dir", "FS_DATA_DIR", str,
     "folder that keeps the store on disk (without it, memory only: a restart loses all)"),
    ("--tombstone-days", "tombstone_days", "FS_TOMBSTONE_DAYS", float,
     "days a deleted file's tombstone is kept; a client away longer does a full rescan"),
    ("--keep-versions", "keep_versions", "FS_KEEP_VERSIONS", int,
     "earlier versions kept of each file, deleted files too (0: none); they count against "
     "--share-quota and give way to new files when the store is full"),
    ("--keep-days", "keep_days", "FS_KEEP_DAYS", float,
     "days an earlier version is kept after it was replaced or deleted"),
    ("--compress", "compress", "FS_SERVER_COMPRESS", str.lower,
     "zstd payloads with the clients that offer it: on or off"),
    ("--fsync", "fsync", "FS_FSYNC", str.lower,
     "when an upload is acknowledged: always (on disk), interval (may lose the last 100 ms), "
     "never (the OS decides)"),
]
FLAGS: list[tuple[str, str, str, str]] = [
    ("--insecure-no-auth", "insecure_no_auth", "FS_INSECURE_NO_AUTH",
     "serve a non-loopback address without tokens"),
    ("--repair", "repair", "FS_REPAIR",
     "start even if the data dir is damaged in the middle, keeping what checks out"),
]
# fmt: on
TRUE = {"1", "true", "yes", "on"}
METAVARS = {"--port": "PORT", "--metrics-port": "PORT", "--http-port": "PORT",
            "--log-level": "LEVEL", "--fsync": "MODE", "--tokens": "FILE", "--tls-cert": "FILE",
            "--tls-key": "FILE", "--data-dir": "DIR",
            "--tombstone-days": "DAYS", "--keep-days": "DAYS"}  # fmt: skip
"""What ``--help`` shows as an option's value; others go by their parser, then by name."""
TYPE_METAVARS: dict[object, str] = {parse_size: "SIZE", float: "SECONDS", int: "N"}
USAGE = """fsserver [OPTION VALUE]...
       fsserver init-tls DIR
       fsserver add-token NAME --tokens FILE --share SHARE [--share SHARE]... [--read-only]"""
EPILOG = """commands:
  init-tls DIR     write a self-signed TLS certificate and key into DIR, print the fingerprint
  add-token NAME   add a token to a tokens file (creating the file), print the token once
  (fsserver COMMAND --help tells more)

Every option can also be set through the environment variable shown; a flag wins over it.
Sizes: bytes, or a whole number with K, M, G, T (powers of 2, as KiB ... TiB) or KB, MB, GB,
TB (powers of 10): 1G = 1GiB = 1073741824 bytes, 1GB = 1000000000 bytes."""


def metavar(flag: str, parse: Callable[[str], Any]) -> str:
    if flag in METAVARS:
        return METAVARS[flag]
    return TYPE_METAVARS.get(parse) or flag.rsplit("-", 1)[-1].upper()


def shown(value: Any, parse: Callable[[str], Any]) -> str:
    """A default as a person writes it: 256MiB, not 268435456; 10, not 10.0; none, not ''."""
    if parse is parse_size:
        return format_size(value)
    if parse is port_or_off and value < 0:
        return "off"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value) if value != "" else "none"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fsserver",
        usage=USAGE,
        description="FS file-sync server: keeps every synced file in RAM.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=VersionAction)
    defaults = ServerConfig()
    for flag, field, env, parse, text in OPTIONS:
        default = shown(getattr(defaults, field), parse)
        parser.add_argument(flag, dest=field, metavar=metavar(flag, parse),
                            help=f"{text} (env {env}, default {default})")  # fmt: skip
    for flag, field, env, text in FLAGS:
        parser.add_argument(flag, dest=field, action="store_true", default=None,
                            help=f"{text} (env {env}=1)")  # fmt: skip
    return parser


def fail(message: str) -> NoReturn:
    """A bad setting: one clear line, exit code 2."""
    print(f"fsserver: error: {message}", file=sys.stderr)
    sys.exit(2)


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
            fail(f"{origin}: {exc}")
    for _flag, field, env, _text in FLAGS:
        if getattr(args, field) or environ.get(env, "").lower() in TRUE:
            values[field] = True
    try:
        return ServerConfig(**values)
    except ConfigError as exc:
        fail(str(exc))


def check_files(config: ServerConfig) -> None:
    """A tokens file that is named but missing is a mistake (a typo, a volume not mounted):
    starting without the tokens it should hold would refuse every client. Only ``fsserver
    add-token`` creates the file."""
    if config.tokens and not os.path.exists(config.tokens):
        fail(f"tokens file {config.tokens} does not exist (--tokens, FS_TOKENS); create it with "
             f"fsserver add-token NAME --tokens {config.tokens} --share SHARE")  # fmt: skip


def log_sizes(config: ServerConfig) -> None:
    """Say what each size option came to: 1G and 1GB differ by 7 %."""
    log = logging.getLogger(__name__)
    log.info("store size %s", describe_size(config.store_size))
    for what, size in (("max file size", config.max_file_size),
                       ("share quota", config.share_quota)):  # fmt: skip
        if size:
            log.info("%s %s", what, describe_size(size))


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


def tool(argv: list[str]) -> int | None:
    """``fsserver init-tls DIR`` and ``fsserver add-token ...``; None for a plain start."""
    if not argv or argv[0] not in ("init-tls", "add-token"):
        return None
    parser = argparse.ArgumentParser(prog=f"fsserver {argv[0]}")
    if argv[0] == "init-tls":
        parser.description = "write a self-signed certificate and key, print the fingerprint"
        parser.add_argument("dir", help="folder for cert.pem and key.pem (created if missing)")
        args = parser.parse_args(argv[1:])
        from fsserver.certs import CertExists, existing_fingerprint, init_tls

        try:
            found = existing_fingerprint(args.dir)
            print(found or init_tls(args.dir))
        except (CertExists, OSError) as exc:
            fail(str(exc))
        if found:
            print(f"fsserver: kept the certificate already in {args.dir}", file=sys.stderr)
        return 0
    parser.description = "add a token to a tokens file and print the token (once)"
    parser.add_argument("name", help="a name for the token (who or what uses it)")
    env_tokens = os.environ.get("FS_TOKENS")
    parser.add_argument(
        "--tokens", default=env_tokens, required=not env_tokens, help="tokens file (env FS_TOKENS)"
    )
    parser.add_argument("--share", action="append", required=True, help="a share it opens")
    parser.add_argument("--read-only", action="store_true", help="may get and ls only")
    args = parser.parse_args(argv[1:])
    from common.errors import FSError
    from fsserver.auth import TokenFileError, add_token

    try:
        print(add_token(args.tokens, args.name, args.share, args.read_only))
    except (TokenFileError, FSError, OSError, ValueError) as exc:
        fail(str(exc))
    return 0


class EarlySignals:
    """SIGINT and SIGTERM while the server loads and starts, before the supervisor takes them
    over: kept (no KeyboardInterrupt at some random line, no traceback), then handed to it."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.target: Callable[[int], None] | None = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is not signal.SIG_IGN:
                signal.signal(sig, self.on_signal)

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.target is None:
            self.received.append(signum)
        else:
            self.target(signum)

    def hand_to(self, target: Callable[[int], None]) -> None:
        """From now on *target* gets each signal, starting with those already received (a
        signal handler runs between two bytecodes, so none is lost or handed over twice)."""
        self.target = target
        for signum in self.received:
            target(signum)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    code = tool(argv)
    if code is not None:
        return code
    config = config_from(argv, dict(os.environ))
    check_files(config)
    early = EarlySignals()
    made = metrics_dir()
    try:
        import uvloop

        from common.heap import tune_gc
        from fsserver.process import name_process, profiled, setup_logging
        from fsserver.supervisor import Supervisor

        name_process("supervisor", argv)
        setup_logging(config.log_level)
        logging.getLogger(__name__).debug("configuration: %s", config)
        log_sizes(config)
        tune_gc()
        supervisor = Supervisor(config)
        early.hand_to(supervisor.request_stop)
        return profiled("supervisor", lambda: uvloop.run(supervisor.serve()))
    finally:
        if made:
            shutil.rmtree(made, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
