"""The handshake's token and share checks, and the share list (a mixin of ``ClientConnection``).

A handshake that passed the version, name and token checks attaches to its share through the
store: a client that set ``EXISTING_SHARE`` is refused ``NO_SUCH_SHARE`` for a share nobody
made, instead of making one out of a typo. The default share always exists, and so does every
share a token of the tokens file names (the token check passed only if it names this one).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from common import messages as m
from common.limits import MAX_SHARES_LISTED
from fsserver import telemetry
from fsserver.auth import token_hash
from fsserver.connlog import ConnectionLog
from fsserver.context import WorkerContext

log = logging.getLogger(__name__)

Answer = Callable[[m.VersionHandshake, m.HandshakeStatus, str], None]


class HandshakeHandlers:
    ctx: WorkerContext
    peer: str
    share: str
    closing: bool
    read_only: bool
    writer: str
    token: tuple[bytes, int] | None
    activity: ConnectionLog
    send: Callable[..., bool]
    call_store: Callable[..., None]

    def authenticate(self, msg: m.VersionHandshake) -> tuple[m.HandshakeStatus, str]:
        """Without a tokens file everyone may do everything (the server then listens on
        loopback only, unless told --insecure-no-auth)."""
        if self.ctx.tokens is None:
            return m.HandshakeStatus.OK, ""
        grant = self.ctx.tokens.check(msg.auth, msg.share)
        if grant is None:
            telemetry.AUTH_FAILURES.inc()
            self.ctx.report(("auth_failed", self.peer.rsplit(":", 1)[0]))
            log.info("%s: token refused for share %s", self.peer, msg.share)
            if not msg.auth:
                text = f"share {msg.share!r} needs a token (--token or FS_TOKEN)"
            else:
                text = f"the token does not open share {msg.share!r} (wrong, revoked or not for it)"
            return m.HandshakeStatus.AUTH_FAILED, text
        self.read_only = grant.read_only
        self.token = (token_hash(msg.auth), self.ctx.tokens.generation)
        self.activity.token = self.writer = grant.name
        log.debug("%s: token %s on share %s", self.peer, grant.name, msg.share)
        return m.HandshakeStatus.OK, ""

    def attach(self, msg: m.VersionHandshake, answer: Answer) -> None:
        """Ask the store whether the share exists (making it if allowed), then *answer*."""
        create = not msg.flags & m.HandshakeFlags.EXISTING_SHARE or self.ctx.tokens is not None

        def attached(exists: bool) -> None:
            if self.closing:
                return
            if exists:
                answer(msg, m.HandshakeStatus.OK, "")
                return
            log.info("%s: no share %s", self.peer, msg.share)
            answer(msg, m.HandshakeStatus.NO_SUCH_SHARE, f"no share {msg.share!r} on the server")

        self.call_store(attached, "attach", msg.share, create)

    def on_share_list(self, msg: m.ShareListRequest) -> None:
        """The shares this connection's token opens, or every share without a tokens file."""
        names: frozenset[str] | None = None
        if self.ctx.tokens is not None and self.token is not None:
            grant = self.ctx.tokens.grant_of(self.token[0], self.share)
            names = grant.shares if grant is not None else frozenset({self.share})
        rid = msg.request_id

        def listed(result: tuple[tuple[m.ShareInfo, ...], bool]) -> None:
            if self.closing:
                return
            shares, more = result
            while not self.send(m.ShareListResponse(rid, more, shares), may_not_fit=True):
                shares, more = shares[: max(1, len(shares) // 2)], True

        self.call_store(listed, "share_list", names, msg.after, MAX_SHARES_LISTED)


__all__ = ["HandshakeHandlers"]
