"""Going on after a cut connection: the client's half of resumable transfers.

An upload needs nothing kept here: the server parks the bytes it received, and the next
``FileSyncInit`` of the same file to the same path is told how many it holds. A download keeps
its temp file: ``Partial`` remembers it, by destination, for the next ``get`` of that file in
this process (the sync engine's next session included), which asks the server for the rest.

``retrying`` runs a transfer again after its connection was lost, on a new connection, a few
times with back-off; each attempt resumes where the last one stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from common.errors import ErrorCode, FSError
from fsclient.protocol import ConnectionLost
from fsclient.transfer import Partial

if TYPE_CHECKING:
    from fsclient.client import Client

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0)
"""Seconds to wait before each new connection of a transfer whose connection was lost."""
LOST_CODES = frozenset({ErrorCode.SHUTTING_DOWN, ErrorCode.TIMEOUT})
"""A server's connection-level Error with one of these is worth trying again elsewhen."""
MAX_PARTIALS = 64


def lost(exc: BaseException) -> bool:
    """*exc* says the connection ended under the transfer (not that the transfer failed)."""
    return isinstance(exc, ConnectionLost) or (isinstance(exc, FSError) and exc.code in LOST_CODES)


async def retrying(client: Client, attempt: Callable[[], Awaitable[T]], what: str) -> T:
    """Run *attempt*; while it fails because the connection was lost, and the client may
    reconnect (see ``Client.may_reconnect``), connect again after a back-off and run it again.
    Once ``RETRY_DELAYS`` are used up, the last attempt's failure is raised (the server's
    reason, say, rather than that it cannot be reached since)."""
    delays = iter(RETRY_DELAYS)
    while True:
        try:
            return await attempt()
        except FSError as exc:
            if not (lost(exc) and client.may_reconnect):
                raise
            failure, reason = exc, str(exc)
        while True:  # a new connection, or no more tries
            delay = next(delays, None)
            if delay is None:
                raise failure
            log.warning("%s: %s; reconnecting in %.1f s", what, reason, delay)
            await asyncio.sleep(delay)
            try:
                await client.reconnect()
                break
            except (OSError, ConnectionLost) as exc:  # refused, reset: the server is away
                reason = str(exc)


_partials: dict[Path, Partial] = {}
"""By destination, oldest first."""


def _key(dest: Path) -> Path:
    return Path(os.path.abspath(dest))


def keep_partial(dest: Path, partial: Partial) -> None:
    """Remember a download cut short, to be resumed by the next ``get`` to *dest*."""
    drop_partial(dest)
    _partials[_key(dest)] = partial
    while len(_partials) > MAX_PARTIALS:
        _unlink(_partials.pop(next(iter(_partials))).temp)


def take_partial(dest: Path) -> Partial | None:
    """The download to *dest* cut short, if its temp file is still as it was left."""
    partial = _partials.pop(_key(dest), None)
    if partial is None:
        return None
    try:
        if partial.temp.stat().st_size == partial.size:
            return partial
    except OSError:
        return None
    _unlink(partial.temp)
    return None


def drop_partial(dest: Path) -> None:
    """Nobody will resume the download to *dest*: its temp file goes."""
    partial = _partials.pop(_key(dest), None)
    if partial is not None:
        _unlink(partial.temp)


def kept_temps() -> set[str]:
    """The temp files of the downloads kept to be resumed (absolute paths): not leftovers."""
    return {os.path.abspath(partial.temp) for partial in _partials.values()}


def _unlink(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()
