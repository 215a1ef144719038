"""List, stat and delete: the request/response part of a connection (a mixin of
``ClientConnection``)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from common import messages as m
from common.errors import InvalidPath
from common.limits import MAX_LIST_ENTRIES
from common.paths import normalize_prefix
from fsserver import telemetry
from fsserver.context import checked_path
from fsserver.store import ListPage, Refused

DEFAULT_PAGE = 1000
REQUEST_WINDOW = 16
"""Store calls for one connection's requests in flight at once; the rest wait in the worker,
so a client that floods requests costs the supervisor no more than its share."""
_INVALID = m.LookupStatus.INVALID_PATH
_OK = m.LookupStatus.OK


class RequestHandlers:
    share: str
    closing: bool
    send: Callable[..., bool]
    call_store: Callable[..., None]
    origin: int
    writer: str
    read_only: bool
    requests_busy: int
    requests_waiting: deque[tuple[Callable[[Any], None], str, tuple[Any, ...]]]

    def request_store(self, on_result: Callable[[Any], None], op: str, *args: Any) -> None:
        if self.requests_busy >= REQUEST_WINDOW:
            self.requests_waiting.append((on_result, op, args))
            return
        self.requests_busy += 1

        def done(result: Any) -> None:
            self.requests_busy -= 1
            on_result(result)
            if self.requests_waiting and not self.closing:
                waiting_result, waiting_op, waiting_args = self.requests_waiting.popleft()
                self.request_store(waiting_result, waiting_op, *waiting_args)

        self.call_store(done, op, *args)

    def on_list(self, msg: m.ListRequest) -> None:
        self.list_page(msg, "list")

    def list_page(self, msg: m.ListRequest | m.DeletedListRequest, op: str) -> None:
        """A page of a listing: the files (``list``) or the deleted ones (``deleted``)."""
        rid = msg.request_id
        try:
            prefix = normalize_prefix(msg.prefix)
        except InvalidPath as exc:
            self.send(m.ListResponse(rid, _INVALID, False, exc.message, ()))
            return
        limit = max(1, min(msg.limit or DEFAULT_PAGE, MAX_LIST_ENTRIES))
        started = time.monotonic()
        self.request_store(lambda page: self.on_page(rid, page, started), op, self.share,
                           prefix, msg.after, limit)  # fmt: skip

    def on_page(self, request_id: int, page: ListPage, started: float) -> None:
        """Send as much of the page as fits one packet; the client asks again for the rest."""
        if self.closing:
            return
        telemetry.LIST_SECONDS.observe(time.monotonic() - started)
        entries, more = page.entries, page.more
        while not self.send(m.ListResponse(request_id, _OK, more, "", entries), may_not_fit=True):
            if len(entries) == 1:
                text = "a path is too long for this packet size; use a larger --max-packet"
                self.send(m.ListResponse(request_id, _INVALID, False, text, ()))
                return
            entries, more = entries[: len(entries) // 2], True

    def on_stat(self, msg: m.StatRequest) -> None:
        rid = msg.request_id
        path = self._valid_path(msg.path, lambda text: m.StatResponse(rid, _INVALID, text, None))
        if path is not None:
            self.request_store(
                lambda result: self.on_stat_result(rid, result), "stat", self.share, path
            )

    def on_stat_result(self, request_id: int, result: Any) -> None:
        if isinstance(result, Refused):
            status = m.LookupStatus(result.status)
            self.send(m.StatResponse(request_id, status, result.message, None))
        else:
            self.send(m.StatResponse(request_id, _OK, "", result))

    def on_delete(self, msg: m.DeleteRequest) -> None:
        self.change_path(msg, m.DeleteResponse, "delete", msg.base_version)

    def change_path(self, msg: m.DeleteRequest | m.RestoreRequest,
                    reply: type[m.DeleteResponse | m.RestoreResponse], op: str,
                    *args: int) -> None:  # fmt: skip
        """A request that changes a path (a delete, a restore): refused for a read-only token
        or a bad path, else the store's *op* on it, answered by a *reply* (request id,
        status, version, message)."""
        rid = msg.request_id
        if self.read_only:
            telemetry.refused("read_only")
            self.send(reply(rid, m.LookupStatus.DENIED, 0, "this token is read-only"))
            return
        path = self._valid_path(msg.path, lambda text: reply(rid, _INVALID, 0, text))
        if path is None:
            return

        def answer(result: Any) -> None:
            if isinstance(result, Refused):
                status = m.LookupStatus(result.status)
                self.send(reply(rid, status, result.version, result.message))
            else:
                self.send(reply(rid, _OK, result.version, ""))

        self.request_store(answer, op, self.share, path, *args, self.origin, self.writer)

    def _valid_path(self, path: str, refusal: Callable[[str], m.Message]) -> str | None:
        return checked_path(path, lambda text: self.send(refusal(text)))
