"""A path's versions, a restore, and the deleted files: the requests of kept versions (a
mixin of ``ClientConnection``; ``fsserver.store.versions`` keeps them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from common import messages as m
from common.limits import MAX_LIST_ENTRIES
from fsserver.requests import DEFAULT_PAGE
from fsserver.store import Refused

_INVALID = m.LookupStatus.INVALID_PATH
_OK = m.LookupStatus.OK


class VersionHandlers:
    share: str
    closing: bool
    send: Callable[..., bool]
    request_store: Callable[..., None]
    list_page: Callable[[m.DeletedListRequest, str], None]
    change_path: Callable[..., None]
    _valid_path: Callable[[str, Callable[[str], m.Message]], str | None]

    def on_versions(self, msg: m.VersionsRequest) -> None:
        rid = msg.request_id
        path = self._valid_path(
            msg.path, lambda text: m.VersionsResponse(rid, _INVALID, False, text, ())
        )
        if path is None:
            return
        limit = max(1, min(msg.limit or DEFAULT_PAGE, MAX_LIST_ENTRIES))
        self.request_store(lambda result: self.on_history(rid, result), "history", self.share,
                           path, msg.before, limit)  # fmt: skip

    def on_history(self, request_id: int, result: Any) -> None:
        if self.closing:
            return
        if isinstance(result, Refused):
            status = m.LookupStatus(result.status)
            self.send(m.VersionsResponse(request_id, status, False, result.message, ()))
            return
        versions, more = result
        while not self.send(m.VersionsResponse(request_id, _OK, more, "", versions),
                            may_not_fit=True):  # fmt: skip
            versions, more = versions[: max(len(versions) // 2, 1)], True

    def on_restore(self, msg: m.RestoreRequest) -> None:
        self.change_path(msg, m.RestoreResponse, "restore_version", msg.version,
                         msg.base_version)  # fmt: skip

    def on_deleted_list(self, msg: m.DeletedListRequest) -> None:
        self.list_page(msg, "deleted")
