"""Store calls from workers to the supervisor, batched per event-loop iteration.

Every call a worker makes in one loop iteration travels in one control message, and the
supervisor answers the whole batch in one message: with many small files in flight the cost of a
round trip is shared by all of them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from itertools import count
from typing import Any

from fsserver.channel import MessageChannel
from fsserver.store import Store

log = logging.getLogger(__name__)

OWNED_OPS = frozenset(
    {"reserve", "commit", "abort", "park", "progress", "open", "open_version", "release",
     "store_many"}
)  # fmt: skip
"""Calls that take the calling worker's slot as their first argument."""
SHARED_OPS = frozenset({"stat", "list", "delete", "changes_since", "attach", "share_list",
                        "history", "restore_version", "deleted"})  # fmt: skip


class RpcFailed(RuntimeError):
    """The supervisor could not run a call (a bug or a lost supervisor), not a refusal."""


class RpcClient:
    """Worker side: ``await rpc.call("reserve", ...)``."""

    def __init__(self, channel: MessageChannel) -> None:
        self.channel = channel
        self.loop = asyncio.get_running_loop()
        self._ids = count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._batch: list[tuple[int, str, tuple[Any, ...]]] = []

    def call(self, op: str, *args: Any) -> asyncio.Future[Any]:
        fut = self.loop.create_future()
        call_id = next(self._ids)
        self._waiting[call_id] = fut
        if not self._batch:
            self.loop.call_soon(self._flush)
        self._batch.append((call_id, op, args))
        return fut

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        self.channel.send_batch("rpc", batch)

    def on_replies(self, replies: list[tuple[int, bool, Any]]) -> None:
        for call_id, ok, value in replies:
            fut = self._waiting.pop(call_id, None)
            if fut is None or fut.done():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(RpcFailed(value))

    def fail_all(self, reason: str) -> None:
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(RpcFailed(reason))
        self._waiting.clear()


def serve_call(store: Store, owner: int, call: tuple[int, str, tuple[Any, ...]]
               ) -> tuple[int, bool, Any]:  # fmt: skip
    """Supervisor side: run one call of worker slot *owner*; (call id, ok, result or why)."""
    call_id, op, args = call
    method: Callable[..., Any] | None = getattr(store, op, None)
    if op in OWNED_OPS and method is not None:
        args = (owner, *args)
    elif op not in SHARED_OPS or method is None:
        return (call_id, False, f"unknown store call {op!r}")
    try:
        return (call_id, True, method(*args))
    except Exception as exc:  # a bug in a call must not take the supervisor down
        log.exception("store call %s from worker %d failed", op, owner)
        return (call_id, False, f"{op} failed: {exc}")
