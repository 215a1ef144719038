"""What the server logs about one client connection, in one place so that the lines read alike.

At ``info``: one line when a connection is opened (its handshake succeeded: peer address, token
name, share), one when it is closed (how long it lasted, what it moved), and one per failed
transfer (path and why); the server's reason to close one has its own line (``fail``). At
``debug``, also one per accepted socket and one per file transferred. A connection that never
completes its handshake logs its close at ``debug`` only (a refused token is logged where it is
refused): a port scanner does not fill the log.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from fsserver.config import human_size

log = logging.getLogger("fsserver.connections")

NO_TOKEN = "none (no --tokens)"


@dataclass(slots=True)
class Transfers:
    files: int = 0
    bytes: int = 0

    def __str__(self) -> str:
        return f"{self.files} ({human_size(self.bytes)})"


@dataclass(slots=True)
class ConnectionLog:
    peer: str = "?"
    token: str = NO_TOKEN
    share: str = ""
    """Set once the handshake succeeded: the connection is then 'opened'."""
    started: float = 0.0
    failed: int = 0
    received: Transfers = field(default_factory=Transfers)
    sent: Transfers = field(default_factory=Transfers)

    def accepted(self, peer: str) -> None:
        self.peer, self.started = peer, time.monotonic()
        log.debug("connection from %s accepted", peer)

    def opened(self, share: str, client_id: str, max_packet: int) -> None:
        self.share = share
        log.info("connection opened from %s: token %s, share %s, client %s", self.peer,
                 self.token, share, client_id)  # fmt: skip
        log.debug("%s: packets up to %d bytes", self.peer, max_packet)

    def closed(self, cut_short: int) -> None:
        """The connection is gone; *cut_short* transfers were still under way."""
        seconds = time.monotonic() - self.started
        if not self.share:
            log.debug("connection closed from %s before its handshake", self.peer)
            return
        moved = f"files in {self.received}, out {self.sent}"
        if self.failed or cut_short:
            moved += f"; {self.failed} failed, {cut_short} cut short"
        log.info("connection closed from %s after %.1f s: token %s, share %s; %s", self.peer,
                 seconds, self.token, self.share, moved)  # fmt: skip

    def uploaded(self, path: str, size: int, note: str = "") -> None:
        self.received.files += 1
        self.received.bytes += size
        log.debug("%s: received %s (%d bytes%s)", self.peer, path, size, note)

    def downloaded(self, path: str, size: int) -> None:
        self.sent.files += 1
        self.sent.bytes += size
        log.debug("%s: sent %s (%d bytes)", self.peer, path, size)

    def transfer_failed(self, direction: str, path: str, why: str,
                        level: int = logging.INFO) -> None:  # fmt: skip
        self.failed += 1
        log.log(level, "%s: %s of %s failed: %s", self.peer, direction, path, why)
