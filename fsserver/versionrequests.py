"""A path's versions, a restore, and the deleted files: the requests of kept versions (a
mixin of ``ClientConnection``; ``fsserver.store.versions`` keeps them)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from common import messages as m
from common.limits import MAX_LIST_ENTRIES
from fsserver import telemetry
from fsserver.requests import DEFAULT_PAGE
from fsserver.store import Refused

_INVALID = m.LookupStatus.INVALID_PATH
_OK = m.LookupStatus.OK


class VersionHandlers:
    share: str
    closing: bool
    origin: int
    writer: str
    read_only: bool
    send: Callable[..., bool]
    request_store: Callable[..., None]
    list_page: Callable[[m.DeletedListRequest, str], None]
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
        rid = msg.request_id
        if self.read_only:
            telemetry.refused("read_only")
            self.send(m.RestoreResponse(rid, m.LookupStatus.DENIED, 0, "this token is read-only"))
            return
        path = self._valid_path(msg.path, lambda text: m.RestoreResponse(rid, _INVALID, 0, text))
        if path is not None:
            self.request_store(lambda result: self.on_restored(rid, result), "restore_version",
                               self.share, path, msg.version, msg.base_version, self.origin,
                               self.writer)  # fmt: skip

    def on_restored(self, request_id: int, result: Any) -> None:
        if isinstance(result, Refused):
            status = m.LookupStatus(result.status)
            self.send(m.RestoreResponse(request_id, status, result.version, result.message))
        else:
            self.send(m.RestoreResponse(request_id, _OK, result.version, ""))

    def on_deleted_list(self, msg: m.DeletedListRequest) -> None:
        self.list_page(msg, "deleted")
