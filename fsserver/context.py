"""``WorkerContext``: what every connection of one worker shares; and the checks every kind of
request makes the same way."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from itertools import count
from typing import TYPE_CHECKING, Any

from common import compression
from common.errors import InvalidPath
from common.paths import normalize_path
from fsserver.auth import TokenStore
from fsserver.config import ServerConfig
from fsserver.feed import ChangeFeed
from fsserver.hashing import HashClient
from fsserver.rpc import RpcClient
from fsserver.store.staging import Staging

if TYPE_CHECKING:
    from fsserver.connection import ClientConnection
    from fsserver.web.httpconn import HttpConnection


_ORIGINS = count(1)


@dataclass
class WorkerContext:
    worker_id: int
    config: ServerConfig
    arena: memoryview
    store_id: bytes
    rpc: RpcClient
    hashes: HashClient
    feed: ChangeFeed
    tokens: TokenStore | None
    report: Callable[[tuple[Any, ...]], None]
    """Sends a message to the supervisor (failed handshakes, for its throttle)."""
    staging: Staging
    """This worker's area of the arena for small-file batches on their way into the store."""
    connections: set[ClientConnection] = field(default_factory=set)
    http: set[HttpConnection] = field(default_factory=set)
    """Connections to the HTTP API (``fsserver.web``)."""
    known_shares: set[str] = field(default_factory=set)
    """Shares the store said exist: a share is never removed, so an HTTP request to one of
    these needs no store call to check it."""

    @cached_property
    def compress(self) -> bool:
        """Whether this worker agrees to zstd payloads: ``--compress on`` and zstandard."""
        return self.config.compress == "on" and compression.available()

    def new_origin(self) -> int:
        """A number naming a new connection in the changes it makes (``feed.Subscription``)."""
        return self.worker_id << 40 | next(_ORIGINS)

    def too_large(self, size: int) -> str | None:
        """Why a file of *size* bytes is refused (over ``--max-file-size``), or None."""
        limit = self.config.max_file_size
        if limit and size > limit:
            return f"larger than this server's limit of {limit} bytes"
        return None


def checked_path(path: str, refuse: Callable[[str], object]) -> str | None:
    """*path* in canonical form; or, if it is invalid, None, once *refuse* has the reason."""
    try:
        return normalize_path(path)
    except InvalidPath as exc:
        refuse(exc.message)
        return None
