"""Tokens and who may do what with them.

The tokens file (TOML, ``--tokens``) holds, per token, a name, the SHA-256 of the token (never
the token itself), the shares it opens, and whether it may write:

    [[token]]
    name = "laptop"
    sha256 = "9f86d0..."
    shares = ["docs", "photos"]
    read_only = false

``fsserver add-token`` appends one and prints the token, once. Removing an entry, or setting
``revoked = true``, revokes it: workers reload the file whenever it changes. Failed attempts are
counted per source address by ``Throttle`` in the supervisor, which turns an address away for a
while once it has failed too often (a user who mistyped a few times is not locked out).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
import tomllib
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from common.paths import check_name

log = logging.getLogger(__name__)

FAILURES_ALLOWED = 10
FAILURE_WINDOW = 60.0
BLOCK_FIRST = 10.0
BLOCK_MAX = 600.0


class TokenFileError(ValueError):
    """The tokens file cannot be read or written (the message says why)."""


@dataclass(frozen=True)
class Grant:
    name: str
    shares: frozenset[str]
    read_only: bool


def token_hash(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


class TokenStore:
    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.stamp: tuple[int, int] | None = None
        self.entries: list[tuple[bytes, Grant]] = []
        self.generation = 0
        """Bumped whenever the entries are replaced: open connections are checked again."""
        self.reload()

    def reload(self) -> None:
        """Read the file again if it changed. A file that cannot be read opens nothing until
        it is fixed: keeping an older copy could bring a revoked token back."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._broken(None, f"tokens file {self.path} does not exist")
            return
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self.stamp:
            return
        self.stamp = stamp
        self.generation += 1
        try:
            self.entries = [entry for item in read_tokens(self.path) if (entry := parse(item))]
        except (TokenFileError, OSError, ValueError, KeyError, TypeError) as exc:
            self._broken(stamp, str(exc))

    def _broken(self, stamp: tuple[int, int] | None, reason: str) -> None:
        if self.entries or self.stamp != stamp:
            log.error("tokens file unusable, refusing every token until it is fixed: %s", reason)
            self.generation += 1
        self.entries = []
        self.stamp = stamp

    def check(self, token: bytes, share: str) -> Grant | None:
        """The grant of *token* for *share*, or None. Every entry is compared, in constant
        time, so how long this takes says nothing about which hashes exist."""
        self.reload()
        return self.grant_of(token_hash(token), share)

    def grant(self, token: bytes) -> Grant | None:
        """The grant of *token*, whatever share it is for (the share list), or None."""
        self.reload()
        digest, found = token_hash(token), None
        for stored, grant in self.entries:
            if hmac.compare_digest(stored, digest) and found is None:
                found = grant
        return found

    def grant_of(self, digest: bytes, share: str) -> Grant | None:
        """``check`` for a token known by its hash (an open connection's, checked again)."""
        found = None
        for stored, grant in self.entries:
            if hmac.compare_digest(stored, digest) and found is None:
                found = grant
        return found if found is not None and share in found.shares else None


def parse(item: dict[str, object]) -> tuple[bytes, Grant] | None:
    """One ``[[token]]`` entry; None if it is revoked."""
    if item.get("revoked"):
        return None
    shares = item.get("shares", [])
    if not isinstance(shares, list):
        raise TokenFileError(f"token {item['name']!r}: shares must be a list")
    grant = Grant(str(item["name"]), frozenset(map(str, shares)), bool(item.get("read_only")))
    return bytes.fromhex(str(item["sha256"])), grant


def read_tokens(path: Path) -> list[dict[str, object]]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise TokenFileError(f"{path} is not valid TOML: {exc}") from None
    tokens = data.get("token", [])
    for item in tokens:
        if not {"name", "sha256"} <= item.keys():
            raise TokenFileError(f"{path}: every [[token]] needs a name and a sha256")
    return tokens


def check_tokens_file(path: str) -> None:
    """Read and check the whole file (at start-up, where a broken file stops the server)."""
    for item in read_tokens(Path(path)):
        parse(item)


def new_token() -> str:
    """A random token (256 bits, URL-safe) that does not start with '-': one that did would
    read as an option in ``fsclient --token TOKEN`` (1 token in 64 did)."""
    while True:
        token = secrets.token_urlsafe(32)
        if not token.startswith("-"):
            return token


def add_token(path: str, name: str, shares: list[str], read_only: bool) -> str:
    """Generate a token, store its hash in *path* (created if missing), return the token."""
    for share in shares:
        check_name(share)
    file = Path(path)
    tokens = read_tokens(file) if file.exists() else []
    if any(item["name"] == name for item in tokens):
        raise TokenFileError(f"{path} already has a token named {name!r}")
    token = new_token()
    tokens.append({
        "name": name, "sha256": token_hash(token.encode()).hex(), "shares": sorted(shares),
        "read_only": read_only, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })  # fmt: skip
    temp = file.with_name(f".{file.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        tomli_w.dump({"token": tokens}, f)
    os.replace(temp, file)
    return token


class Throttle:
    """Failed handshakes per source address; an address over the limit is turned away."""

    def __init__(self) -> None:
        self.failures: dict[str, deque[float]] = {}
        self.blocked: dict[str, tuple[float, float]] = {}  # address -> (until, last block)

    def failed(self, address: str) -> None:
        now = time.monotonic()
        if len(self.failures) > 10_000:  # forget addresses that have been quiet
            self.failures = {a: d for a, d in self.failures.items() if d and d[-1] > now - 60}
            self.blocked = {a: b for a, b in self.blocked.items() if b[0] > now}
        recent = self.failures.setdefault(address, deque())
        recent.append(now)
        while recent and recent[0] < now - FAILURE_WINDOW:
            recent.popleft()
        if len(recent) >= FAILURES_ALLOWED:
            _, last = self.blocked.get(address, (0.0, 0.0))
            block = min(BLOCK_MAX, last * 2) if last else BLOCK_FIRST
            self.blocked[address] = (now + block, block)
            recent.clear()
            log.warning("%s failed to authenticate %d times; refused for %.0f s", address,
                        FAILURES_ALLOWED, block)  # fmt: skip

    def refused(self, address: str) -> bool:
        until, _ = self.blocked.get(address, (0.0, 0.0))
        return time.monotonic() < until
