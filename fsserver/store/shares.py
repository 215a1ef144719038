"""``ShareTable``: which shares exist, and the share list (a mixin of ``Store``).

A share exists once something made it: ``attach`` with *create* (a handshake that may make it),
or the first upload to it (a client that predates the ``EXISTING_SHARE`` handshake flag). A
share made empty is journalled as ``("share", name)``, so that it is still there after a
restart with a data dir, files or not.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from common.messages import ShareInfo
from fsserver.store.share import Share

DEFAULT_SHARE = "default"
"""Always there: a client without ``--share`` must never be told it does not exist."""


class ShareTable:
    shares: dict[str, Share]
    journal: list[tuple[Any, ...]] | None

    def attach(self, share: str, create: bool) -> bool:
        """Whether *share* exists, after making it if *create* (or it is the default one)."""
        if share in self.shares:
            return True
        if not (create or share == DEFAULT_SHARE):
            return False
        self.shares[share] = Share()
        if self.journal is not None:
            self.journal.append(("share", share))
        return True

    def share_list(
        self, names: Iterable[str] | None, after: str, limit: int
    ) -> tuple[tuple[ShareInfo, ...], bool]:
        """Up to *limit* shares named after *after*, in name order, and whether more follow.
        *names*: the shares a token opens (each exists for it, made or not); None: all of
        them, the default share included."""
        wanted = set(self.shares) | {DEFAULT_SHARE} if names is None else set(names)
        chosen = sorted(name for name in wanted if name > after)
        infos = []
        for name in chosen[:limit]:
            sh = self.shares.get(name)
            infos.append(ShareInfo(sh.live, sh.bytes, name) if sh else ShareInfo(0, 0, name))
        return tuple(infos), len(chosen) > limit
