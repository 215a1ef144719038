"""``WorkerContext``: what every connection of one worker shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fsserver.auth import TokenStore
from fsserver.config import ServerConfig
from fsserver.feed import ChangeFeed
from fsserver.hashing import HashClient
from fsserver.rpc import RpcClient

if TYPE_CHECKING:
    from fsserver.connection import ClientConnection


@dataclass
class WorkerContext:
    worker_id: int
    config: ServerConfig
    arena: memoryview
    store_id: bytes
    rpc: RpcClient
    hashes: HashClient
    feed: ChangeFeed
    tokens: TokenStore | None = None
    report: Callable[[tuple[Any, ...]], None] = lambda message: None
    """Sends a message to the supervisor (failed handshakes, for its throttle)."""
    connections: set[ClientConnection] = field(default_factory=set)
