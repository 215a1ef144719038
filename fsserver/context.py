"""``WorkerContext``: what every connection of one worker shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

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
    connections: set[ClientConnection] = field(default_factory=set)
