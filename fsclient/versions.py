"""``VersionCalls``, a part of ``Client``: a path's kept versions, a restore, and the deleted
files that still have versions (``fsserver.store.versions`` keeps them)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from common import messages as m
from common.limits import ANY_VERSION
from common.paths import normalize_path, normalize_prefix
from fsclient.protocol import refusal


class VersionCalls:
    if TYPE_CHECKING:  # Client's own, declared here for the type checker

        async def _request(self, make: Any) -> Any: ...

    async def history(self, remote: str, *, page: int = 1000) -> list[m.VersionEntry]:
        """Every version of *remote* the server holds, newest first: its current state (a
        live version or its deletion, flagged CURRENT), then the kept ones."""
        path = normalize_path(remote)
        found: list[m.VersionEntry] = []
        while True:
            before = found[-1].version if found else 0
            reply: m.VersionsResponse = await self._request(
                lambda rid: m.VersionsRequest(rid, before, page, path)  # noqa: B023
            )
            if reply.status is not m.LookupStatus.OK:
                raise refusal(reply.status, reply.message)
            found.extend(reply.versions)
            if not reply.more or not reply.versions:
                return found

    async def restore(self, remote: str, version: int, *,
                      base_version: int = ANY_VERSION) -> int:  # fmt: skip
        """Make *version* of *remote* its current one again, as a new version (returned),
        which synced clients receive; the version it replaces is kept in turn."""
        path = normalize_path(remote)
        reply: m.RestoreResponse = await self._request(
            lambda rid: m.RestoreRequest(rid, version, base_version, path)
        )
        if reply.status is not m.LookupStatus.OK:
            raise refusal(reply.status, reply.message)
        return reply.version

    async def deleted_pages(self, prefix: str = "", *, page: int = 1000
                            ) -> AsyncIterator[list[m.FileEntry]]:  # fmt: skip
        """Deleted paths under *prefix* that have kept versions, each as its newest kept
        version, in path order, a page at a time."""
        prefix = normalize_prefix(prefix)
        after = ""
        while True:
            reply: m.ListResponse = await self._request(
                lambda rid: m.DeletedListRequest(rid, page, prefix, after)  # noqa: B023
            )
            if reply.status is not m.LookupStatus.OK:
                raise refusal(reply.status, reply.message)
            yield list(reply.entries)
            if not reply.more or not reply.entries:
                return
            after = reply.entries[-1].path

    async def deleted(self, prefix: str = "") -> list[m.FileEntry]:
        return [entry async for part in self.deleted_pages(prefix) for entry in part]
